"""Webhooks through the real gateway and the daemon's dispatcher, to receivers started here.

Every delivery is signed and the receiver checks it; a tampered body is refused; a receiver that fails three
times gets the event once after the retries; a subscription to alias.moved gets nothing else; a target outside
the allow-list is refused with 422 and nothing is stored.
"""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from clreg import context
from clreg.cli import app
from clreg.client import ApiError, Client, npz_bytes
from clreg.daemon import Daemon
from clreg.dispatch import Dispatcher
from clreg.embedded import Stack
from clreg.registry.events import EventLog
from clreg.registry.records import Lineage, ModelVersion
from clreg.registry.store import RedisRegistry
from clreg.registry.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookConfig
from tests.monitor.hook import Hook, hook, url  # noqa: F401 (the fixture is used by name)

pytestmark = pytest.mark.integration
MODEL = "hooked"


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    c = Client(stack.url, stack.admin_token)
    c.wait_ready()
    c.create_model(MODEL, "clreg.learner.models:small_cnn", (1, 8, 8), classes=3)
    return c


def _dispatcher(stack: Stack, **cfg: object) -> Dispatcher:
    base = stack.settings.webhook.model_dump()
    return Dispatcher(RedisRegistry(stack.store), WebhookConfig(**{**base, **cfg}))


def _run_until(dispatcher: Dispatcher, done: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        dispatcher.run()
        time.sleep(0.05)


def _mine(client: Client, sub_id: str, **query: object) -> list[dict]:
    return client.get("/v1/webhooks/deliveries", subscription=sub_id, **query)


def test_deliveries_are_signed_and_a_tampered_one_is_refused(stack: Stack, client: Client, hook: Hook) -> None:
    sub = client.subscribe(url(hook), ["batch.received"], MODEL, "intake feed")
    hook.secret = sub["secret"]
    token = client.add_site("hook-site")["token"]
    pushed = client.push("hook-site", token, npz_bytes(np.zeros((6, 8, 8), np.uint8),
                                                       np.array([0, 1, 2, 0, 1, 2])), MODEL)
    _run_until(_dispatcher(stack), lambda: hook.bodies)
    [body], [headers] = hook.bodies, hook.headers
    assert hook.refused == []  # the receiver verified the signature
    assert body["subscription"] == sub["id"] and body["event"]["kind"] == "batch.received"
    assert body["event"]["model"] == MODEL and body["event"]["data"]["batch"] == pushed["batch_id"]
    assert headers[DELIVERY_HEADER] == body["delivery"] and headers[EVENT_HEADER] == "batch.received"
    [delivery] = _mine(client, sub["id"])
    assert delivery["id"] == body["delivery"] and delivery["status"] == "delivered" and delivery["attempts"] == 1

    raw = json.dumps(body).encode()
    tampered = raw.replace(pushed["batch_id"].encode(), b"0" * 64)
    answer = httpx.post(url(hook), content=tampered, headers={
        TIMESTAMP_HEADER: headers[TIMESTAMP_HEADER], SIGNATURE_HEADER: headers[SIGNATURE_HEADER]})
    assert answer.status_code == 401 and hook.refused == [tampered] and len(hook.bodies) == 1


def test_a_receiver_failing_three_times_gets_the_event_once(stack: Stack, client: Client, hook: Hook) -> None:
    sub = client.subscribe(url(hook), ["gate.failed"], MODEL)
    hook.secret, hook.statuses = sub["secret"], [500, 503, 502]
    event = EventLog(RedisRegistry(stack.store)).append(MODEL, "gate.failed", version=7, reasons=["forgot base"])
    dispatcher = _dispatcher(stack, retries=5, backoff_s=0.05)
    _run_until(dispatcher, lambda: _mine(client, sub["id"], status="delivered"))
    for _ in range(10):  # later runs send nothing more
        dispatcher.run()
    assert [h[DELIVERY_HEADER] for h in hook.headers] == [f"{sub['id']}.{event.id}"] * 4  # 3 failed, 1 accepted
    assert hook.statuses == [] and hook.refused == []
    [delivery] = _mine(client, sub["id"])
    assert delivery["status"] == "delivered" and delivery["attempts"] == 4 and delivery["last_status"] == 200


def test_after_the_last_retry_a_delivery_is_failed_and_listed(stack: Stack, client: Client, hook: Hook) -> None:
    sub = client.subscribe(url(hook), ["update.failed"], MODEL)
    hook.statuses = [500] * 10
    EventLog(RedisRegistry(stack.store)).append(MODEL, "update.failed", batches=[], error="boom")
    dispatcher = _dispatcher(stack, retries=2, backoff_s=0.05)
    _run_until(dispatcher, lambda: _mine(client, sub["id"], status="failed"))
    [failed] = _mine(client, sub["id"], status="failed")
    assert failed["attempts"] == 3 and failed["last_status"] == 500 and failed["last_error"] == "answered 500"
    assert len(hook.bodies) == 3
    env = {"CLREG_HOME": str(stack.settings.home), "CLREG_SERVE__PORT": str(stack.settings.serve.port)}
    out = CliRunner().invoke(app, ["webhooks", "deliveries", "--subscription", sub["id"], "--status", "failed",
                                   "--json"], env=env)
    assert out.exit_code == 0, out.output
    assert [d["id"] for d in json.loads(out.output)] == [failed["id"]]


def test_a_subscription_to_alias_moved_gets_only_alias_moves(stack: Stack, client: Client, hook: Hook) -> None:
    sub = client.subscribe(url(hook), ["alias.moved"], MODEL)
    hook.secret = sub["secret"]
    reg, events = RedisRegistry(stack.store), EventLog(RedisRegistry(stack.store))
    for kind in ("drift.alert", "gate.passed", "update.finished", "serving.failed"):
        events.append(MODEL, kind, version=1)
    numbers = [reg.register_version(ModelVersion(model=MODEL, number=1, lineage=Lineage())).number for _ in range(2)]
    for n in numbers:  # the store's real alias move, its audit event in the same transaction (staging: no replica
        reg.promote(MODEL, n, who="test", reason=f"to {n}", alias="staging", audit=events.alias_moved)  # loads it)
    _run_until(_dispatcher(stack), lambda: len(hook.bodies) >= 2)
    time.sleep(0.3)
    _dispatcher(stack).run()
    kinds = [b["event"]["kind"] for b in hook.bodies]
    assert kinds == ["alias.moved", "alias.moved"] and hook.refused == []
    # sent in parallel, so they may arrive in any order: the event id (a stream id) orders them
    ordered = sorted(hook.bodies, key=lambda b: tuple(map(int, b["event"]["id"].split("-"))))
    assert [b["event"]["data"]["to"] for b in ordered] == numbers


def test_targets_outside_the_allow_list_are_refused(stack: Stack, client: Client) -> None:
    before = client.get("/v1/webhooks")
    for target in ("http://10.9.8.7/hook", "http://169.254.169.254/latest", "file:///etc/passwd"):
        with pytest.raises(ApiError) as err:
            client.subscribe(target, ["*"])
        assert err.value.status == 422 and err.value.code == "target_not_allowed", err.value
    with pytest.raises(ApiError) as err:
        client.subscribe("http://127.0.0.1:9/x", ["alias.move"])
    assert err.value.status == 422 and "alias.move" in err.value.detail
    ops = Client(stack.url, token=stack.ops_token)
    with pytest.raises(ApiError) as err:
        ops._call("POST", "/v1/webhooks", ops.token, json={"url": "http://127.0.0.1:9/x", "events": ["*"]})
    assert err.value.status == 403
    assert client.get("/v1/webhooks") == before
    assert all("secret" not in s for s in ops.get("/v1/webhooks"))


def test_ping_is_signed_and_reports_the_answer(stack: Stack, client: Client, hook: Hook) -> None:
    sub = client.subscribe(url(hook), ["*"], None)
    hook.secret = sub["secret"]
    assert client.ping_webhook(sub["id"]) == {"delivered": True, "status": 200, "error": ""}
    [body] = hook.bodies
    assert body["event"]["kind"] == "webhook.ping" and hook.headers[0][EVENT_HEADER] == "webhook.ping"
    hook.statuses = [410]
    assert client.ping_webhook(sub["id"]) == {"delivered": False, "status": 410, "error": "answered 410"}
    client.unsubscribe(sub["id"])
    with pytest.raises(ApiError) as err:
        client.ping_webhook(sub["id"])
    assert err.value.status == 404


def test_the_daemon_delivers_on_its_schedule(stack: Stack, client: Client, hook: Hook) -> None:
    sub = client.subscribe(url(hook), ["retention.archived"], MODEL)
    ctx = context.build(stack.settings, stack.store, stack.url)
    daemon = Daemon(ctx)
    job = daemon.scheduler.get_job("webhooks")
    assert job.func == daemon.dispatcher.run and job.trigger.interval.total_seconds() == 0.2
    daemon.scheduler.start()
    try:
        EventLog(ctx.registry).append(MODEL, "retention.archived", versions=[1])
        deadline = time.monotonic() + 10
        while not hook.bodies and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        daemon.scheduler.shutdown(wait=True)
    assert [b["event"]["kind"] for b in hook.bodies] == ["retention.archived"]
    assert _mine(client, sub["id"])[0]["status"] == "delivered"


def test_the_cli_subscribes_tests_and_removes(stack: Stack, client: Client, hook: Hook) -> None:
    env = {"CLREG_HOME": str(stack.settings.home), "CLREG_SERVE__PORT": str(stack.settings.serve.port)}
    runner = CliRunner()
    added = runner.invoke(app, ["webhooks", "add", url(hook), "--event", "update.finished", "--model", MODEL,
                                "--json"], env=env)
    assert added.exit_code == 0, added.output
    sub = json.loads(added.output)
    hook.secret = sub["secret"]
    listed = runner.invoke(app, ["webhooks", "list", "--json"], env=env)
    assert [s for s in json.loads(listed.output) if s["id"] == sub["id"]] == [
        {k: v for k, v in sub.items() if k != "secret"}]
    pinged = runner.invoke(app, ["webhooks", "test", sub["id"]], env=env)
    assert pinged.exit_code == 0 and "answered 200" in pinged.output and hook.refused == []
    hook.statuses = [500]  # the next delivery fails once and waits for its retry ...
    EventLog(RedisRegistry(stack.store)).append(MODEL, "update.finished", version=2)
    dispatcher = _dispatcher(stack, backoff_s=60.0)
    _run_until(dispatcher, lambda: [d["attempts"] for d in _mine(client, sub["id"])] == [1])
    removed = runner.invoke(app, ["webhooks", "remove", sub["id"]], env=env)
    assert removed.exit_code == 0 and sub["id"] not in [s["id"] for s in client.get("/v1/webhooks")]
    dispatcher.deliver(at=time.time() + 120)  # ... its retry comes due after the removal
    [gone] = _mine(client, sub["id"])
    assert gone["status"] == "failed" and gone["last_error"] == "the subscription was removed"
    assert len(hook.bodies) == 2  # the ping and the first try: nothing after the removal
