"""Webhook signatures, the target allow-list, and the subscription and delivery store on a real Redis."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from clreg.registry.errors import NotFound, TargetRefused
from clreg.registry.events import EventLog
from clreg.registry.records import Event
from clreg.registry.store import RedisRegistry
from clreg.registry.webhooks import (
    Delivery,
    DeliveryStatus,
    Subscription,
    WebhookConfig,
    WebhookStore,
    check_target,
    new_subscription,
    sign,
    verify,
)

SECRET = "whsec_test"
ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)


def test_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    # printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
    expected = "sha256=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
    assert sign(SECRET, 1700000000, b'{"a":1}') == expected


@pytest.mark.parametrize(("secret", "timestamp", "body", "at", "ok"), [
    (SECRET, "1700000000", b'{"a":1}', 1700000100.0, True),
    (SECRET, "1700000000", b'{"a":2}', 1700000100.0, False),  # tampered body
    ("whsec_other", "1700000000", b'{"a":1}', 1700000100.0, False),  # another secret
    (SECRET, "1700000001", b'{"a":1}', 1700000100.0, False),  # timestamp changed after signing
    (SECRET, "1700000000", b'{"a":1}', 1700000400.0, False),  # replayed outside the 300 s tolerance
    (SECRET, "yesterday", b'{"a":1}', 1700000100.0, False),
])
def test_verify_accepts_only_the_signed_body_in_time(secret: str, timestamp: str, body: bytes, at: float,
                                                     ok: bool) -> None:
    signature = sign(SECRET, 1700000000, b'{"a":1}')
    assert verify(secret, timestamp, signature, body, tolerance_s=300, at=at) is ok


@pytest.mark.parametrize(("url", "allow"), [
    ("http://127.0.0.1:9000/hook", ("127.0.0.1",)),
    ("https://10.2.3.4/hook", ("10.0.0.0/8",)),
    ("https://hooks.example.org/x", ("hooks.example.org",)),
    ("https://a.b.example.org/x", ("*.example.org",)),
    ("http://[::1]:80/x", ("::1",)),
    ("http://localhost:8080/x", ("127.0.0.0/8", "::1")),  # a name: every address it resolves to is inside
])
def test_allowed_targets(url: str, allow: tuple[str, ...]) -> None:
    check_target(url, allow)


@pytest.mark.parametrize(("url", "allow", "words"), [
    ("http://10.9.8.7/x", ("127.0.0.1",), "'10.9.8.7' is not allowed"),
    ("http://169.254.169.254/latest/meta-data", (), "lists nothing"),  # cloud metadata, the classic SSRF target
    ("https://example.org/x", ("*.example.org",), "'example.org' is not allowed"),  # the wildcard needs a subdomain
    ("https://evil-example.org/x", ("example.org",), "not allowed"),
    ("ftp://127.0.0.1/x", ("127.0.0.1",), "http:// or https://"),
    ("http:///nohost", ("127.0.0.1",), "with a host"),
    ("http://[::1/x", ("::1",), "with a host"),
    ("http://127.0.0.1:99999999/x", ("127.0.0.1",), "numeric port"),
    ("http://127.0.0.1:port/x", ("127.0.0.1",), "numeric port"),
    ("http://" + "a" * 300 + ".org/x", ("10.0.0.0/8",), "not allowed"),  # an over-long label: no lookup at all
    ("http://no-such-host.invalid/x", ("10.0.0.0/8",), "not allowed"),  # does not resolve: nothing to allow
])
def test_refused_targets(url: str, allow: tuple[str, ...], words: str) -> None:
    with pytest.raises(TargetRefused, match=words.replace("(", r"\(")):
        check_target(url, allow)


def test_allow_list_entries_must_be_hosts_or_networks() -> None:
    with pytest.raises(ValidationError, match="neither a network nor a host name"):
        WebhookConfig(allow=("hooks example org",))
    assert WebhookConfig(allow=("10.0.0.0/8", "*.example.org", "hooks-1.example.org")).allow[1] == "*.example.org"


def test_backoff_doubles_up_to_its_cap() -> None:
    cfg = WebhookConfig(backoff_s=2.0, max_backoff_s=10.0)
    assert [cfg.backoff(n) for n in (1, 2, 3, 4, 5)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_subscriptions_name_known_event_kinds_only() -> None:
    with pytest.raises(ValidationError, match="unknown event kinds \\['alias.move'\\]"):
        new_subscription("http://127.0.0.1/x", ["alias.move"], None)
    sub = new_subscription("http://127.0.0.1/x", ["gate.failed", "alias.moved", "gate.failed"], "cnn")
    assert sub.events == ["alias.moved", "gate.failed"] and sub.secret.startswith("whsec_") and len(sub.secret) > 40
    assert "secret" not in sub.public() and sub.public()["id"] == sub.id


def test_a_subscription_wants_its_kinds_of_its_model_after_it_was_made() -> None:
    sub = Subscription(id="wh-000000000001", url="http://x", events=["alias.moved"], model="cnn", secret="s" * 20,
                       created_at=100.0)
    every = sub.model_copy(update={"events": ["*"], "model": None})
    event = Event(model="cnn", kind="alias.moved", at=101.0)
    assert sub.wants(event) and every.wants(event)
    assert not sub.wants(event.model_copy(update={"kind": "gate.failed"})) and every.wants(
        event.model_copy(update={"kind": "gate.failed"}))
    assert not sub.wants(event.model_copy(update={"model": "other"}))
    assert not sub.wants(event.model_copy(update={"at": 99.0}))  # before the subscription existed


def test_store_keeps_subscriptions_with_their_secret(registry: RedisRegistry) -> None:
    store = WebhookStore(registry)
    sub = store.add(new_subscription("http://127.0.0.1/x", ["*"], None))
    assert store.get(sub.id) == sub and store.subscriptions() == [sub]
    store.remove(sub.id)
    with pytest.raises(NotFound):
        store.get(sub.id)
    with pytest.raises(NotFound):
        store.remove(sub.id)


def _deliveries(registry: RedisRegistry, sub: Subscription, n: int) -> list[Delivery]:
    events = [EventLog(registry).append("cnn", "gate.failed", version=i) for i in range(n)]
    return [Delivery(id=f"{sub.id}.{e.id}", subscription=sub.id, url=sub.url, event=e) for e in events]


def test_fan_out_twice_queues_each_delivery_once(registry: RedisRegistry) -> None:
    store = WebhookStore(registry)
    sub = store.add(new_subscription("http://127.0.0.1/x", ["*"], None))
    found = _deliveries(registry, sub, 3)
    store.fan_out("cnn", found[-1].event.id, found)
    store.fan_out("cnn", found[-1].event.id, found)  # a second daemon, or a crash before the cursor moved
    assert store.cursor("cnn") == found[-1].event.id
    assert [d.id for d in store.deliveries()] == [d.id for d in reversed(found)]
    assert store.outcomes() == {"delivered": 0, "failed": 0, "pending": 3}


def test_claimed_deliveries_are_hidden_until_the_claim_runs_out(registry: RedisRegistry) -> None:
    store = WebhookStore(registry)
    sub = store.add(new_subscription("http://127.0.0.1/x", ["*"], None))
    found = _deliveries(registry, sub, 2)
    store.fan_out("cnn", found[-1].event.id, found)
    t = found[-1].created_at + 1
    assert {d.id for d in store.claim(10, claim_s=60, at=t)} == {d.id for d in found}
    assert store.claim(10, claim_s=60, at=t + 1) == []  # another dispatcher gets nothing
    assert len(store.claim(10, claim_s=60, at=t + 61)) == 2  # the claimer died: due again
    done = found[0].model_copy(update={"status": DeliveryStatus.DELIVERED, "attempts": 1})
    store.save(done, None)
    assert [d.id for d in store.claim(10, claim_s=60, at=t + 200)] == [found[1].id]
    assert store.outcomes() == {"delivered": 1, "failed": 0, "pending": 1}
    assert store.deliveries(status=DeliveryStatus.DELIVERED) == [done]


def test_trim_forgets_the_oldest_final_deliveries_only(registry: RedisRegistry) -> None:
    store = WebhookStore(registry)
    sub = store.add(new_subscription("http://127.0.0.1/x", ["*"], None))
    found = _deliveries(registry, sub, 4)
    store.fan_out("cnn", found[-1].event.id, found)
    for d in found[1:]:
        store.save(d.model_copy(update={"status": DeliveryStatus.FAILED}), None)
    assert store.trim(keep=1) == 2  # the oldest is still pending: kept
    assert {d.id for d in store.deliveries()} == {found[0].id, found[3].id}
