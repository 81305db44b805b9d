"""The label-free accuracy estimate: exact on a hand case, unbiased where probabilities are calibrated; the
checked estimate credits each answer with the lower of two views' confidence (served, and under the
traffic's own BatchNorm statistics) and an answer the views disagree on with nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from clreg.learner.errors import DataError
from clreg.learner.estimate import checked_accuracy, correct_share, expected_accuracy, stable, two_views
from clreg.learner.sitebn import adapted


def test_hand_case() -> None:
    proba = np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6]])
    assert expected_accuracy(proba) == pytest.approx((0.9 + 0.7 + 0.6) / 3)
    # with a threshold of 0.65 the last answer is "negative", right with probability 0.4
    assert expected_accuracy(proba, threshold=0.65) == pytest.approx((0.9 + 0.7 + 0.4) / 3)
    assert correct_share(proba, np.array([0, 1, 1]), threshold=0.65) == pytest.approx(2 / 3)


def test_unbiased_on_calibrated_probabilities() -> None:
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(200):
        logits = rng.normal(size=(500, 4)) * 2
        proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        y = np.array([rng.choice(4, p=p) for p in proba])  # labels drawn from the probabilities: calibrated
        errors.append(expected_accuracy(proba) - correct_share(proba, y))
    assert abs(np.mean(errors)) < 0.005  # unbiased over many windows
    assert np.std(errors) < 0.03  # and close on one window of 500


def test_overconfidence_overestimates() -> None:
    rng = np.random.default_rng(1)
    proba = np.column_stack([np.full(1000, 0.05), np.full(1000, 0.95)])
    y = (rng.random(1000) < 0.7).astype(int)  # truly right 70% of the time, 95% sure
    assert expected_accuracy(proba) - correct_share(proba, y) > 0.2


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(DataError, match="probabilities"):
        expected_accuracy(np.ones(3))
    with pytest.raises(DataError, match="binary"):
        expected_accuracy(np.full((2, 3), 1 / 3), threshold=0.5)


def test_checked_estimate_hand_case() -> None:
    served = np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6]])
    own = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])  # the second answer flips; the others agree
    assert stable(served, own).tolist() == [True, False, True]
    assert checked_accuracy(served, own) == pytest.approx((0.8 + 0.0 + 0.6) / 3)
    assert checked_accuracy(served, served) == pytest.approx(expected_accuracy(served))
    # with a threshold of 0.65 the third answer is "negative" as served and "positive" in the other view
    assert checked_accuracy(served, own, threshold=0.65) == pytest.approx((0.8 + 0.0 + 0.0) / 3)
    with pytest.raises(DataError, match="one shape"):
        checked_accuracy(served, own[:2])


def _summing_net() -> nn.Module:
    """BatchNorm on the pixels, then class 0 scores the pixel sum and class 1 its negative."""
    torch.manual_seed(0)
    linear = nn.Linear(16, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.stack([torch.ones(16), -torch.ones(16)]))
    return nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), linear).eval()


def test_adapted_statistics_are_the_traffics_own() -> None:
    x = torch.from_numpy(np.random.default_rng(2).normal(3.0, 2.0, size=(768, 1, 4, 4)).astype(np.float32))
    bn = adapted(_summing_net(), x, batch_size=256)[0]  # three equal chunks, one cumulative mean
    assert bn.running_mean.item() == pytest.approx(x.mean().item(), abs=1e-4)
    # BatchNorm keeps the unbiased variance of each chunk; over equal-size chunks it averages them
    assert bn.running_var.item() == pytest.approx(x.var().item(), rel=0.01)


def test_answers_flip_only_where_the_inputs_moved_under_the_normalisation() -> None:
    x = np.random.default_rng(3).normal(0.0, 1.0, size=(400, 1, 4, 4)).astype(np.float32)
    net = adapted(_summing_net(), torch.from_numpy(x))  # validated on x: its stored statistics are x's
    served, own = two_views(net, x)
    np.testing.assert_allclose(own, served, atol=1e-6)
    assert checked_accuracy(served, own) == pytest.approx(expected_accuracy(served), abs=1e-6)
    served, own = two_views(net, x + 2.0)  # a shifted scanner: every served answer is class 0, surely
    assert (served.argmax(axis=1) == 0).all() and expected_accuracy(served) > 0.99
    assert 0.3 < 1 - stable(served, own).mean() < 0.7  # re-normalised, about half answer class 1
    assert checked_accuracy(served, own) < 0.7
