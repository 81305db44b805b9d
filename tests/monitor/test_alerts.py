"""Alert payloads and webhook delivery against a real local HTTP server."""

from __future__ import annotations

import socket

import pytest

from monitor.alerts import WebhookConfig, alert_payload, post_webhook
from registry.records import ColumnDrift, DriftReport
from tests.monitor.hook import Hook, hook, url  # noqa: F401 (the fixture is used by name)


def report() -> DriftReport:
    cols = [
        ColumnDrift(column="img_mean", method="ks", score=1e-9, threshold=4e-4, drifted=True),
        ColumnDrift(column="emb_0", method="ks", score=1e-12, threshold=4e-4, drifted=True),
        ColumnDrift(column="img_std", method="ks", score=0.5, threshold=4e-4, drifted=False),
    ]
    return DriftReport(
        id="r-9", model="cnn", site="site-a", batch_id="cd" * 32, reference_version=2, samples=200,
        columns=cols, drifted_share=2 / 3, feature_drift=True,
        label_drift=ColumnDrift(column="label", method="chisquare_2sample", score=0.4, threshold=0.01, drifted=False),
        embedding_mmd=None, drift=True, created_at=100.0,
    )


def test_alert_payload_names_the_evidence_and_links_the_report() -> None:
    assert alert_payload(report(), "http://x/v1/drift/r-9?format=html") == {
        "kind": "drift",
        "model": "cnn",
        "site": "site-a",
        "batch_id": "cd" * 32,
        "report_id": "r-9",
        "reference_version": 2,
        "samples": 200,
        "verdict": "drift",
        "signals": ["features"],
        "feature_drift": True,
        "top_features": ["emb_0", "img_mean"],
        "drifted_share": 2 / 3,
        "label_drift": {"method": "chisquare_2sample", "score": 0.4, "threshold": 0.01, "drifted": False},
        "embedding_mmd": None,
        "link": "http://x/v1/drift/r-9?format=html",
        "created_at": 100.0,
    }


def test_webhook_delivers_the_payload(hook: Hook) -> None:
    payload = alert_payload(report(), "http://x/r-9")
    assert post_webhook(WebhookConfig(url=url(hook)), payload) is True
    assert hook.bodies == [payload]


def test_webhook_retries_after_a_500(hook: Hook) -> None:
    hook.statuses = [500, 503]
    assert post_webhook(WebhookConfig(url=url(hook), retries=3, backoff_s=0.01), {"a": 1}) is True
    assert hook.bodies == [{"a": 1}] * 3


def test_webhook_gives_up_after_its_retries(hook: Hook) -> None:
    hook.statuses = [500] * 10
    assert post_webhook(WebhookConfig(url=url(hook), retries=2, backoff_s=0.0), {"a": 1}) is False
    assert len(hook.bodies) == 3


def test_webhook_does_not_retry_a_client_error(hook: Hook) -> None:
    hook.statuses = [400]
    assert post_webhook(WebhookConfig(url=url(hook), retries=3, backoff_s=0.0), {"a": 1}) is False
    assert len(hook.bodies) == 1


def test_webhook_survives_a_closed_port_and_no_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = WebhookConfig(url=f"http://127.0.0.1:{port}/", retries=1, backoff_s=0.0, timeout_s=0.5)
    assert post_webhook(cfg, {"a": 1}) is False
    assert post_webhook(WebhookConfig(), {"a": 1}) is False


def test_webhook_url_must_be_http() -> None:
    with pytest.raises(ValueError):
        WebhookConfig(url="ftp://example.org/hook")


def test_a_model_override_routes_its_alerts_elsewhere(hook: Hook) -> None:
    cfg = WebhookConfig(url="http://127.0.0.1:9/default", per_model={"cnn": url(hook)})
    assert cfg.url_for("cnn") == url(hook)
    assert cfg.url_for("other") == "http://127.0.0.1:9/default"
    assert WebhookConfig(per_model={"cnn": url(hook)}).url_for("other") is None
    assert post_webhook(cfg, {"a": 1}, cfg.url_for("cnn")) is True
    assert hook.bodies == [{"a": 1}]
    with pytest.raises(ValueError):
        WebhookConfig(per_model={"cnn": "file:///etc/passwd"})


def test_signals_name_every_test_that_fired() -> None:
    label = ColumnDrift(column="label", method="chisquare_2sample", score=1e-5, threshold=0.01, drifted=True)
    mmd = ColumnDrift(column="embedding", method="mmd", score=0.2, threshold=0.99, drifted=True)
    only_label = report().model_copy(update={"feature_drift": False, "label_drift": label})
    assert alert_payload(only_label, "l")["signals"] == ["label"]
    everything = report().model_copy(update={"label_drift": label, "embedding_mmd": mmd})
    assert alert_payload(everything, "l")["signals"] == ["features", "label", "embedding"]
