"""Hostile requests through the real Serve proxy: each gets its exact 4xx with a JSON `error`, within 2 s,
and leaves Redis byte-identical (DUMP of every key) and the artifact folder unchanged; bodies past their
limit and npz bombs do not grow the gateway's or the replicas' memory past twice the body limit."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import torch

from clreg.embedded import Stack
from clreg.learner.models import small_cnn, weights_to_bytes
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.inputs import InputLog, InputLogConfig
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion
from clreg.registry.store import RedisRegistry
from tests.clreg import processes
from tests.serving import hostile

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def site_token(stack: Stack) -> str:
    """Model hx (1x8x8, 3 classes) served at version 1, and site hx-site with its token."""
    reg, store = RedisRegistry(stack.store), ArtifactStore(stack.settings.artifacts())
    reg.create_model(Model(name=hostile.MODEL, factory="clreg.learner.models:small_cnn",
                           input=InputSpec(channels=1, height=8, width=8, classes=3)))
    torch.manual_seed(0)
    digest = store.put(weights_to_bytes(small_cnn(1, 8, 8, 3)))
    v1 = reg.register_version(ModelVersion(model=hostile.MODEL, number=1, lineage=Lineage(),
                                           artifacts={"weights": digest}))
    reg.promote(hostile.MODEL, v1.number, who="test", reason="serve")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = httpx.post(f"{stack.url}/v1/predict", params={"model": hostile.MODEL},
                       json={"inputs": np.zeros((1, 8, 8)).tolist()})
        if r.status_code == 200:
            break
        time.sleep(0.1)
    inputs = InputLog(stack.store, InputLogConfig())
    while inputs.count(hostile.MODEL) == 0 and time.monotonic() < deadline:  # the replica writes every 0.5 s
        time.sleep(0.05)
    answer = httpx.post(f"{stack.url}/v1/sites", json={"name": hostile.SITE},
                        headers={"Authorization": f"Bearer {stack.admin_token}"})
    return str(answer.json()["token"])


def _state(stack: Stack) -> tuple[dict[bytes, bytes], dict[str, str]]:
    """DUMP of every key that does not expire (heartbeats and leases come and go), and every artifact's hash."""
    client = redis.Redis.from_url(stack.redis_url)
    dump = {k: client.dump(k) for k in client.scan_iter() if client.ttl(k) == -1}
    files = {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in Path(stack.settings.artifacts()).rglob("*") if p.is_file()}
    return dump, files


def _token(stack: Stack, site_token: str, auth: str) -> str | None:
    return {"ops": stack.ops_token, "admin": stack.admin_token, "site": site_token, "none": None}.get(auth, auth)


def _send(http: httpx.Client, stack: Stack, site_token: str, case: hostile.Case) -> tuple[httpx.Response, float]:
    headers = dict(case.headers)
    token = _token(stack, site_token, case.auth)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    started = time.monotonic()
    r = http.request(case.method, case.path, params=case.params, headers=headers, content=case.content,
                     json=case.json)
    return r, time.monotonic() - started


def _verdict(case: hostile.Case, r: httpx.Response, seconds: float) -> str | None:
    """What is wrong with an answer, or None."""
    try:
        code = r.json().get("error")
    except ValueError:
        code = f"(not JSON: {r.headers.get('content-type')} {r.text[:80]!r})"
    if (r.status_code, code) != (case.status, case.code) or seconds > 2.0:
        return f"{case.name}: {r.status_code} {code} in {seconds:.2f} s; want {case.status} {case.code}"
    return None


def test_every_hostile_request_gets_its_exact_refusal_and_changes_nothing(stack: Stack, site_token: str) -> None:
    cases = hostile.corpus()
    assert len(cases) >= 150 and len({c.name for c in cases}) == len(cases)
    before = _state(stack)
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        wrong = [w for case in cases if (w := _verdict(case, *_send(http, stack, site_token, case)))]
    assert not wrong, "\n".join(wrong)
    after = _state(stack)
    assert after[1] == before[1]  # the artifact folder
    changed = sorted(k for k in set(before[0]) | set(after[0]) if before[0].get(k) != after[0].get(k))
    assert changed == [], changed


def _memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since the last reset) of a process, in KiB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("VmRSS", "VmHWM")}


def _reset_peak(pid: int) -> int:
    """Set the process's peak RSS to its current RSS; returns that RSS (KiB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _memory_kib(pid)["VmRSS"]


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    while total > 0:
        yield b"\0" * min(size, total)
        total -= size


def test_bombs_and_oversized_bodies_do_not_grow_memory_past_twice_the_limit(stack: Stack, site_token: str) -> None:
    pids = processes.replica_pids()
    assert any("Gateway" in k for k in pids) and any("ModelServer" in k for k in pids)
    base = {name: _reset_peak(pid) for name, pid in pids.items()}
    push, limit = f"/v1/sites/{hostile.SITE}/batches", stack.settings.serve.max_body_bytes
    predict_limit = stack.settings.serve.predict_max_body_bytes
    octet = {"Content-Type": "application/octet-stream"}
    with httpx.Client(base_url=stack.url, timeout=30, headers={"Authorization": f"Bearer {site_token}"}) as http:
        answers = [
            http.post(push, params={"model": hostile.MODEL}, headers=octet, content=b"\0" * (limit + 1)),
            http.post(push, params={"model": hostile.MODEL}, headers=octet, content=_chunks(limit + (8 << 20))),
            http.post(push, params={"model": hostile.MODEL}, headers=octet, content=_chunks(1 << 20)),
            http.post(push, params={"model": hostile.MODEL}, headers=octet, content=hostile._declared((10**9, 8, 8))),
            http.post("/v1/predict", params={"model": hostile.MODEL}, headers=octet,
                      content=_chunks(predict_limit + (8 << 20))),
            http.post("/v1/predict", params={"model": hostile.MODEL}, headers=octet,
                      content=hostile._declared((10**9, 8, 8), with_y=False)),
        ]
    assert [a.status_code for a in answers] == [413, 411, 411, 413, 411, 413]  # chunked: Content-Length required
    growth = {name: (_memory_kib(pid)["VmHWM"] - base[name]) * 1024 for name, pid in pids.items()}
    assert all(g < 2 * limit for g in growth.values()), growth
