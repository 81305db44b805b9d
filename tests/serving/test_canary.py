"""The weighted canary without Ray: a candidate answers only the sites it is validated at (none: rolled back at once);
a replica's share answers with it, counts its failures (production answers those) and its label-free estimate; the
daemon's verdict promotes it, or rolls it back on its error rate or on an estimate too far under its validated
accuracy; for an approval model the canary starts after the last approval and the move names the approvers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from clreg import approving, canarying, context
from clreg.calibration import site_record
from clreg.gating import scoring_of
from clreg.learner.answer import Answerer
from clreg.learner.calibration import calibrate_sites
from clreg.learner.models import network_for, weights_to_bytes
from clreg.registry import canary as canaries
from clreg.registry.approvals import Approvals, settle
from clreg.registry.artifacts import Artifact
from clreg.registry.batches import token_sha256
from clreg.registry.canary import Canaries, CanaryCounts
from clreg.registry.findings import Calibration
from clreg.registry.inputs import InputLog, InputLogConfig
from clreg.registry.leases import tool
from clreg.registry.records import (
    ApprovalPolicy,
    Batch,
    BatchStatus,
    CanaryPolicy,
    InputSpec,
    Lineage,
    Model,
    ModelVersion,
    Readiness,
    VersionStatus,
)
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.serving.canary import Canary
from clreg.serving.config import ServingConfig
from clreg.serving.gateway import create_app
from clreg.serving.inference import Loaded
from clreg.serving.recorder import Recorder
from clreg.settings import RedisSettings, Settings
from tests.serving.evidence_model import close, resolve

M = "can"
POLICY = CanaryPolicy(share=0.5, min_requests=20, max_error_rate=0.1, max_estimate_drop=0.1)


def _logits(positives: int, negatives: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(positives, int), np.zeros(negatives, int)]
    z1 = separation * (2 * y - 1) + rng.normal(0.0, 1.0, len(y))
    return np.stack([np.zeros(len(y)), z1], axis=1), y


@pytest.fixture
def ctx(registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path) -> Iterator[context.Context]:
    settings = Settings(home=tmp_path, redis=RedisSettings(url=store_cfg.url, prefix=store_cfg.prefix))
    yield context.build(settings, store_cfg, "http://127.0.0.1:0")


def _model(ctx: context.Context, **update: object) -> Model:
    model = Model(name=M, factory="clreg.learner.models:small_cnn", canary=POLICY,
                  readiness=Readiness(ece_limit=1.0), input=InputSpec(channels=1, height=8, width=8, classes=2))
    model = model.model_copy(update=update)
    ctx.registry.create_model(model)
    return model


def _version(ctx: context.Context, model: Model, good: tuple[str, ...] = ("well",)) -> ModelVersion:
    """A version validated at the `good` sites (separated held-out logits, enough of each class) and not at `weak`."""
    scored = {s: _logits(30, 60, 3.0, i) for i, s in enumerate(good)} | {"weak": _logits(4, 40, 3.0, 9)}
    pooled, fits = calibrate_sites(scored)
    calibration = Calibration(model=M, pooled=site_record(pooled), sites={
        s: site_record(fit, *scored[s], scoring=scoring_of(model), draws=200) for s, fit in fits.items()})
    torch.manual_seed(0)
    batch = Batch(id=f"{len(ctx.registry.list_versions(M)) + 1:064x}", model=M, site="weak", samples=4,
                  class_counts=[2, 2], train_index=[0, 1], heldout_index=[2, 3], artifact="0" * 64)
    ctx.registry.batches.add(batch)
    ctx.registry.batches.add_pending(M, batch.id)
    version = ctx.registry.register_version(ModelVersion(model=M, number=1, lineage=Lineage(
        sites=list(scored), batch_ids=[batch.id]), artifacts={
        Artifact.WEIGHTS.value: ctx.artifacts.put(weights_to_bytes(network_for(model))),
        Artifact.CALIBRATION.value: ctx.artifacts.put(calibration.model_dump_json().encode())}))
    ctx.registry.set_status(M, version.number, VersionStatus.BLESSED)
    return version


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_a_canary_answers_only_validated_sites_and_is_judged_by_its_figures(ctx: context.Context,
                                                                             store_cfg: StoreConfig) -> None:
    model = _model(ctx)
    reg = ctx.registry
    reg.promote(M, _version(ctx, model).number, who="test", reason="first")
    v2 = _version(ctx, model)
    assert canaries.begin(reg, ctx.events, ctx.artifacts, model, v2)
    run = Canaries(reg).active(M)
    assert run is not None and run.sites == ["well"] and run.accuracy["well"] > 0.8  # weak: 4 positives
    assert reg.batches.state(v2.lineage.batch_ids[0]).status is BatchStatus.CANARY
    assert canarying.running(ctx.stores, M)  # the next update waits

    recorder = Recorder(InputLog(ctx.registry.cfg, InputLogConfig()), 3600.0, canaries=Canaries(reg))
    replica = Canary(recorder)
    loaded = Loaded(version=2, answerer=Answerer.of(network_for(model), None), spec=model.input)
    replica.candidates = {M: (run, loaded)}
    assert replica.pick(M, "weak") is None and replica.pick(M, None) is None  # never where not validated
    picked = [replica.pick(M, "well") for _ in range(400)]
    assert 120 < sum(p is not None for p in picked) < 280  # about half of the site's requests
    chosen = next(p for p in picked if p is not None)
    scores = replica.answer(chosen, torch.zeros(3, 1, 8, 8), "well")
    assert scores is not None and scores.probabilities.shape == (3, 2)
    assert replica.answer(chosen, torch.zeros(3, 5, 8, 8), "well") is None  # failed: counted, production answers
    for _ in range(19):
        replica.count(chosen, "well", np.full(3, run.accuracy["well"] - 0.01))
    recorder.close()
    figures = Canaries(reg).figures(M, 2)["well"]
    assert (figures.requests, figures.errors, figures.samples) == (20, 1, 57)
    assert canarying.judge(ctx.stores, tool(), 10.0) == [(M, 2, "production")]  # 5% errors, estimate 0.01 under
    assert reg.resolve(M) == 2 and Canaries(reg).active(M) is None
    assert reg.batches.state(v2.lineage.batch_ids[0]).status is BatchStatus.PROMOTED
    assert [e.kind for e in ctx.events.read(M)][-2:] == ["alias.moved", "canary.finished"]
    cfg = ServingConfig(store=store_cfg, artifacts_url=ctx.artifacts.url, ops_token_sha256=token_sha256("ops"))
    with TestClient(create_app(cfg), base_url="http://127.0.0.1", headers={"Authorization": "Bearer ops"}) as http:
        note = http.get(f"/v1/models/{M}/versions/2/release-note").json()  # the canary's figures, each sourced
        assert (note["canary"]["well"]["requests"]["value"], note["canary"]["well"]["errors"]["value"]) == (20, 1)
        cited = [f for f in note["figures"] if ".canary." in f["key"]]
        assert len(cited) == 3 and all(close(resolve(http.get(f["source"]).json(), f["pointer"]), f["value"])
                                       for f in cited)


def test_a_canary_is_rolled_back_on_its_estimate_or_when_no_site_is_validated(ctx: context.Context) -> None:
    model = _model(ctx)
    reg = ctx.registry
    reg.promote(M, _version(ctx, model).number, who="test", reason="first")
    v2 = _version(ctx, model)
    canaries.begin(reg, ctx.events, ctx.artifacts, model, v2)
    run = Canaries(reg).active(M)
    assert run is not None
    Canaries(reg).record({(M, 2, "well"): CanaryCounts(requests=25, samples=25,
                                                       correct_sum=25 * (run.accuracy["well"] - 0.3))})
    assert canarying.judge(ctx.stores, tool(), 10.0) == [(M, 2, "rejected")]
    assert reg.resolve(M) == 1 and reg.status(M, 2) is VersionStatus.REJECTED
    failed = [e for e in ctx.events.read(M) if e.kind == "canary.failed"][-1]
    assert "label-free estimate" in failed.data["reasons"][0] and failed.data["figures"]["well"]["requests"] == 25
    assert reg.batches.state(v2.lineage.batch_ids[0]).status is BatchStatus.REJECTED
    assert v2.lineage.batch_ids[0] not in reg.batches.pending(M) and not canarying.running(ctx.stores, M)
    assert any(a.kind == "canary.failed" for a in ctx.events.alerts(M))

    v3 = _version(ctx, model, good=())
    assert canaries.begin(reg, ctx.events, ctx.artifacts, model, v3)  # validated nowhere: rolled back at once
    assert reg.status(M, 3) is VersionStatus.REJECTED and Canaries(reg).active(M) is None
    assert "validated at no site" in [e for e in ctx.events.read(M) if e.kind == "canary.failed"][-1].data[
        "reasons"][0]
    plain = model.model_copy(update={"canary": None})
    assert not canaries.begin(reg, ctx.events, ctx.artifacts, plain, _version(ctx, plain))  # no policy: no canary


def test_an_approval_models_canary_starts_after_the_last_approval(ctx: context.Context) -> None:
    model = _model(ctx, approval=ApprovalPolicy(mode="approval"))
    reg = ctx.registry
    v1 = _version(ctx, model)
    assert approving.waits(ctx.stores, model, v1, "passed gate g")
    decided = Approvals(reg, ctx.events).decide(M, 1, "alice", "approve", "fine")
    settle(reg, ctx.events, decided, ctx.artifacts)
    assert reg.resolve(M) is None and reg.status(M, 1) is VersionStatus.BLESSED  # approved, answering a share first
    run = Canaries(reg).active(M)
    assert run is not None and (run.approvers, run.request) == (["alice"], "r-1-gate")
    Canaries(reg).record({(M, 1, "well"): CanaryCounts(requests=30, samples=30, correct_sum=30 * run.accuracy["well"])})
    assert canarying.judge(ctx.stores, tool(), 10.0) == [(M, 1, "production")]
    [move] = reg.alias_history(M)
    assert (move.to_version, move.approvers, move.request) == (1, ["alice"], "r-1-gate")
