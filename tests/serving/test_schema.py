"""Property-based requests generated from clreg's own OpenAPI document (schemathesis), sent through the real
Serve proxy to the gateway and the predict application: no route answers 5xx, every error is JSON.

Both kinds of generated data run: requests that fit the schema, and requests that break it on purpose.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from clreg.embedded import Stack

pytestmark = pytest.mark.integration
EXAMPLES = 12  # per operation and mode: bounded, so the suite stays quick on 2 cores


def test_no_generated_request_gets_a_5xx(stack: Stack) -> None:
    api = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /v1/sites/{site}/batches",
                                                                       "POST /v1/predict", "GET /v1/status"}
    failures: list[str] = []
    skipped: list[str] = []
    calls: list[int] = []
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case: schemathesis.Case) -> None:
                response = case.call(base_url=stack.url, timeout=10,
                                     headers={"Authorization": f"Bearer {stack.admin_token}"})
                calls.append(response.status_code)
                broken = response.status_code >= 500
                if not broken and response.status_code >= 400:
                    try:
                        broken = "error" not in response.json()
                    except ValueError:
                        broken = True
                if broken:
                    failures.append(f"{case.method} {case.formatted_path} {case.query} -> {response.status_code} "
                                    f"{response.text[:200]}")

            try:
                check()
            except Unsatisfiable:  # nothing to break on purpose (no parameters, no body): the positive run covers it
                skipped.append(f"{mode.value} {op.method.upper()} {op.path}")
    assert not failures, "\n".join(failures[:20])
    assert len(calls) > 10 * len(operations) and any(c >= 400 for c in calls)
    assert all(s.startswith("negative") for s in skipped), skipped
