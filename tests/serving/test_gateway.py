"""The HTTP surface through the real Serve proxy: auth, refusals that leave nothing behind, predict errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from clreg.client import ApiError, Client, npz_bytes
from clreg.embedded import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    c = Client(stack.url, stack.admin_token)
    c.wait_ready()
    c.create_model("gw", "learner.models:small_cnn", (1, 8, 8), classes=3)
    return c


@pytest.fixture(scope="module")
def token(client: Client) -> str:
    return client.add_site("gw-site")["token"]


def _raw(x: np.ndarray | None = None, y: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in (("x", x), ("y", y)) if v is not None})
    return buf.getvalue()


def _state(stack: Stack) -> tuple[set, set]:
    import redis

    keys = set(redis.Redis.from_url(stack.redis_url).keys("*"))
    files = {p for p in Path(stack.settings.artifacts()).rglob("*") if p.is_file()}
    return keys, files


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        (b"PK\x03\x04 not really", 400, "malformed_batch", "npz"),
        (_raw(np.zeros((4, 9, 8), np.uint8), np.zeros(4, int)), 422, "batch_mismatch", "shape"),
        (_raw(np.full((4, 8, 8), np.nan, np.float32), np.zeros(4, int)), 422, "batch_mismatch", "NaN"),
        (_raw(np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 2, 5])), 422, "batch_mismatch", "outside 0..2"),
    ],
)
def test_malformed_batches_get_4xx_and_leave_nothing(stack: Stack, client: Client, token: str, body: bytes,
                                                     status: int, code: str, words: str) -> None:
    before = _state(stack)
    with pytest.raises(ApiError) as err:
        client.push("gw-site", token, body, "gw")
    assert (err.value.status, err.value.code) == (status, code) and words in err.value.detail
    assert _state(stack) == before


def test_tokens_are_scoped_and_content_type_checked(stack: Stack, client: Client, token: str) -> None:
    good = npz_bytes(np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 2, 0]))
    other = client.add_site("gw-other")["token"]
    for site, tok, status in (("gw-site", None, 401), ("gw-site", other, 403), ("nobody", token, 401)):
        with pytest.raises(ApiError) as err:
            client.push(site, tok, good, "gw")
        assert err.value.status == status
    r = httpx.post(f"{stack.url}/v1/sites/gw-site/batches", params={"model": "gw"}, content=good,
                   headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    with pytest.raises(ApiError) as err:
        Client(stack.url, admin_token=token).promote("gw", 1, "not an admin")
    assert err.value.status == 403


def test_duplicate_push_answers_200_with_the_same_id(client: Client, token: str) -> None:
    body = npz_bytes(np.full((6, 8, 8), 7, np.uint8), np.array([0, 1, 2, 0, 1, 2]))
    first = client.push("gw-site", token, body, "gw")
    second = client.push("gw-site", token, body, "gw")
    assert first["status"] == "accepted" and second["status"] == "duplicate"
    assert first["batch_id"] == second["batch_id"]
    site = next(s for s in client.get("/v1/sites") if s["name"] == "gw-site")
    assert "token_sha256" not in site
    assert site["models"] == {"gw": {"batches": 1, "samples": 6, "class_counts": [2, 2, 2],
                                     "prevalence": pytest.approx([1 / 3] * 3)}}


def test_predict_refuses_until_a_version_is_served(stack: Stack, client: Client) -> None:
    r = httpx.post(f"{stack.url}/v1/predict", params={"model": "gw"}, json={"inputs": np.zeros((1, 8, 8)).tolist()})
    assert r.status_code == 503 and r.json()["error"] == "not_ready"
    r = httpx.get(f"{stack.url}/metrics")
    assert r.status_code == 200 and "clreg_ingest_backlog" in r.text
    assert httpx.get(f"{stack.url}/healthz").json() == {"status": "ok"}


def test_cli_lists_sites_with_their_prevalence(stack: Stack, client: Client, token: str) -> None:
    from typer.testing import CliRunner

    from clreg.cli import app

    def counts() -> list[int]:
        site = next(s for s in client.get("/v1/sites") if s["name"] == "gw-site")
        return site["models"].get("gw", {}).get("class_counts", [0, 0, 0])

    before = counts()
    client.push("gw-site", token, npz_bytes(np.full((8, 8, 8), 3, np.uint8), np.array([0, 0, 0, 0, 0, 2, 2, 1])), "gw")
    after = [a + b for a, b in zip(before, [5, 1, 2], strict=True)]
    assert counts() == after
    env = {"CLREG_HOME": str(stack.settings.home), "CLREG_SERVE__PORT": str(stack.settings.serve.port)}
    table = CliRunner().invoke(app, ["sites", "list"], env=env)
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if "gw-site" in line)
    shares = " ".join(f"{k}:{n / sum(after):.2f}" for k, n in enumerate(after))
    assert f" {sum(after)} " in row and shares in row
    listed = json.loads(CliRunner().invoke(app, ["sites", "list", "--json"], env=env).output)
    assert next(s for s in listed if s["name"] == "gw-site")["models"]["gw"]["class_counts"] == after
