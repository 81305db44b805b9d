"""Crash tests with real processes and SIGKILL: a `clreg daemon` is stopped at each step of an update (a
failpoint pauses it there) and killed from outside, then started again, or a second daemon takes over.

At every point: the batch reaches the verdict it reaches without a crash within 60 s of the restart; version
numbers run 1..n with a record each and none without a verdict; the alias history holds exactly the expected
moves, each with one alias.moved event; nothing is left pending; clients predicting all along got an answer to
every request (exceptions and timeouts count as failures); and against everything stored at the failpoint (every
Redis key, every artifact), the replay lost nothing, rewrote no record and wrote no step's event or alert twice.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from clreg import context, pipeline
from clreg.client import ApiError, Client, npz_bytes
from clreg.embedded import Stack
from clreg.faults import POINTS, REJECT_POINTS, SHADOW_POINTS
from clreg.learner.streams import SiteData, digits_sites, to_uint8
from clreg.registry.daemons import Daemons
from clreg.registry.events import EventLog
from clreg.registry.records import BatchStatus, VersionStatus
from clreg.registry.store import RedisRegistry
from tests.clreg import processes, statedump

pytestmark = pytest.mark.integration
SAMPLES = 300
FINAL = ("promoted", "rejected", "failed")


@pytest.fixture(scope="module")
def sites() -> list[SiteData]:
    return digits_sites(seed=11, names=("base", "contrast"))


def _first_version(stack: Stack, model: str, sites: list[SiteData], shadow: dict | None = None) -> dict[str, str]:
    """The model, its sites (tokens returned), and version 1 learnt from the first site and served."""
    client = Client(stack.url, stack.admin_token)
    client.wait_ready()
    client.create_model(model, "clreg.learner.models:small_cnn", (1, 16, 16), classes=10, shadow=shadow)
    tokens = {s.name: client.add_site(f"{model}-{s.name}")["token"] for s in sites}
    base = sites[0]
    pushed = client.push(f"{model}-{base.name}", tokens[base.name],
                         npz_bytes(to_uint8(base.x[:SAMPLES]), base.y[:SAMPLES]), model)
    ctx = context.build(stack.settings, stack.store, stack.url)
    pipeline.process(ctx, pipeline.Worker(), pushed["batch_id"])
    assert ctx.registry.resolve(model) == 1
    assert _served(client, model, base.x[:1], 1) == 1
    return tokens


def _push_second(stack: Stack, model: str, site: SiteData, token: str) -> str:
    body = npz_bytes(to_uint8(site.x[:SAMPLES]), site.y[:SAMPLES])
    return Client(stack.url).push(f"{model}-{site.name}", token, body, model)["batch_id"]


def _served(client: Client, model: str, x: np.ndarray, version: int, timeout_s: float = 20) -> int:
    deadline, served = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline and served != version:
        try:
            served = client.predict(x, model)[1]
        except ApiError:
            pass
        time.sleep(0.1)
    return served


def _final(stack: Stack, batch_id: str, timeout_s: float, daemon: processes.Child | None = None,
           settled: tuple[str, ...] = FINAL) -> dict:
    deadline, state = time.monotonic() + timeout_s, {}
    client = Client(stack.url, token=stack.ops_token)
    while time.monotonic() < deadline:
        state = client.get(f"/v1/batches/{batch_id}")
        if state["status"] in settled:
            return state
        time.sleep(0.2)
    log = daemon.output()[-6000:] if daemon is not None else ""
    raise AssertionError(f"batch still {state.get('status')} ({state.get('detail')}) after {timeout_s:.0f} s\n{log}")


def _check_registry(registry: RedisRegistry, model: str, batch_id: str, state: dict) -> None:
    """Numbers without gaps, a verdict for every version, exactly the expected alias moves, nothing pending."""
    views = registry.list_versions(model)
    seq = int(registry.r.get(registry.key("model", model, "seq")))
    assert [v.version.number for v in views] == list(range(1, seq + 1))
    assert not [v.version.number for v in views if v.status is VersionStatus.CANDIDATE]
    moves = [(c.from_version, c.to_version) for c in registry.alias_history(model)]
    expected = [(None, 1)] + ([(1, state["version"])] if state["status"] == "promoted" else [])
    assert moves == expected
    events = [e for e in EventLog(registry).read(model) if e.kind == "alias.moved"]
    assert [(e.data["frm"], e.data["to"]) for e in events] == expected
    learnt = registry.get_version(model, state["version"]).lineage.batch_ids
    assert learnt == [batch_id] and registry.batches.pending(model) == []
    assert registry.batches.state(batch_id).status is BatchStatus(state["status"])


def _dump(stack: Stack) -> statedump.Dump:
    return statedump.take(context.build(stack.settings, stack.store, stack.url).registry,
                          Path(stack.settings.artifacts()))


# during_training is killed mid-way through the product's default search and refit (below), which covers the
# cheap search's path too; run once, not twice, to keep the suite's time
@pytest.mark.parametrize("point", [p for p in POINTS if p != "during_training"])
def test_a_daemon_killed_at_any_step_is_resumed_by_its_restart(stack: Stack, sites: list[SiteData], tmp_path: Path,
                                                              point: str) -> None:
    _kill_and_resume(stack, sites, tmp_path, point, f"kill-{point.replace('_', '-')}")


def test_a_daemon_killed_mid_way_through_the_default_search_and_refit_is_resumed(
        stack: Stack, sites: list[SiteData], tmp_path: Path) -> None:
    """The product's own candidate search (every candidate, then the refit), killed while it trains."""
    _kill_and_resume(stack, sites, tmp_path, "during_training", "kill-default-search", cheap_search=False,
                     within_s=150)


def _kill_and_resume(stack: Stack, sites: list[SiteData], tmp_path: Path, point: str, model: str,
                     cheap_search: bool = True, within_s: float = 60) -> None:
    tokens = _first_version(stack, model, sites)
    with processes.Prober(stack.url, model, sites[0].x[:2]) as probe:
        first = processes.daemon(stack, model, tmp_path / "first.log", pause_at=point, signals=tmp_path,
                                 cheap_search=cheap_search)
        batch_id = _push_second(stack, model, sites[1], tokens[sites[1].name])
        processes.wait_for(tmp_path / point, first, timeout_s=120)
        before = _dump(stack)
        first.kill()
        restarted = processes.daemon(stack, model, tmp_path / "second.log", cheap_search=cheap_search)
        state = _final(stack, batch_id, timeout_s=within_s - (time.monotonic() - restarted.started),
                       daemon=restarted)
        assert state["status"] == "promoted", state  # the contrast site is learnt without forgetting the first
        reader = Client(stack.url, token=stack.ops_token)
        assert _served(reader, model, sites[0].x[:1], state["version"]) == state["version"]
        assert restarted.terminate() == 0, restarted.output()[-3000:]
    assert "restarted: its earlier start" in restarted.output()
    registry = context.build(stack.settings, stack.store, stack.url).registry
    _check_registry(registry, model, batch_id, state)
    assert statedump.replay_problems(registry, model, before, _dump(stack)) == []
    assert probe.failures == 0 and probe.total > 50, probe.outcomes


# A gate no candidate passes: the pooled lower bound at confidence 0.999 must stay above 0, which churn alone prevents
REJECTING = {"gate__tolerance": "0", "gate__confidence": "0.999", "train__epochs": "1"}


def test_a_daemon_killed_twice_on_the_reject_path_is_resumed_to_the_same_wait(stack: Stack, sites: list[SiteData],
                                                                             tmp_path: Path) -> None:
    """An update rejected for forgetting, retried with a stronger penalty and rejected again; its daemon killed
    after the first rejection, the next one killed after announcing the retry (both REJECT_POINTS, in one run):
    the third makes no fourth version, and the batch waits for the next update, counted once, with each
    rejection's and the retry's event once; against what was stored at each kill, nothing lost or rewritten."""
    model = "kill-reject-path"
    tokens = _first_version(stack, model, sites)
    dumps = []
    with processes.Prober(stack.url, model, sites[0].x[:2]) as probe:
        batch_id = ""
        for point in REJECT_POINTS:
            doomed = processes.daemon(stack, model, tmp_path / f"{point}.log", pause_at=point,
                                      signals=tmp_path / point, **REJECTING)
            batch_id = batch_id or _push_second(stack, model, sites[1], tokens[sites[1].name])
            processes.wait_for(tmp_path / point / point, doomed, timeout_s=120)
            dumps.append(_dump(stack))
            doomed.kill()
        last = processes.daemon(stack, model, tmp_path / "last.log", **REJECTING)
        state = _final(stack, batch_id, timeout_s=60, daemon=last, settled=("waiting", *FINAL))
        assert last.terminate() == 0, last.output()[-3000:]
    registry = context.build(stack.settings, stack.store, stack.url).registry
    assert (state["status"], state["version"], state["updates"]) == ("waiting", 3, 1), state
    assert [(v.version.number, v.status) for v in registry.list_versions(model)] == \
        [(1, VersionStatus.PRODUCTION), (2, VersionStatus.REJECTED), (3, VersionStatus.REJECTED)]
    assert [(c.from_version, c.to_version) for c in registry.alias_history(model)] == [(None, 1)]
    assert registry.batches.pending(model) == [batch_id]
    steps = [(e.kind, e.data.get("version", e.data.get("rejected"))) for e in EventLog(registry).read(model)
             if e.kind in ("gate.failed", "update.retrying", "batch.waiting")]
    assert steps == [("gate.failed", 2), ("update.retrying", 2), ("gate.failed", 3), ("batch.waiting", 3)]
    after = _dump(stack)
    assert [statedump.replay_problems(registry, model, before, after) for before in dumps] == [[], []]
    assert probe.failures == 0, probe.outcomes


def test_a_survivor_claims_and_finishes_what_a_killed_daemon_held(stack: Stack, sites: list[SiteData],
                                                                 tmp_path: Path) -> None:
    model = "kill-two-daemons"
    tokens = _first_version(stack, model, sites)
    registry = context.build(stack.settings, stack.store, stack.url).registry
    with processes.Prober(stack.url, model, sites[0].x[:2]) as probe:
        doomed = processes.daemon(stack, "two-a", tmp_path / "a.log", pause_at="during_training", signals=tmp_path)
        batch_id = _push_second(stack, model, sites[1], tokens[sites[1].name])
        processes.wait_for(tmp_path / "during_training", doomed, timeout_s=120)
        survivor = processes.daemon(stack, "two-b", tmp_path / "b.log")  # default claim time (20 s)
        deadline = time.monotonic() + 60
        while Daemons(registry).heartbeat("two-b") is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(4)  # two heartbeats: the survivor respects the live daemon's entry and lease
        assert registry.batches.state(batch_id).status is BatchStatus.TRAINING
        doomed.kill()
        killed = time.monotonic()
        state = _final(stack, batch_id, timeout_s=60, daemon=survivor)
        took_s = time.monotonic() - killed
        status = Client(stack.url, token=stack.ops_token).get("/v1/status")
        metrics = httpx.get(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {stack.ops_token}"}).text
        assert survivor.terminate() == 0
    lines = {d["heartbeat"]["incarnation"]["name"]: d for d in status["daemons"]}
    assert lines["two-b"]["alive"] and not lines["two-a"]["alive"] and not lines["two-a"]["heartbeat"]["stopped"]
    assert 'clreg_daemon_up{daemon="two-b"} 1.0' in metrics and 'clreg_daemon_up{daemon="two-a"} 0.0' in metrics
    _check_registry(registry, model, batch_id, state)
    taken = [e for e in EventLog(registry).read(model) if e.kind == "update.taken_over"]
    assert [e.data["holder"] for e in taken] == ["two-a"] and took_s < 60
    assert probe.failures == 0 and probe.total > 50, probe.outcomes


def test_sigterm_mid_training_exits_in_time_and_the_next_start_resumes(stack: Stack, sites: list[SiteData],
                                                                      tmp_path: Path) -> None:
    model = "term-training"
    tokens = _first_version(stack, model, sites)
    client = Client(stack.url, token=stack.ops_token)
    first = processes.daemon(stack, model, tmp_path / "first.log", train__epochs="200")
    batch_id = _push_second(stack, model, sites[1], tokens[sites[1].name])
    deadline = time.monotonic() + 90
    while client.get(f"/v1/batches/{batch_id}")["status"] != "training" and time.monotonic() < deadline:
        time.sleep(0.1)
    asked = time.monotonic()
    code = first.terminate(timeout_s=30)
    took_s = time.monotonic() - asked
    stopped = client.get(f"/v1/batches/{batch_id}")
    assert code == 0 and took_s < 30, (code, took_s, first.output()[-2000:])
    assert stopped["status"] == "training" and "next start resumes it" in stopped["detail"]
    restarted = processes.daemon(stack, model, tmp_path / "second.log")
    state = _final(stack, batch_id, timeout_s=60, daemon=restarted)
    assert restarted.terminate() == 0
    assert "restarted: its earlier start" not in restarted.output()  # it stopped cleanly: no crash to report
    _check_registry(context.build(stack.settings, stack.store, stack.url).registry, model, batch_id, state)


@pytest.mark.parametrize("point", SHADOW_POINTS)
def test_a_daemon_killed_while_it_mirrors_a_candidate_finishes_the_shadow_run_once(
        stack: Stack, sites: list[SiteData], tmp_path: Path, point: str) -> None:
    """A model that mirrors each candidate on every request until 30 were mirrored (any agreement will do), killed
    when the shadow run begins or while it is judged: the candidate is promoted, once, with one start and one
    end of its shadow run."""
    model = f"kill-{point.replace('_', '-')}"
    tokens = _first_version(stack, model, sites, shadow={"share": 1.0, "min_requests": 30, "min_agreement": 0.0})
    with processes.Prober(stack.url, model, sites[0].x[:2]) as probe:
        first = processes.daemon(stack, model, tmp_path / "first.log", pause_at=point, signals=tmp_path)
        batch_id = _push_second(stack, model, sites[1], tokens[sites[1].name])
        processes.wait_for(tmp_path / point, first, timeout_s=120)
        before = _dump(stack)
        first.kill()
        restarted = processes.daemon(stack, model, tmp_path / "second.log")
        state = _final(stack, batch_id, timeout_s=60, daemon=restarted)
        assert state["status"] == "promoted", state
        assert restarted.terminate() == 0, restarted.output()[-3000:]
    registry = context.build(stack.settings, stack.store, stack.url).registry
    _check_registry(registry, model, batch_id, state)
    kinds = [e.kind for e in EventLog(registry).read(model) if e.kind.startswith("shadow.")]
    assert kinds == ["shadow.started", "shadow.finished"]
    assert statedump.replay_problems(registry, model, before, _dump(stack)) == []
    assert probe.failures == 0, probe.outcomes


def test_a_replica_killed_under_load_is_replaced_by_serve_and_every_failed_request_is_counted(
        stack: Stack, sites: list[SiteData]) -> None:
    """SIGKILL the ModelServer replica while 4 clients predict: Serve starts another, which serves the same version
    within 60 s; the requests that failed meanwhile are counted (bench/replica_kill.py reports the figure)."""
    model = "kill-replica"
    _first_version(stack, model, sites)
    [doomed] = [pid for name, pid in processes.replica_pids().items() if "ModelServer" in name]
    with processes.Prober(stack.url, model, sites[0].x[:2]) as probe:
        time.sleep(2)
        steady = probe.failures
        os.kill(doomed, signal.SIGKILL)
        deadline, replaced = time.monotonic() + 60, []
        while not replaced and time.monotonic() < deadline:
            replaced = [pid for name, pid in processes.replica_pids().items()
                        if "ModelServer" in name and pid != doomed]
            time.sleep(0.2)
        reader = Client(stack.url, token=stack.ops_token)
        assert _served(reader, model, sites[0].x[:1], 1, timeout_s=max(1.0, deadline - time.monotonic())) == 1
        recovered, failed = probe.total, probe.failures
        time.sleep(2)
    assert steady == 0 and replaced, (steady, replaced)
    assert probe.total - recovered > 20 and probe.failures == failed, probe.outcomes  # none fail once it serves
    print(f"replica killed: {probe.failures} of {probe.total} requests failed ({dict(probe.outcomes)})")
