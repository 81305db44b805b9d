"""How a version answers a site: a binary site's class bias moves the labels it answers, a temperature never."""

from __future__ import annotations

import numpy as np
from torch import nn

from learner.answer import Answerer
from registry.records import Calibration, SiteCalibration


def _fit(temperature: float, bias: float = 0.0) -> SiteCalibration:
    return SiteCalibration(temperature=temperature, bias=bias, samples=10, ece=0.1, ece_calibrated=0.05, nll=0.5,
                           nll_calibrated=0.4)


def test_a_binary_sites_bias_moves_the_labels_it_answers() -> None:
    calibration = Calibration(model="m", method="temperature_bias", sites={"a": _fit(2.0, bias=1.0), "b": _fit(0.5)},
                              pooled=_fit(3.0))
    answerer = Answerer(module=nn.Linear(1, 2), calibration=calibration)
    logits = np.array([[0.0, -1.0], [0.0, -3.0], [1.0, 0.0]])
    assert answerer.labels("a", logits).tolist() == [1, 0, 1]  # logits / 2 + [0, 1]
    assert answerer.labels("b", logits).tolist() == [0, 0, 0]  # a temperature alone keeps the argmax
    assert answerer.labels("unknown", logits).tolist() == [0, 0, 0]  # the pooled temperature, no bias
    assert answerer.scaling("a") == ("a", 2.0, 1.0) and answerer.scaling(None) == (None, 3.0, 0.0)
