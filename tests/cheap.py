"""Settings for tests that are not about learning quality: two cheap candidates, no refit.

The product's default search is measured by bench/continual.py and run through the daemon by
tests/clreg/test_learning.py.
"""

from __future__ import annotations

import json

from clreg.settings import SearchConfig

SEARCH = SearchConfig(candidates=[{"ewc_lambda": 300.0}, {"ewc_lambda": 3000.0}], refit=False)
ENV = {"search__candidates": json.dumps(SEARCH.candidates), "search__refit": "false"}
