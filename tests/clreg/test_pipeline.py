"""A candidate that forgets an earlier site is retried once with a stronger penalty, then given up."""

from __future__ import annotations

from pathlib import Path

import pytest

from clreg import context, pipeline
from clreg.client import npz_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.learner.train import TrainConfig
from clreg.registry.batches import Limits, ingest
from clreg.registry.events import IngestQueue
from clreg.registry.findings import GateReport, SiteGate
from clreg.registry.records import BatchStatus, InputSpec, Model, RetryPolicy, Site, VersionStatus
from clreg.registry.status import StuckRule, pipeline_status
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.settings import GateConfig, RedisSettings, SearchConfig, Settings
from tests import cheap


def _line(site: str, new_site: bool, passed: bool) -> SiteGate:
    return SiteGate(site=site, samples=10, candidate_accuracy=0.5, production_accuracy=0.6, delta=-0.1,
                    lower_bound=-0.2, new_site=new_site, passed=passed)


def _report(*lines: SiteGate) -> GateReport:
    return GateReport(id="g", model="m", candidate=2, production=1, tolerance=0.05, confidence=0.95,
                      sites=list(lines), passed=all(x.passed for x in lines))


def test_only_forgetting_an_earlier_site_calls_for_a_retry() -> None:
    assert pipeline._forgot(_report(_line("a", False, False), _line("b", True, True)))
    assert not pipeline._forgot(_report(_line("a", False, True), _line("b", True, False)))


@pytest.mark.integration
def test_forgetting_is_retried_with_a_stronger_penalty(registry: RedisRegistry, store_cfg: StoreConfig,
                                                       tmp_path: Path, ray_session: None) -> None:
    # tolerance 0: earlier sites pass only if the candidate is provably better there, so both attempts fail;
    # without rehearsal, as with more of base's own images the candidate can become provably better on it
    no_replay = [{**c, "replay_weight": 0.0} for c in cheap.SEARCH.candidates]
    settings = Settings(home=tmp_path, redis=RedisSettings(url=store_cfg.url, prefix=store_cfg.prefix),
                        search=cheap.SEARCH.model_copy(update={"candidates": no_replay}),
                        train=TrainConfig(epochs=2), gate=GateConfig(tolerance=0.0, retry_lambda_factor=4.0))
    ctx = context.build(settings, store_cfg, "http://127.0.0.1:0")
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=16, width=16, classes=10),
                                retry=RetryPolicy(updates=1)))  # rejected for good at once
    queue = IngestQueue(registry)
    queue.ensure_group()
    ids = []
    for site in digits_sites(seed=4, names=("base", "inverted")):
        batch, _ = ingest(registry, ctx.artifacts, queue, ctx.events, "m", site.name,
                          npz_bytes(to_uint8(site.x[:120]), site.y[:120]), Limits())
        pipeline.process(ctx, pipeline.Worker(), batch.id)
        ids.append(batch.id)
    assert registry.resolve("m") == 1
    statuses = {v.version.number: v.status for v in registry.list_versions("m")}
    assert statuses == {1: VersionStatus.PRODUCTION, 2: VersionStatus.REJECTED, 3: VersionStatus.REJECTED}
    lam = [sorted(line["settings"]["ewc_lambda"] for line in registry.get_version("m", n).lineage.search)
           for n in (2, 3)]
    assert lam[1] == [4.0 * v for v in lam[0]]  # every candidate of the retry: lambda x the retry factor
    kinds = [e.kind for e in ctx.events.read("m")]
    assert kinds.count("update.retrying") == 1 and kinds.count("gate.failed") == 2
    retry = next(e for e in ctx.events.read("m") if e.kind == "update.retrying")
    assert retry.data["rejected"] == 2 and retry.data["batches"] == [ids[1]]
    state = registry.batches.state(ids[1])
    assert (state.status, state.version) == (BatchStatus.REJECTED, 3) and "base" in state.detail
    assert registry.batches.pending("m") == []


@pytest.mark.integration
def test_a_rejected_batch_waits_and_joins_the_next_update(registry: RedisRegistry, store_cfg: StoreConfig,
                                                          tmp_path: Path, ray_session: None) -> None:
    def ctx_with(gate: GateConfig, search: SearchConfig) -> context.Context:
        settings = Settings(home=tmp_path, redis=RedisSettings(url=store_cfg.url, prefix=store_cfg.prefix),
                            search=search, train=TrainConfig(epochs=2), gate=gate)
        return context.build(settings, store_cfg, "http://127.0.0.1:0")

    # tolerance 0 without rehearsal (as above): base cannot be shown better, so v2 is rejected
    no_replay = cheap.SEARCH.model_copy(update={"candidates": [{**c, "replay_weight": 0.0}
                                                               for c in cheap.SEARCH.candidates]})
    strict = ctx_with(GateConfig(tolerance=0.0, forgetting_retries=0), no_replay)
    usual = ctx_with(GateConfig(), cheap.SEARCH)
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=16, width=16, classes=10)))
    queue = IngestQueue(registry)
    queue.ensure_group()
    sites = digits_sites(seed=4, names=("base", "inverted", "contrast"))
    for site in sites:
        registry.add_site(Site(name=site.name, token_sha256="0" * 64))
    ids = [ingest(registry, usual.artifacts, queue, usual.events, "m", s.name,
                  npz_bytes(to_uint8(s.x[:120]), s.y[:120]), Limits())[0].id for s in sites]
    pipeline.process(usual, pipeline.Worker(), ids[0])
    pipeline.process(strict, pipeline.Worker(), ids[1])  # tolerance 0: earlier sites cannot pass
    state = registry.batches.state(ids[1])
    assert (state.status, state.updates, state.version) == (BatchStatus.WAITING, 1, 2)
    assert "rejected in 1 of at most 3 updates; joins the model's next update" in state.detail
    assert registry.batches.pending("m") == [ids[1]] and registry.resolve("m") == 1
    status = pipeline_status(registry, StuckRule(after_s=1e-6, waiting_after_s=1e-6))
    assert [(w.batch_id, w.updates) for w in status.waiting] == [(ids[1], 1)]
    # contrast pushed already, not learnt yet either
    assert [(s.site, s.learnt, s.waiting) for s in status.not_learnt] == [("contrast", False, 0),
                                                                         ("inverted", False, 1)]
    assert ids[1] not in {b.batch_id for b in status.stuck}  # waiting by design, not stuck
    pipeline.process(usual, pipeline.Worker(), ids[2])  # the next batch's update learns both
    production = registry.get_version("m", registry.resolve("m"))
    assert sorted(production.lineage.batch_ids) == sorted(ids[1:]) and production.number == 3
    assert registry.batches.state(ids[1]).status is BatchStatus.PROMOTED and registry.batches.pending("m") == []
    assert not pipeline_status(registry, StuckRule()).not_learnt
    kinds = [e.kind for e in usual.events.read("m")]
    assert kinds.count("batch.waiting") == 1 and "batch.rejected" not in kinds
