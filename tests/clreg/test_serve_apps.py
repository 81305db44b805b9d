"""clreg.serve_apps: the Serve applications as import-path builders read their settings from the environment, take
the token digests from it (or the home's tokens), refuse a digest that is not one, and are what Serve can call.
Nothing is deployed: building an application only binds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ray.serve import Application

from clreg import serve_apps
from clreg.home import Home
from clreg.registry.batches import token_sha256
from clreg.serving import deploy
from clreg.settings import Settings

REDIS = "redis://:secret@redis.example:6379/0"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Only this test's CLREG_ settings: a home in tmp_path, an external Redis, no digests yet."""
    for key in os.environ:
        if key.startswith("CLREG_") and not key.startswith("CLREG_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CLREG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLREG_REDIS__URL", REDIS)
    monkeypatch.setenv("CLREG_REDIS__PREFIX", "site-a")
    return monkeypatch


def _payload(app: Application) -> dict:
    """The serving settings an application's replicas are constructed with."""
    return app._bound_deployment.init_args[0]


def test_builders_take_settings_and_digests_from_the_environment(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("CLREG_SERVE__ADMIN_TOKEN_SHA256", token_sha256("admin-token"))
    env.setenv("CLREG_SERVE__OPS_TOKEN_SHA256", token_sha256("ops-token"))
    env.setenv("CLREG_SERVE__REPLICAS", "3")
    env.setenv("CLREG_ARTIFACTS_URL", "s3://bucket/clreg")
    predict, gateway = serve_apps.predict({}), serve_apps.gateway({})
    assert (predict._bound_deployment.name, gateway._bound_deployment.name) == ("ModelServer", "Gateway")
    assert predict._bound_deployment.num_replicas == 3
    for app in (predict, gateway):
        payload = _payload(app)
        assert payload["store"] == {**payload["store"], "url": REDIS, "prefix": "site-a"}
        assert payload["artifacts_url"] == "s3://bucket/clreg"
        assert payload["admin_token_sha256"] == token_sha256("admin-token")
        assert payload["ops_token_sha256"] == token_sha256("ops-token")
    assert not (tmp_path / "home").exists(), "with digests given, no home (and no tokens file) is made"


def test_without_digests_the_homes_tokens_are_served(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As `clreg serve` does on one machine."""
    payload = _payload(serve_apps.gateway({}))
    tokens = Home(tmp_path / "home").secrets()  # made by the build, 0600
    assert payload["admin_token_sha256"] == token_sha256(tokens["admin"])
    assert payload["ops_token_sha256"] == token_sha256(tokens["ops"])


@pytest.mark.parametrize(("admin", "ops"), [
    (token_sha256("a"), ""),  # one without the other
    ("REPLACE-ME-sha256-hex-digest-of-the-admin-token", token_sha256("o")),  # a template's placeholder
    (token_sha256("a").upper(), token_sha256("o")),  # sha256sum prints lower case
    ("admin-token", "ops-token"),  # the tokens themselves
])
def test_a_digest_that_is_not_one_is_refused(env: pytest.MonkeyPatch, admin: str, ops: str) -> None:
    env.setenv("CLREG_SERVE__ADMIN_TOKEN_SHA256", admin)
    env.setenv("CLREG_SERVE__OPS_TOKEN_SHA256", ops)
    with pytest.raises(ValueError, match="sha256 hex digest"):
        serve_apps.predict({})


def test_args_are_refused(env: pytest.MonkeyPatch) -> None:
    """Settings come from the environment only, never from the Serve config (Ray stores and shows it)."""
    with pytest.raises(ValueError, match="takes no args"):
        serve_apps.gateway({"admin_token": "x"})


def test_serve_calls_them_as_builders(env: pytest.MonkeyPatch) -> None:
    """What Serve does with a config's import path: a builder of one parameter, called with the config's args."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    env.setenv("CLREG_SERVE__ADMIN_TOKEN_SHA256", token_sha256("a"))
    env.setenv("CLREG_SERVE__OPS_TOKEN_SHA256", token_sha256("o"))
    for name in deploy.ROUTES:
        app = call_user_app_builder_with_args_if_necessary(getattr(serve_apps, name), {})
        assert isinstance(app, Application)


def test_applications_are_the_routed_ones(env: pytest.MonkeyPatch) -> None:
    """`clreg serve` (deploy.start) and the builders share one construction: the same names and routes."""
    apps = deploy.applications(serve_apps.serving_config(Settings()))
    assert list(apps) == list(deploy.ROUTES) == [deploy.PREDICT_APP, deploy.GATEWAY_APP]
    assert deploy.ROUTES[deploy.PREDICT_APP] == "/v1/predict" and deploy.ROUTES[deploy.GATEWAY_APP] == "/"
