"""Locked test sets without Ray: a locked push stores no training indices and never enters the pending set; the same
bytes cannot be both locked and learnt; the daemon's step scores every version on the set (as /v1/predict answers
the site) and readiness, the site's validation report and the sites listing judge the locked figures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from clreg import context, locking, pipeline
from clreg.client import npz_bytes
from clreg.learner.models import network_for, weights_to_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.registry import promotion
from clreg.registry.artifacts import Artifact
from clreg.registry.batches import Limits, ingest, token_sha256
from clreg.registry.errors import Conflict
from clreg.registry.events import IngestQueue
from clreg.registry.locked import LockedSets, set_digest
from clreg.registry.protocol import Protocols
from clreg.registry.readiness import SiteReadiness, assess
from clreg.registry.records import (
    BatchStatus,
    InputSpec,
    Lineage,
    Model,
    ModelVersion,
    Readiness,
    Site,
)
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.serving.config import ServingConfig
from clreg.serving.gateway import create_app
from clreg.settings import RedisSettings, Settings

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
M = "lockd"


@pytest.fixture
def ctx(registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path) -> Iterator[context.Context]:
    settings = Settings(home=tmp_path, redis=RedisSettings(url=store_cfg.url, prefix=store_cfg.prefix))
    yield context.build(settings, store_cfg, "http://127.0.0.1:0")


def _model(reg: RedisRegistry) -> Model:
    model = Model(name=M, factory="clreg.learner.models:small_cnn", readiness=Readiness(accuracy_floor=0.0,
                                                                                         ece_limit=1.0),
                  input=InputSpec(channels=1, height=16, width=16, classes=10))
    reg.create_model(model)
    return model


def _version(ctx: context.Context, model: Model, seed: int) -> ModelVersion:
    """A version with untrained weights of its own (no calibration: the temperature served is 1)."""
    torch.manual_seed(seed)
    weights = ctx.artifacts.put(weights_to_bytes(network_for(model)))
    return ctx.registry.register_version(ModelVersion(model=M, number=1, lineage=Lineage(sites=["a"], seed=seed),
                                                      artifacts={Artifact.WEIGHTS.value: weights}))


def _push(ctx: context.Context, site: str, x: np.ndarray, y: np.ndarray, locked: bool) -> str:
    queue = IngestQueue(ctx.registry)
    queue.ensure_group()
    batch, _ = ingest(ctx.registry, ctx.artifacts, queue, ctx.events, M, site, npz_bytes(to_uint8(x), y), Limits(),
                      locked=locked)
    return batch.id


def test_a_locked_push_is_all_held_out_and_cannot_also_be_learnt(ctx: context.Context) -> None:
    _model(ctx.registry)
    site = digits_sites(seed=1, names=("base",))[0]
    locked = _push(ctx, "a", site.x[:40], site.y[:40], locked=True)
    batch = ctx.registry.batches.get(locked)
    assert batch.locked and batch.train_index == [] and batch.heldout_index == list(range(40))
    assert ctx.events.read(M)[-1].data["locked"] is True
    with pytest.raises(Conflict, match="pushed before as a locked test set"):
        _push(ctx, "a", site.x[:40], site.y[:40], locked=False)
    learnt = _push(ctx, "a", site.x[40:80], site.y[40:80], locked=False)
    with pytest.raises(Conflict, match="pushed before as a training batch"):
        _push(ctx, "a", site.x[40:80], site.y[40:80], locked=True)
    assert _push(ctx, "a", site.x[:40], site.y[:40], locked=True) == locked  # a duplicate, answered as before
    assert ctx.registry.batches.get(learnt).train_index  # a training batch keeps its split


def test_the_daemon_scores_every_version_on_a_locked_set_and_never_learns_it(ctx: context.Context) -> None:
    model = _model(ctx.registry)
    versions = [_version(ctx, model, seed) for seed in (0, 1)]
    site = digits_sites(seed=2, names=("contrast",))[0]
    first = _push(ctx, "b", site.x[:60], site.y[:60], locked=True)
    assert pipeline.process(ctx, pipeline.Worker(), first) is pipeline.Outcome.DONE
    state = ctx.registry.batches.state(first)
    assert state.status is BatchStatus.LOCKED and "never learnt" in state.detail
    assert ctx.registry.batches.pending(M) == []  # never waits for an update
    sets = LockedSets(ctx.registry, M)
    assert sets.sites() == {"b": [first]}
    fixed = Protocols(ctx.registry, ctx.events).current(M)  # the set's digest, fixed in the protocol
    assert fixed is not None and fixed.who == "site:b" and fixed.locked["b"].digest == set_digest([first])
    scores = sets.scores()
    assert sorted(scores) == [(1, "b"), (2, "b")]
    for (number, _), score in scores.items():
        assert (score.digest, score.batch_ids, score.learnt) == (set_digest([first]), [first], False)
        figures = score.figures
        assert figures.samples == 60 and figures.metric == "accuracy" and figures.temperature == 1.0
        assert sum(figures.class_counts or []) == 60
        net = ctx.stores.module(model, versions[number - 1].artifacts[Artifact.WEIGHTS.value])
        with torch.no_grad():
            answered = net(torch.from_numpy(to_uint8(site.x[:60]).astype(np.float32) / 255.0)).argmax(1).numpy()
        assert figures.accuracy == pytest.approx(float(np.mean(answered == site.y[:60])))  # as /v1/predict answers

    assert pipeline.process(ctx, pipeline.Worker(), first) is pipeline.Outcome.DONE  # a replay changes nothing
    assert len(sets.scores()) == 2
    third = _version(ctx, model, 2)
    assert [s.version for s in locking.score(ctx.stores, model, [third])] == [3]  # a new candidate is scored
    second = _push(ctx, "b", site.x[60:100], site.y[60:100], locked=True)
    pipeline.process(ctx, pipeline.Worker(), second)  # the set grew: every version scored on it again
    grown = sets.scores()
    assert {s.digest for s in grown.values()} == {set_digest([first, second])}
    assert all(s.figures.samples == 100 for s in grown.values()) and len(grown) == 3
    kinds = [e.kind for e in ctx.events.read(M)]
    assert kinds.count("batch.locked") == 2 and kinds.count("locked.scored") == 6


def test_readiness_and_the_site_report_judge_the_locked_set(ctx: context.Context, store_cfg: StoreConfig,
                                                             tmp_path: Path) -> None:
    model = _model(ctx.registry)
    version = _version(ctx, model, 0)
    ctx.registry.promote(M, version.number, who="test", reason="served")
    ctx.registry.add_site(Site(name="b", token_sha256=token_sha256("b")))
    site = digits_sites(seed=2, names=("contrast",))[0]
    locking.admit(ctx.stores, model, ctx.registry.batches.get(_push(ctx, "b", site.x[:50], site.y[:50], True)))
    sets = LockedSets(ctx.registry, M)
    judged = sets.overlay(None, 1)
    assert judged is None  # nothing to lay over: a version without calibration
    score = sets.of_version(1)["b"]
    strict = Readiness(accuracy_floor=0.99)
    from clreg.registry.findings import Calibration

    overlaid = sets.overlay(Calibration(model=M, sites={}, pooled=score.figures), 1)
    assert overlaid is not None and overlaid.sites["b"] == score.figures
    verdict = assess("b", overlaid, strict, "accuracy")
    assert not verdict.validated and "does not reach the floor 0.99" in verdict.reasons[0]
    cfg = ServingConfig(store=store_cfg, artifacts_url=str(ctx.artifacts.url), ops_token_sha256=token_sha256("ops"))
    with TestClient(create_app(cfg), base_url="http://127.0.0.1", headers={"Authorization": "Bearer ops"}) as http:
        report = http.get("/v1/sites/b/validation", params={"model": M}).json()
        assert report["judged_on"] == "locked" and report["locked"]["digest"] == score.digest
        assert report["locked"]["accuracy"] == score.figures.accuracy and report["heldout"] is None
        page = http.get("/v1/sites/b/validation", params={"model": M, "format": "html"}).text
        assert "Locked test set" in page and score.digest in page


def test_the_push_route_takes_locked_and_refuses_the_same_bytes_unlocked(ctx: context.Context,
                                                                         store_cfg: StoreConfig) -> None:
    _model(ctx.registry)
    ctx.registry.add_site(Site(name="b", token_sha256=token_sha256("tok-b")))
    site = digits_sites(seed=2, names=("contrast",))[0]
    body = npz_bytes(to_uint8(site.x[:30]), site.y[:30])
    cfg = ServingConfig(store=store_cfg, artifacts_url=str(ctx.artifacts.url))
    with TestClient(create_app(cfg), base_url="http://127.0.0.1",
                    headers={"Authorization": "Bearer tok-b", "Content-Type": "application/octet-stream"}) as http:
        pushed = http.post("/v1/sites/b/batches", params={"model": M, "locked": "true"}, content=body)
        assert pushed.status_code == 202 and pushed.json()["locked"] is True
        again = http.post("/v1/sites/b/batches", params={"model": M}, content=body)
        assert again.status_code == 409 and again.json()["error"] == "conflict"
        assert "locked test set" in again.json()["detail"]
    assert ctx.registry.batches.get(pushed.json()["batch_id"]).locked


def test_a_locked_set_that_changes_productions_readiness_raises_the_alert(ctx: context.Context) -> None:
    from clreg import scores
    from clreg.calibration import calibrate_version
    from clreg.learner.answer import Answerer

    model = _model(ctx.registry).model_copy(update={"readiness": Readiness(accuracy_floor=0.0, ece_limit=1.0)})
    data = digits_sites(seed=2, names=("contrast",))[0]
    learnt = _push(ctx, "b", data.x[:100], data.y[:100], locked=False)
    torch.manual_seed(0)
    weights = ctx.artifacts.put(weights_to_bytes(network_for(model)))
    scored = scores.answer(ctx.stores, model, Answerer.of(ctx.stores.module(model, weights), None), {"b": [learnt]})
    calibration = calibrate_version(model, scored, 0)
    version = ctx.registry.register_version(ModelVersion(model=M, number=1, lineage=Lineage(sites=["b"]), artifacts={
        Artifact.WEIGHTS.value: weights,
        Artifact.CALIBRATION.value: ctx.artifacts.put(calibration.model_dump_json().encode())}))
    ctx.registry.promote(M, version.number, who="test", reason="served")
    locked = _push(ctx, "b", data.x[100:160], data.y[100:160], locked=True)
    heldout = promotion.readiness(ctx.registry, ctx.artifacts, model, 1)["b"]
    locking.admit(ctx.stores, model, ctx.registry.batches.get(locked))
    judged = promotion.readiness(ctx.registry, ctx.artifacts, model, 1)["b"]
    assert judged != heldout  # judged on the locked set's figures now
    raised = [e.data for e in ctx.events.read(M) if e.kind == "site.readiness"]
    assert raised == ([] if judged.validated == heldout.validated else [{
        "site": "b", "version": 1, "validated": judged.validated, "reasons": judged.reasons,
        "was": heldout.validated, "judged_on": "locked"}])
    flipped = SiteReadiness("b", not judged.validated)  # had it been the other verdict before: the alert
    locking._readiness_alerts(ctx.stores, model, 1, {"b": flipped})
    last = ctx.events.read(M)[-1]
    assert (last.kind, last.data["was"], last.data["validated"]) == ("site.readiness", flipped.validated,
                                                                     judged.validated)
