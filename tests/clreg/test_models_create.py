"""`clreg models create --weights FILE` uploads the checkpoint, then registers the model naming its digest."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import uvicorn

from clreg.embedded import secrets
from clreg.learner.zoo import resnet18
from clreg.registry.artifacts import sha256
from clreg.registry.batches import token_sha256
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.serving.config import ServingConfig
from clreg.serving.gateway import create_app
from tests.s3server import free_port


@pytest.fixture
def gateway(registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The gateway app served by uvicorn on the test port, with the tokens of a home the CLI reads; the home."""
    home, port = tmp_path / "home", free_port()  # not the stack's port: the session's stack may be up on it
    tokens = secrets(home)
    cfg = ServingConfig(store=store_cfg, artifacts_url=str(tmp_path / "artifacts"),
                        admin_token_sha256=token_sha256(tokens["admin"]), ops_token_sha256=token_sha256(tokens["ops"]))
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the gateway did not start"
    monkeypatch.setenv("CLREG_HOME", str(home))
    monkeypatch.setenv("CLREG_SERVE__PORT", str(port))
    yield home
    server.should_exit = True
    thread.join(timeout=10)


def test_models_create_uploads_the_weights_then_creates(gateway: Path, registry: RedisRegistry,
                                                         tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clreg.cli import app

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(resnet18(3, 32, 32, 1000).state_dict(), buf)
    path = tmp_path / "resnet18.pth"
    path.write_bytes(buf.getvalue())
    result = CliRunner().invoke(app, ["models", "create", "xray", "--factory", "clreg.learner.models:resnet18",
                                      "--input", "1,32,32", "--classes", "2", "--weights", str(path),
                                      "--normalisation", "0.5,0.25", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    record = registry.get_model("xray")
    assert answer["weights_source"] == record.weights_source == sha256(path.read_bytes())
    assert record.weights == answer["weights"] and record.normalisation is not None
    assert (record.normalisation.mean, record.normalisation.std) == ([0.5], [0.25])
    bad = CliRunner().invoke(app, ["models", "create", "other", "--normalisation", "0.5"])
    assert bad.exit_code != 0 and "means then the stds" in bad.output
