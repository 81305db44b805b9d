"""The pipeline with a shadow policy: a candidate that passed its gate waits, mirrored, instead of being promoted;
batches arriving meanwhile wait for its verdict; the verdict finishes its batches, and a replay changes nothing."""

from __future__ import annotations

from pathlib import Path

from clreg import context, pipeline, shadowing
from clreg.client import npz_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.learner.train import TrainConfig
from clreg.registry.batches import Limits, ingest
from clreg.registry.events import IngestQueue
from clreg.registry.leases import tool
from clreg.registry.records import BatchStatus, InputSpec, Model, ShadowPolicy, VersionStatus
from clreg.registry.shadow import ShadowCounts, Shadows
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.settings import GateConfig, RedisSettings, Settings
from tests import cheap

POLICY = ShadowPolicy(share=0.5, min_requests=100, min_agreement=0.9)


def test_a_gated_candidate_is_mirrored_then_judged(registry: RedisRegistry, store_cfg: StoreConfig,
                                                   tmp_path: Path, ray_session: None) -> None:
    settings = Settings(home=tmp_path, redis=RedisSettings(url=store_cfg.url, prefix=store_cfg.prefix),
                        search=cheap.SEARCH, train=TrainConfig(epochs=2),
                        gate=GateConfig(tolerance=1.0, site_tolerance=1.0, forgetting_budget=1.0))  # every gate passes
    ctx = context.build(settings, store_cfg, "http://127.0.0.1:0")
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn", shadow=POLICY,
                                input=InputSpec(channels=1, height=16, width=16, classes=10)))
    queue = IngestQueue(registry)
    queue.ensure_group()
    ids = []
    for i, site in enumerate(digits_sites(seed=4, names=("base", "contrast", "speckle"))):
        batch, _ = ingest(registry, ctx.artifacts, queue, ctx.events, "m", site.name,
                          npz_bytes(to_uint8(site.x[:120]), site.y[:120]), Limits())
        pipeline.process(ctx, pipeline.Worker(), batch.id)
        ids.append(batch.id)
        if i == 0:  # a first version has no production to agree with: promoted at once
            assert registry.resolve("m") == 1 and Shadows(registry).active("m") is None

    shadows = Shadows(registry)
    run = shadows.active("m")
    assert run is not None and run.version == 2 and run.policy == POLICY
    assert registry.resolve("m") == 1 and registry.status("m", 2) is VersionStatus.BLESSED
    assert registry.batches.state(ids[1]).status is BatchStatus.SHADOWING
    # the third batch waits for the verdict: no update while a candidate is mirrored
    assert [v.version.number for v in registry.list_versions("m")] == [1, 2]
    assert registry.batches.state(ids[2]).status is BatchStatus.DRIFT_CHECKED
    assert sorted(registry.batches.pending("m")) == sorted(ids[1:])

    shadows.record({("m", 2, "base"): ShadowCounts(requests=99, samples=99, agreed=99, confidence_sum=90.0)})
    assert shadowing.judge(ctx.stores, tool(), 10.0) == []  # 99 < 100 requests: it waits
    shadows.record({("m", 2, "contrast"): ShadowCounts(requests=1, samples=4, agreed=2, confidence_sum=3.0)})
    assert shadowing.judge(ctx.stores, tool(), 10.0) == [("m", 2, "production")]  # 101 of 103 samples agree
    assert registry.resolve("m") == 2 and shadows.active("m") is None
    state = registry.batches.state(ids[1])
    assert (state.status, state.version) == (BatchStatus.PROMOTED, 2)
    assert registry.batches.pending("m") == [ids[2]]  # the waiting batch is learnt by the next update
    pipeline.process(ctx, pipeline.Worker(), ids[1])  # a replayed entry of a finished batch changes nothing
    assert registry.resolve("m") == 2 and [v.version.number for v in registry.list_versions("m")] == [1, 2]
    kinds = [e.kind for e in ctx.events.read("m")]
    assert kinds.count("shadow.started") == 1 and kinds.count("shadow.finished") == 1
