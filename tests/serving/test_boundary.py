"""The gateway's edge without the proxy: a bug answers a JSON 500 with a request id (its stack logged),
expected failures are answered without a stack in the log, unknown Hosts are refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from clreg.registry.batches import token_sha256
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.serving.config import ServingConfig
from clreg.serving.gateway import create_app

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")


def _client(store_cfg: StoreConfig, tmp_path: Path, host: str = "127.0.0.1") -> TestClient:
    cfg = ServingConfig(store=store_cfg, artifacts_url=str(tmp_path), ops_token_sha256=token_sha256("ops"))
    return TestClient(create_app(cfg), base_url=f"http://{host}", headers={"Authorization": "Bearer ops"},
                      raise_server_exceptions=False)


def test_a_bug_is_a_json_500_with_a_request_id_and_a_logged_stack(
        registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: RedisRegistry) -> list[str]:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(RedisRegistry, "list_models", broken)
    with caplog.at_level(logging.ERROR):
        answer = _client(store_cfg, tmp_path).get("/v1/models")
    body = answer.json()
    assert answer.status_code == 500 and body["error"] == "internal" and len(body["request_id"]) == 16
    assert "a bug" not in answer.text  # the detail stays in the log
    assert any(body["request_id"] in r.getMessage() and r.exc_info for r in caplog.records)


def test_expected_failures_log_no_stack(registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        missing = _client(store_cfg, tmp_path).get("/v1/models/nobody/aliases")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert not [r for r in caplog.records if r.exc_info]


def test_a_foreign_host_is_refused(registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path) -> None:
    answer = _client(store_cfg, tmp_path, host="evil.example").get("/healthz")
    assert (answer.status_code, answer.json()["error"]) == (400, "bad_host")
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert _client(store_cfg, tmp_path, host="localhost:8000").get("/healthz").json() == {"status": "ok"}
