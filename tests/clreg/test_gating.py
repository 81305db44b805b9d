"""The gate on real labels and probabilities: judged by the model's task metric, with what each held-out set
can see. A model answering "normal" to every image at a 10%-prevalence site scores 0.9 accuracy."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import torch

from clreg.client import npz_bytes
from clreg.context import Stores
from clreg.gating import best_since_learnt, gate, scoring_of, site_figures
from clreg.learner.ewc import EWCState
from clreg.learner.models import last_linear, network_for, weights_to_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.learner.taskmetric import Scoring
from clreg.learner.train import TrainConfig, train_site
from clreg.registry.artifacts import Artifact, ArtifactStore
from clreg.registry.batches import Limits, ingest
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.findings import GateReport, SiteGate
from clreg.registry.gates import GateRules, judge
from clreg.registry.records import ErrorCosts, InputSpec, Lineage, Model, ModelVersion, VersionStatus
from clreg.registry.store import RedisRegistry
from clreg.settings import GateConfig

DRAWS = 200  # bootstrap resamples: enough for verdicts this far from the margins, and fast
Z80 = NormalDist().inv_cdf(0.8)


def _rare() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """200 samples at 10% prevalence; a candidate giving every sample the same P(positive) (it answers only
    "normal": accuracy 0.90), and a decent production (AUROC 0.961) whose threshold finds 10 of the 20 positives
    for 14 false alarms (accuracy 0.88)."""
    y = np.array([1] * 20 + [0] * 180)
    p = np.empty(200)
    p[:10], p[10:20], p[20:34], p[34:] = 0.8, 0.4, 0.6, np.linspace(0.0, 0.35, 166)
    return y, np.tile([0.9, 0.1], (200, 1)), np.stack([1 - p, p], axis=1)


def test_a_majority_collapse_passes_an_accuracy_gate_and_fails_the_auroc_one() -> None:
    y, candidate, production = _rare()
    accuracy = GateRules(metric="accuracy")
    figures = site_figures(Scoring("accuracy"), y, candidate, production, accuracy)
    assert (figures.candidate, figures.production) == (0.9, 0.88) and figures.class_counts == (180, 20)
    assert judge({"rare": figures}, set(), accuracy).reasons == []
    auroc = GateRules(metric="auroc")
    figures = site_figures(Scoring("auroc"), y, candidate, production, auroc, draws=DRAWS)
    assert figures.candidate == 0.5 and math.isclose(figures.production, 3460 / 3600)  # type: ignore[arg-type]
    assert figures.candidate_accuracy == 0.9 and figures.production_accuracy == 0.88
    verdict = judge({"rare": figures}, set(), auroc)
    assert not verdict.lines[0].passed and verdict.lines[0].metric == "auroc"
    assert verdict.reasons[0].startswith("site rare: auroc 0.500 vs production 0.961; lower bound -0.4")
    assert verdict.reasons[1].startswith("earlier sites together: mean auroc change -0.461")


def test_a_small_site_says_how_little_it_sees_and_how_many_more_images_it_needs() -> None:
    y = np.array([0, 1] * 10)
    right = np.eye(2)[y] * 0.8 + 0.1  # P 0.9 on the true class
    candidate, production = right.copy(), right.copy()
    candidate[[0, 1]] = candidate[[0, 1], ::-1]  # the candidate misses samples 0 and 1, production sample 2
    production[2] = production[2, ::-1]
    rules = GateRules(tolerance=0.05, site_tolerance=0.15, confidence=0.8)
    verdict = judge({"small": site_figures(Scoring("accuracy"), y, candidate, production, rules)}, set(), rules)
    line = verdict.lines[0]
    se = math.sqrt((3 - 20 * 0.05**2) / 19) / math.sqrt(20)  # paired differences [-1, -1, +1, 0 x 17]
    assert math.isclose(line.delta, -0.05) and math.isclose(line.se, se)  # type: ignore[arg-type]
    assert math.isclose(line.detectable_drop, Z80 * se)  # type: ignore[arg-type]
    assert round(Z80 * se, 4) == 0.0742 and line.too_small and line.samples_needed == 24  # 44 in all
    assert line.class_counts == [10, 10] and verdict.too_small == ["small"] and line.passed
    assert verdict.notes == ["site small: its 20 held-out images distinguish only changes over 0.074 in accuracy "
                             "at confidence 0.8 (tolerance 0.050); about 24 more labelled images would close it"]
    zero = GateRules(tolerance=0.0, site_tolerance=0.15, confidence=0.8)  # no finite set sees a change of 0
    assert site_figures(Scoring("accuracy"), y, candidate, production, zero).samples_needed is None


def _flags(y: np.ndarray, missed: int, alarms: int) -> np.ndarray:
    """Probabilities that miss the first `missed` positives and flag the first `alarms` negatives."""
    p = (y == 1).astype(np.float64) * 0.8 + 0.1
    p[np.flatnonzero(y == 1)[:missed]] = 0.3
    p[np.flatnonzero(y == 0)[:alarms]] = 0.7
    return np.stack([1 - p, p], axis=1)


def test_an_expected_cost_gate_prefers_fewer_misses_at_equal_accuracy() -> None:
    y = np.array([1] * 20 + [0] * 180)
    fewer_misses, more_misses = _flags(y, 2, 10), _flags(y, 8, 4)  # both 188 of 200 right
    scoring = Scoring("expected_cost", cost_fp=1.0, cost_fn=10.0)
    rules = GateRules(metric="expected_cost")
    better = site_figures(scoring, y, fewer_misses, more_misses, rules, draws=DRAWS)
    assert math.isclose(better.candidate, 10 / 180 * 0.9 + 10 * 2 / 20 * 0.1)  # 0.15
    assert math.isclose(better.production, 4 / 180 * 0.9 + 10 * 8 / 20 * 0.1)  # type: ignore[arg-type]  # 0.42
    assert math.isclose(better.delta, 0.27) and not better.higher_is_better  # type: ignore[arg-type]
    assert better.optimistic < better.candidate and better.candidate_accuracy == better.production_accuracy == 0.94
    assert judge({"rare": better}, set(), rules).reasons == []
    worse = judge({"rare": site_figures(scoring, y, more_misses, fewer_misses, rules, draws=DRAWS)}, set(), rules)
    assert worse.reasons[0].startswith("site rare: expected_cost 0.420 vs production 0.150; lower bound")
    assert math.isclose(worse.lines[0].delta, -0.27)  # type: ignore[arg-type]


def test_a_site_with_one_class_is_judged_by_accuracy_and_says_so() -> None:
    y = np.zeros(30, dtype=np.int64)
    rules = GateRules(metric="auroc")
    figures = site_figures(Scoring("auroc"), y, _flags(y, 0, 3), _flags(y, 0, 0), rules)
    assert figures.metric == "accuracy" and figures.candidate == 0.9 and figures.production == 1.0
    verdict = judge({"one": figures}, {"one"}, rules)
    assert verdict.reasons == ["site one: accuracy 0.900 vs production 1.000; got worse on its new site"]
    assert verdict.notes[0] == "site one: judged by accuracy; auroc is undefined on its held-out set " \
                               "(samples of each class: [30, 0])"


def test_scoring_follows_the_model() -> None:
    spec = InputSpec(channels=1, height=16, width=16, classes=2)
    binary = Model(name="m", factory="clreg.learner.models:small_cnn", input=spec,
                   costs=ErrorCosts(false_positive=1.0, false_negative=20.0))
    assert scoring_of(binary) == Scoring("auroc", cost_fp=1.0, cost_fn=20.0)
    ten = binary.model_copy(update={"input": spec.model_copy(update={"classes": 10})})
    assert scoring_of(ten).metric == "accuracy"


def _report(number: int, *lines: SiteGate) -> GateReport:
    return GateReport(id=f"g-m-{number}", model="m", candidate=number, production=None, tolerance=0.05,
                      confidence=0.8, sites=list(lines), passed=True)


def _version(registry: RedisRegistry, parent: int | None, report: GateReport, batch_ids: list[str],
             weights: str = "0" * 64) -> ModelVersion:
    version = registry.register_version(ModelVersion(
        model="m", number=1, lineage=Lineage(parent=parent, batch_ids=batch_ids, sites=["rare"]),
        artifacts={Artifact.WEIGHTS: weights}))
    registry.reports.put_gate(report.model_copy(update={"id": f"g-m-{version.number}", "candidate": version.number}))
    registry.set_status("m", version.number, VersionStatus.BLESSED, f"g-m-{version.number}")
    return version


def test_the_best_since_learnt_reads_old_reports_as_accuracy(registry: RedisRegistry) -> None:
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=16, width=16, classes=2)))
    old = SiteGate(site="rare", samples=60, candidate_accuracy=0.93, production_accuracy=None, delta=None,
                   lower_bound=None, new_site=True, passed=True)  # a report from before the task metric
    new = old.model_copy(update={"candidate_accuracy": 0.90, "metric": "auroc", "candidate_value": 0.91})
    cost = old.model_copy(update={"site": "dear", "metric": "expected_cost", "candidate_value": 0.3})
    first = _version(registry, None, _report(1, old), [])
    second = _version(registry, first.number, _report(2, new, cost), [])
    third = _version(registry, second.number, _report(3, cost.model_copy(update={"candidate_value": 0.2}),
                                                    new.model_copy(update={"candidate_value": 0.8})), [])
    assert best_since_learnt(registry, first) == {"rare": {"accuracy": 0.93}}
    assert best_since_learnt(registry, third) == {"rare": {"accuracy": 0.93, "auroc": 0.91},
                                                  "dear": {"accuracy": 0.93, "expected_cost": 0.2}}


def _collapsed(model: Model) -> bytes:
    """Weights that give every image P(positive) = 1 / (1 + e^2.2) ~ 0.1: the head ignores its input."""
    torch.manual_seed(0)
    net = network_for(model)
    head = last_linear(net)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([2.2, 0.0]))
    return weights_to_bytes(net)


@pytest.mark.integration
def test_the_gate_rejects_a_majority_collapse_by_auroc_naming_the_site(registry: RedisRegistry,
                                                                       tmp_path: Path) -> None:
    model = Model(name="m", factory="clreg.learner.models:small_cnn",
                  input=InputSpec(channels=1, height=16, width=16, classes=2))
    registry.create_model(model)
    stores = Stores(registry=registry, artifacts=ArtifactStore(str(tmp_path / "artifacts")), events=EventLog(registry))
    site = digits_sites(seed=2, names=("base",))[0]
    y = (site.y[:360] == 0).astype(np.int64)  # "is it a zero": about 10% positive
    queue = IngestQueue(registry)
    queue.ensure_group()
    batch, _ = ingest(registry, stores.artifacts, queue, stores.events, "m", "rare",
                      npz_bytes(to_uint8(site.x[:360]), y), Limits())
    (x_fit, y_fit), = stores.split_by_site(model, [batch.id], "train").values()
    torch.manual_seed(0)
    net = network_for(model)
    trained = train_site(net, x_fit, y_fit, "rare", EWCState(),
                         TrainConfig(epochs=6, bn_policy="update", fisher_samples=32))
    report0 = _report(1, SiteGate(site="rare", samples=1, candidate_accuracy=0.5, production_accuracy=None,
                                  delta=None, lower_bound=None, new_site=True, passed=True))
    production = _version(registry, None, report0, [batch.id], stores.artifacts.put(trained.weights))
    candidate = _version(registry, production.number, report0, [], stores.artifacts.put(_collapsed(model)))
    report = gate(stores, GateConfig(), model, candidate, production)
    (_, y_held), = stores.split_by_site(model, [batch.id], "heldout").values()
    line = report.sites[0]
    assert not report.passed and report.metric == "auroc" and line.metric == "auroc" and line.candidate_value == 0.5
    assert line.production_value > 0.9 and line.class_counts == np.bincount(y_held).tolist()  # type: ignore[operator]
    assert line.candidate_accuracy == float(np.mean(y_held == 0))
    assert report.reasons[0].startswith("site rare: auroc 0.500 vs production ")
    assert registry.reports.get_gate(report.id) == report
    by_accuracy = gate(stores, GateConfig(), model.model_copy(update={"metric": "accuracy"}), candidate, production)
    line = by_accuracy.sites[0]
    assert by_accuracy.metric == line.metric == "accuracy" and line.candidate_value == line.candidate_accuracy


def test_two_images_lost_at_a_22_image_site_count_as_two_not_more() -> None:
    """19 of 22 against 21 of 22 is a drop of 2 images, though 19/22 - 21/22 exceeds 2/22 in floating point: the
    site alone does not veto (measured at fifty sites, where it did: bench/scale.py)."""
    y = np.array([0, 1] * 11)
    right = np.eye(2)[y] * 0.8 + 0.1
    candidate, production = right.copy(), right.copy()
    candidate[[0, 1, 2]] = candidate[[0, 1, 2], ::-1]  # 19 right
    production[3] = production[3, ::-1]  # 21 right
    rules = GateRules(tolerance=0.05, site_tolerance=0.05, confidence=0.8, min_images=3)
    figures = site_figures(Scoring("accuracy"), y, candidate, production, rules)
    assert -figures.delta > 2 * figures.one_image  # type: ignore[operator]  # the rounding the gate must not count
    line = judge({"s": figures}, set(), rules).lines[0]
    assert line.passed and line.lower_bound is not None and line.lower_bound < -0.05
