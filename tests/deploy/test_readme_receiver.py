"""The documented webhook receiver (docs/operations/integrations.md), run as printed against a real delivery from
the dispatcher."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from clreg.dispatch import Dispatcher
from clreg.registry.events import EventLog
from clreg.registry.records import InputSpec, Model
from clreg.registry.store import RedisRegistry
from clreg.registry.webhooks import WebhookConfig, WebhookStore, new_subscription
from tests.monitor.hook import Hook, hook, url  # noqa: F401 (the fixture is used by name)

PAGE = Path(__file__).resolve().parents[2] / "docs" / "operations" / "integrations.md"


def readme_receiver() -> Callable[..., bool]:
    text = PAGE.read_text()
    section = text[text.index("## Webhooks"):text.index("## Prometheus")]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    scope: dict = {}
    exec(compile(code, str(PAGE), "exec"), scope)  # noqa: S102 (our own documentation's example)
    return scope["verified"]


def test_the_readme_receiver_accepts_a_delivery_and_refuses_tampering(registry: RedisRegistry, hook: Hook) -> None:
    verified = readme_receiver()
    registry.create_model(Model(name="cnn", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=8, width=8, classes=3)))
    sub = WebhookStore(registry).add(new_subscription(url(hook), ["gate.failed"], None))
    EventLog(registry).append("cnn", "gate.failed", version=3, reasons=["forgot base"])
    Dispatcher(registry, WebhookConfig(allow=("127.0.0.1",))).run()
    [headers], [body] = hook.headers, hook.raw
    assert verified(sub.secret, headers, body)
    assert not verified(sub.secret, headers, body.replace(b'"version":3', b'"version":4'))
    assert not verified("whsec_" + "x" * 40, headers, body)
    replayed = {**headers, "X-Clreg-Timestamp": str(int(time.time()) - 301)}
    assert not verified(sub.secret, replayed, body)
