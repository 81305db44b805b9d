"""The console's approvals page in a real browser (Playwright driving Debian's chromium) on the gateway app served by
uvicorn (no Ray): an approver signs in, sees the version waiting with its gate verdict, approves it with a reason,
and production moves; the requester's own session has no form; a decline through the page declines the version.
Screenshots go under CLREG_TEST_OUTPUT (default .test-output/console)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from clreg import approving
from clreg.context import Stores
from clreg.embedded import secrets
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.events import EventLog
from clreg.registry.records import ApprovalPolicy, InputSpec, Lineage, Model, ModelVersion, VersionStatus
from clreg.registry.store import RedisRegistry
from tests.clreg.test_models_create import gateway  # noqa: F401 (the fixture is used by name)

CHROMIUM = os.environ.get("CLREG_TEST_CHROMIUM", "/usr/bin/chromium")
OUTPUT = Path(os.environ.get("CLREG_TEST_OUTPUT", ".test-output")) / "console"

if not os.environ.get("CLREG_TEST_REQUIRE_BROWSER"):  # CI sets it: there a missing browser fails the tests
    pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
from playwright.sync_api import Page, sync_playwright  # noqa: E402

M = "ward"


def _sign_in(page: Page, url: str, token: str) -> None:
    page.goto(f"{url}/ui/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/models")


def _blessed(registry: RedisRegistry) -> ModelVersion:
    version = registry.register_version(ModelVersion(model=M, number=1, lineage=Lineage(sites=["s1"])))
    registry.set_status(M, version.number, VersionStatus.BLESSED)
    return version


def test_an_approver_decides_on_the_approvals_page(gateway: Path, registry: RedisRegistry, tmp_path: Path) -> None:
    from clreg.client import Client

    url = f"http://127.0.0.1:{os.environ['CLREG_SERVE__PORT']}"
    model = Model(name=M, factory="clreg.learner.models:small_cnn", approval=ApprovalPolicy(mode="approval"),
                  input=InputSpec(channels=1, height=8, width=8, classes=3))
    registry.create_model(model)
    admin = Client(url, secrets(gateway)["admin"])
    alice, bob = (admin.add_approver(n)["token"] for n in ("alice", "bob"))
    stores = Stores(registry=registry, artifacts=ArtifactStore(str(tmp_path / "a")), events=EventLog(registry))
    approving.waits(stores, model, _blessed(registry), "passed gate g-ward-1")
    second = _blessed(registry)
    Client(url, admin_token=alice).promote(M, second.number, "asked by alice")  # an approver's own request

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_context().new_page()
        _sign_in(page, url, alice)
        page.click("a[href='/ui/approvals']")
        assert page.locator("nav .who").inner_text() == "signed in: approver:alice"
        row = page.locator("#waiting tr[data-request='r-1-gate']")
        assert row.locator(".version").inner_text() == "v1" and row.locator(".requester").inner_text() == "daemon"
        own = page.locator(f"#waiting tr#{M}-v2")
        assert own.locator("form").count() == 0 and "you asked for it" in own.inner_text()
        OUTPUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUTPUT / "approvals.png"), full_page=True)
        row.locator("input[name=reason]").fill("locked-set AUROC within the protocol")
        row.locator("button[value=approve]").click()
        page.wait_for_url("**/ui/approvals**")
        assert registry.resolve(M) == 1 and registry.status(M, 1) is VersionStatus.PRODUCTION
        assert "alice approved: locked-set AUROC within the protocol" in \
            page.locator("#decided tr[data-request='r-1-gate'] .decisions").inner_text()

        page = browser.new_context().new_page()
        _sign_in(page, url, bob)
        page.goto(f"{url}/ui/approvals")
        row = page.locator(f"#waiting tr#{M}-v2")
        row.locator("input[name=reason]").fill("not this week")
        row.locator("button[value=decline]").click()
        page.wait_for_url("**/ui/approvals**")
        assert registry.resolve(M) == 1
        assert page.locator("#waiting tr[data-request]").count() == 0
        page.screenshot(path=str(OUTPUT / "approvals-decided.png"), full_page=True)
        browser.close()
