"""Change control end to end on a local Ray: an `approval` model learnt from three sites through the pipeline, two of
them with a locked test set, one version declined and two approved (through the gateway app, served in-process).

- A blessed version waits as awaiting_approval, unserved, with its batches, and the model's next update waits too.
- No locked batch reaches training, replay or selection: the lineage, every `replay/<site>` artifact, every
  calibration, scores artifact and gate report of every version are inspected; each version is scored on each set.
- The evidence pack up to the last version is rendered in Chromium, printed to PDF, and every figure on the page
  equals the API's. A screenshot goes under CLREG_TEST_OUTPUT (and to docs/evidence-pack.png with
  CLREG_TEST_DOCS_SCREENSHOT=1).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn

from clreg import context, parts, pipeline, scores
from clreg.client import npz_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.learner.train import TrainConfig
from clreg.registry.approvers import Approvers
from clreg.registry.artifacts import Artifact, version_calibration
from clreg.registry.batches import Limits, ingest, token_sha256
from clreg.registry.events import IngestQueue
from clreg.registry.locked import LockedSets, set_digest
from clreg.registry.records import ApprovalPolicy, BatchStatus, VersionStatus
from clreg.registry.store import StoreConfig
from clreg.serving.config import ServingConfig
from clreg.serving.gateway import create_app
from clreg.settings import GateConfig, RedisSettings, Settings
from tests import cheap
from tests.s3server import free_port
from tests.serving.evidence_model import close, resolve

pytestmark = pytest.mark.integration
M, PREFIX = "cc", "cc-test"
CHROMIUM = os.environ.get("CLREG_TEST_CHROMIUM", "/usr/bin/chromium")
OUTPUT = Path(os.environ.get("CLREG_TEST_OUTPUT", ".test-output")) / "evidence"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "evidence-pack.png"


@dataclass
class Learnt:
    ctx: context.Context
    http: httpx.Client
    url: str
    ops: str
    train: dict[str, str]  # site -> its training batch
    locked: dict[str, str]  # site -> its locked batch
    images: dict[str, set[bytes]]  # site -> its locked images (uint8 bytes)
    trained: dict[str, set[bytes]]  # site -> its training images
    seen: dict[str, object]  # what was true at each step, for the approval tests


def _serve(store: StoreConfig, artifacts: str, tokens: dict[str, str]) -> tuple[uvicorn.Server, str]:
    port = free_port()
    cfg = ServingConfig(store=store, artifacts_url=artifacts, admin_token_sha256=token_sha256(tokens["admin"]),
                        ops_token_sha256=token_sha256(tokens["ops"]))
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def learnt(redis_url: str, tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Iterator[Learnt]:
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{PREFIX}:*"):
        client.delete(key)
    store, home = StoreConfig(url=redis_url, prefix=PREFIX), tmp_path_factory.mktemp("cc")
    settings = Settings(home=home, redis=RedisSettings(url=redis_url, prefix=PREFIX), search=cheap.SEARCH,
                        train=TrainConfig(epochs=2), gate=GateConfig(tolerance=1.0, site_tolerance=1.0,
                                                                     forgetting_budget=1.0))
    ctx = context.build(settings, store, "http://127.0.0.1:0")
    tokens = {"admin": "cc-admin", "ops": "cc-ops"}
    server, url = _serve(store, settings.artifacts(), tokens)
    http = httpx.Client(base_url=url, timeout=120)
    answer = http.post("/v1/models", headers={"Authorization": "Bearer cc-admin"}, json={
        "name": M, "input": {"channels": 1, "height": 16, "width": 16, "classes": 10},
        "approval": ApprovalPolicy(mode="approval").model_dump()})
    assert answer.status_code == 201, answer.text
    try:
        yield _learn(ctx, http, url, Approvers(ctx.registry))
    finally:
        server.should_exit = True


def _learn(ctx: context.Context, http: httpx.Client, url: str, book: Approvers) -> Learnt:
    reg, model, seen = ctx.registry, ctx.registry.get_model(M), dict[str, object]()
    alice, bob = (book.add(n)[1] for n in ("alice", "bob"))
    queue = IngestQueue(reg)
    queue.ensure_group()
    data = {s.name: s for s in digits_sites(seed=4, names=("base", "contrast", "inverted"))}

    def push(site: str, lo: int, hi: int, locked: bool = False) -> str:
        x, y = to_uint8(data[site].x[lo:hi]), data[site].y[lo:hi]
        batch, _ = ingest(reg, ctx.artifacts, queue, ctx.events, M, site, npz_bytes(x, y), Limits(), locked=locked)
        pipeline.process(ctx, pipeline.Worker(), batch.id)
        return batch.id

    def decide(version: int, token: str, verdict: str, reason: str) -> None:
        answer = http.post(f"/v1/models/{M}/versions/{version}/{verdict}", json={"reason": reason},
                           headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text

    locked = {"base": push("base", 160, 230, locked=True)}  # before any version
    train = {"base": push("base", 0, 160)}
    seen["v1"] = (reg.status(M, 1), reg.resolve(M), reg.batches.state(train["base"]).status)
    train["contrast"] = push("contrast", 0, 160)  # waits: v1 is not decided
    seen["blocked"] = ([v.version.number for v in reg.list_versions(M)], reg.batches.state(train["contrast"]).status)
    decide(1, alice, "approve", "base locked-set figures within the protocol")
    seen["approved"] = (reg.resolve(M), reg.batches.state(train["base"]).status)
    pipeline.update(ctx, pipeline.Worker(), model)  # the waiting contrast batch, now learnt from v1
    locked["contrast"] = push("contrast", 160, 230, locked=True)
    decide(2, bob, "decline", "contrast locked-set accuracy below what the ward needs")
    seen["declined"] = (reg.status(M, 2), reg.resolve(M), reg.batches.state(train["contrast"]).status)
    train["inverted"] = push("inverted", 0, 160)
    decide(3, alice, "approve", "inverted adds a scanner; earlier sites hold")
    rows = {s: {row.tobytes() for row in to_uint8(data[s].x[160:230])} for s in locked}
    trained = {s: {row.tobytes() for row in to_uint8(data[s].x[:160])} for s in locked}
    images = {s: rows[s] - trained[s] for s in locked}  # a digit drawn twice alike is no leak: left out
    return Learnt(ctx=ctx, http=http, url=url, ops="cc-ops", train=train, locked=locked, images=images,
                  trained=trained, seen=seen)


def test_an_approval_model_serves_a_version_only_once_approved(learnt: Learnt) -> None:
    reg = learnt.ctx.registry
    assert learnt.seen["v1"] == (VersionStatus.AWAITING_APPROVAL, None, BatchStatus.AWAITING_APPROVAL)
    assert learnt.seen["blocked"] == ([1], BatchStatus.DRIFT_CHECKED)  # the next update waited for the verdict
    assert learnt.seen["approved"] == (1, BatchStatus.PROMOTED)
    assert learnt.seen["declined"] == (VersionStatus.DECLINED, 1, BatchStatus.REJECTED)
    assert {v.version.number: v.status for v in reg.list_versions(M)} == {
        1: VersionStatus.BLESSED, 2: VersionStatus.DECLINED, 3: VersionStatus.PRODUCTION}
    moves = reg.alias_history(M)
    assert [(c.to_version, c.approvers) for c in moves] == [(1, ["alice"]), (3, ["alice"])]
    kinds = [e.kind for e in learnt.ctx.events.read(M)]
    assert kinds.count("approval.requested") == 3 and kinds.count("approval.declined") == 1


def test_no_locked_batch_reaches_training_replay_or_selection(learnt: Learnt) -> None:
    stores, locked_ids = learnt.ctx.stores, set(learnt.locked.values())
    for view in stores.registry.list_versions(M):
        version = view.version
        learnt_ids = stores.learnt_batches(version)
        assert not locked_ids & set(learnt_ids), version.number
        memory = parts.get_replay(stores.artifacts, version.artifacts, stores.images(stores.registry.get_model(M)))
        assert {f"replay/{s}" for s in memory.sites} <= set(version.artifacts)
        for site, (x, _) in ((s, memory.arrays(s)) for s in memory.sites):
            kept = {row.tobytes() for row in x}
            assert not kept & learnt.images.get(site, set()), f"v{version.number} replays a locked image of {site}"
        by_site = scores.batches_by_site(stores, learnt_ids)
        heldout = {site: sum(len(stores.registry.batches.get(b).heldout_index) for b in ids)
                   for site, ids in by_site.items()}
        calibration = version_calibration(stores.artifacts, version)
        assert calibration is not None and {s: c.samples for s, c in calibration.sites.items()} == heldout
        stored = scores.from_bytes(stores.artifacts.get(version.artifacts[Artifact.SCORES.value]))
        assert {s: v.heldout for s, v in stored.items()} == {s: scores.heldout_digest(i) for s, i in by_site.items()}
        gate = stores.registry.reports.get_gate(view.gate_report_id or "")
        assert {line.site: line.samples for line in gate.sites} == heldout
    replayed = parts.get_replay(stores.artifacts, stores.registry.get_version(M, 3).artifacts,
                                stores.images(stores.registry.get_model(M))).arrays("base")[0]
    assert {row.tobytes() for row in replayed} & learnt.trained["base"]  # the comparison sees what replay keeps


def test_every_version_is_scored_on_every_locked_set(learnt: Learnt) -> None:
    sets = LockedSets(learnt.ctx.registry, M)
    assert sets.sites() == {s: [b] for s, b in sorted(learnt.locked.items())}
    found = sets.scores()
    assert sorted(found) == [(n, s) for n in (1, 2, 3) for s in ("base", "contrast")]
    for (number, site), score in found.items():
        assert score.digest == set_digest([learnt.locked[site]]) and score.figures.samples == 70
        assert score.learnt == (site in learnt.ctx.registry.get_version(M, number).lineage.sites)
    protocol = learnt.http.get(f"/v1/models/{M}/protocol", headers={"Authorization": "Bearer cc-ops"}).json()
    assert {s: p["digest"] for s, p in protocol["current"]["locked"].items()} == {
        s: set_digest([b]) for s, b in learnt.locked.items()}


def test_the_evidence_pack_prints_in_chromium_and_every_figure_is_the_apis(learnt: Learnt) -> None:
    if not os.environ.get("CLREG_TEST_REQUIRE_BROWSER") and not shutil.which(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    headers = {"Authorization": f"Bearer {learnt.ops}"}
    pack = learnt.http.get(f"/v1/models/{M}/versions/3/evidence", headers=headers).json()
    figures, answers = {f["key"]: f for f in pack["figures"]}, dict[str, object]()
    for f in figures.values():  # the JSON's figures against the API's answers
        if f["source"] not in answers:
            answers[f["source"]] = learnt.http.get(f["source"], headers=headers).json()
        assert close(resolve(answers[f["source"]], f["pointer"]), f["value"]), f
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_context(extra_http_headers=headers, viewport={"width": 1200, "height": 1500}).new_page()
        page.goto(f"{learnt.url}/v1/models/{M}/versions/3/evidence?format=html")
        shown = page.eval_on_selector_all("a.fig", "els => els.map(e => [e.dataset.key, e.textContent, "
                                                   "e.getAttribute('href'), e.dataset.pointer])")
        assert {k for k, *_ in shown} == set(figures)
        for key, text, href, pointer in shown:
            assert (text, href, pointer) == (figures[key]["text"], figures[key]["source"], figures[key]["pointer"])
        page.screenshot(path=str(OUTPUT / "evidence-pack.png"))
        if os.environ.get("CLREG_TEST_DOCS_SCREENSHOT"):
            page.screenshot(path=str(DOCS))
        page.pdf(path=str(OUTPUT / "evidence-pack.pdf"), format="A4", print_background=True)
        browser.close()
    pdf = (OUTPUT / "evidence-pack.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", pdf)) >= 1 and len(pdf) > 10_000
