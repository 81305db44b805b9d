"""Alert payloads and webhook delivery against a real local HTTP server."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from monitor.alerts import WebhookConfig, alert_payload, post_webhook
from registry.records import ColumnDrift, DriftReport


class Hook(ThreadingHTTPServer):
    """A webhook receiver that answers with scripted statuses (then 200) and keeps every body."""

    statuses: list[int]
    bodies: list[dict]


class Handler(BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(json.loads(body))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook(("127.0.0.1", 0), Handler)
    server.statuses, server.bodies = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server: Hook) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/alerts"


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
