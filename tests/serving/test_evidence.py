"""The evidence pack and release notes on the real gateway app (no Ray), for a model of three sites built as the
pipeline assembles versions (tests/serving/evidence_model.py): the pack follows the PCCP headings from v1 to N, every
figure equals the value at its pointer in the API answer it links to, the HTML page links every figure to that source
and names the sha256 of its JSON, `clreg report` writes both files, and the locked set never reached a version."""

from __future__ import annotations

import hashlib
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from clreg import context
from clreg.cli import app
from clreg.embedded import secrets
from clreg.registry.store import RedisRegistry, StoreConfig
from clreg.settings import GateConfig, RedisSettings, Settings
from tests.clreg.test_models_create import gateway  # noqa: F401 (the fixture is used by name)
from tests.serving.evidence_model import SITES, Built, M, build, close, resolve

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")


class Figs(HTMLParser):
    """Every <a class="fig"> of a page: (data-key, href, data-pointer, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, str]] = []
        self._open: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "a" and a.get("class") == "fig":
            self._open = {**a, "text": ""}

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            self.found.append(self._open)
            self._open = None


@pytest.fixture
def built(gateway: Path, registry: RedisRegistry, store_cfg: StoreConfig, tmp_path: Path) -> tuple[Built, httpx.Client]:
    settings = Settings(home=tmp_path / "daemon", redis=RedisSettings(url=store_cfg.url, prefix=store_cfg.prefix),
                        artifacts_url=str(tmp_path / "artifacts"),
                        gate=GateConfig(tolerance=1.0, site_tolerance=1.0, forgetting_budget=1.0))
    ctx = context.build(settings, store_cfg, "http://127.0.0.1:0")
    http = httpx.Client(base_url=f"http://127.0.0.1:{os.environ['CLREG_SERVE__PORT']}",
                        headers={"Authorization": f"Bearer {secrets(gateway)['ops']}"}, timeout=60)
    return build(ctx), http


def test_every_figure_of_the_pack_is_the_apis_and_links_to_it(built: tuple[Built, httpx.Client]) -> None:
    b, http = built
    found = http.get(f"/v1/models/{M}/versions/3/evidence").json()
    assert found["headings"] == ["Description of the modifications", "Modification protocol", "Impact assessment",
                                 "Version control and traceability"]
    assert [(m["version"], m["status"]) for m in found["modifications"]] == [
        (1, "blessed"), (2, "declined"), (3, "production")]
    figures = found["figures"]
    assert len(figures) > 50 and len({f["key"] for f in figures}) == len(figures)
    answers: dict[str, object] = {}
    for f in figures:
        if f["source"] not in answers:
            answers[f["source"]] = http.get(f["source"]).json()
        assert close(resolve(answers[f["source"]], f["pointer"]), f["value"]), f
    kinds = {f["key"].split(".")[1] for f in figures if f["key"].startswith("v")}
    assert {"batch", "search", "gate", "locked", "calibration"} <= kinds

    notes = {n["version"]: n for n in found["release_notes"]}
    assert [d["approver"]["value"] for r in notes[3]["approvals"] for d in r["decisions"]] == ["alice", "bob"]
    assert notes[2]["approvals"][0]["decisions"][0]["reason"] == "contrast locked-set accuracy too low"
    assert notes[3]["note"]["text"].startswith("Adds the inverted") and notes[1]["protocol"]["older"]
    assert set(notes[3]["locked"]) == {"contrast"} and notes[3]["readiness"]["contrast"]["judged_on"] == "locked"
    first = sorted(s for s, r in notes[1]["readiness"].items() if r["validated"])
    assert found["impact"][0]["validated_gained"] == first and set(notes[1]["readiness"]) == {"base", "contrast"}
    assert "approval" in found["protocol"]["current"]["changed"]
    for version in found["traceability"]:  # the locked batch reached no version
        assert b.locked not in version["batches"]
    moves = [(m["action"], m["to_version"]) for n in found["release_notes"] for m in n["moves"]]
    assert ("moved", 3) in moves and ("declined", 2) in moves

    page = http.get(f"/v1/models/{M}/versions/3/evidence", params={"format": "html"}).text
    parser = Figs()
    parser.feed(page)
    by_key = {f["key"]: f for f in figures}
    assert {a["data-key"] for a in parser.found} == set(by_key)  # every figure on the page, once or more
    for a in parser.found:
        f = by_key[a["data-key"]]
        assert (a["text"], a["href"], a["data-pointer"], a["title"]) == (f["text"], f["source"], f["pointer"],
                                                                         f["record"])
    for heading in found["headings"]:
        assert heading in page


def test_clreg_report_writes_the_page_and_the_json_it_names(built: tuple[Built, httpx.Client], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", M, "--version", "2", "--out", str(tmp_path / "pack"), "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)
    data, page = Path(written["json"]).read_bytes(), Path(written["html"]).read_text()
    assert hashlib.sha256(data).hexdigest() in page and "<script" not in page
    pack = json.loads(data)
    assert pack["version"] == 2 and [n["version"] for n in pack["release_notes"]] == [1, 2]
    note = CliRunner().invoke(app, ["note", M, "2", "Declined: see the locked-set figures."])
    assert note.exit_code == 0, note.output
    _, http = built
    answered = http.get(f"/v1/models/{M}/versions/2/release-note").json()
    assert answered["note"]["text"] == "Declined: see the locked-set figures." and answered["status"] == "declined"
    assert "declined" in answered["summary"] and set(answered["locked"]) == {"contrast"}


def test_every_site_has_a_locked_or_held_out_verdict(built: tuple[Built, httpx.Client]) -> None:
    _, http = built
    locked = http.get(f"/v1/models/{M}/locked").json()
    assert set(locked["sets"]) == {"contrast"} and sorted(locked["scores"]) == ["1", "2", "3"]
    note = http.get(f"/v1/models/{M}/versions/3/release-note").json()
    assert set(note["readiness"]) == set(SITES) - {"contrast"} | {"contrast"}


def test_the_console_serves_the_pack_to_a_session_and_links_it_from_the_model_page(
        built: tuple[Built, httpx.Client], gateway: Path) -> None:
    _, http = built
    console = httpx.Client(base_url=str(http.base_url), timeout=60)
    assert console.get(f"/ui/models/{M}/versions/3/evidence").status_code == 303  # no session: sign in first
    assert console.post("/ui/login", data={"token": secrets(gateway)["ops"]}).status_code in (200, 303)
    page = console.get(f"/ui/models/{M}/versions/3/evidence")
    assert page.status_code == 200 and "Evidence pack: pccp, versions 1 to 3" in page.text
    assert f"/ui/models/{M}/versions/2/evidence" in console.get(f"/ui/models/{M}").text
