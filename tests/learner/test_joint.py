"""Joint training with per-site BatchNorm: each site keeps its own BatchNorm state, and on sites whose images
differ only by inversion it beats one shared BatchNorm trained as long on the same data."""

from __future__ import annotations

import numpy as np
import torch

from clreg.learner.evaluate import site_metrics
from clreg.learner.ewc import EWCState
from clreg.learner.joint import train_joint
from clreg.learner.models import small_cnn
from clreg.learner.streams import digits_sites
from clreg.learner.train import TrainConfig, train_site


def test_each_site_keeps_its_own_batch_norm_and_the_ceiling_beats_a_shared_one() -> None:
    sites = digits_sites(seed=2, names=("base", "inverted"))
    train = {s.name: (s.x[:250], s.y[:250]) for s in sites}
    test = {s.name: (s.x[250:], s.y[250:]) for s in sites}
    torch.manual_seed(0)
    net = small_cnn(1, 16, 16, 10)
    bank = train_joint(net, train, steps=300, seed=0)
    assert sorted(bank) == ["base", "inverted"]
    means = {s: bank[s]["0.1.running_mean"] for s in bank}  # the first BatchNorm's statistics differ by site
    assert not torch.allclose(means["base"], means["inverted"], atol=1e-2)
    joint = [site_metrics(net, *test[s], site_bn=bank[s]).accuracy for s in sorted(test)]
    torch.manual_seed(0)
    shared = small_cnn(1, 16, 16, 10)
    x = np.concatenate([x for x, _ in train.values()])
    y = np.concatenate([y for _, y in train.values()])
    train_site(shared, x, y, "joint", EWCState(), TrainConfig(bn_policy="update", ewc_lambda=0, min_steps=300))
    one = [site_metrics(shared, *test[s]).accuracy for s in sorted(test)]
    assert min(joint) > 0.8 and np.mean(joint) > np.mean(one), (joint, one)
