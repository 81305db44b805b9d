"""Release notes and the evidence pack over HTTP (registry/release.py, registry/evidence.py), the locked sets' scores
they cite, and the operator's own text in a release note.

No `from __future__ import annotations` here: FastAPI must see the real dependency types of the routes.
"""

import hashlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from clreg.registry.errors import NotFound
from clreg.registry.evidence import pack
from clreg.registry.locked import LockedSets
from clreg.registry.records import Name
from clreg.registry.release import Note, Notes, Sources, release_note
from clreg.serving.console import TEMPLATES
from clreg.serving.services import Admin, Reader, Svc

Number = Annotated[int, Path(ge=1, le=2**53)]
Format = Literal["json", "html"]
router = APIRouter()


class NewNote(BaseModel):
    text: str = Field(min_length=1, max_length=20_000, description="the operator's words in the release note")


def pack_json(found: dict[str, Any]) -> bytes:
    """The pack as the `.json` beside its page: sorted keys, so its sha256 (printed on the page) is reproducible."""
    return json.dumps(found, sort_keys=True, indent=1, default=str).encode()


def render(found: dict[str, Any]) -> str:
    """The pack as one self-contained page (templates/evidence.html), naming the digest of its JSON."""
    digest = hashlib.sha256(pack_json(found)).hexdigest()
    return TEMPLATES.env.get_template("evidence.html").render(p=found, digest=digest)


@router.get("/v1/models/{name}/versions/{number}/evidence", response_model=None)
def evidence(name: Name, number: Number, svc: Svc, _: Reader, format: Format = "json") -> dict[str, Any] | HTMLResponse:  # noqa: A002
    """The evidence pack from version 1 to this one, along the PCCP headings; `format=html`: one
    self-contained, printable page whose every figure links to its record."""
    found = pack(svc.registry, svc.artifacts, svc.events, name, number)
    return HTMLResponse(render(found)) if format == "html" else found


@router.get("/v1/models/{name}/versions/{number}/release-note")
def note(name: Name, number: Number, svc: Svc, _: Reader) -> dict[str, Any]:
    """The version's release note: data added, the search's choice, gate and locked-set figures against the
    protocol, calibration, shadow agreement, approvals and moves, the operator's text."""
    reg = svc.registry
    src = Sources(reg, svc.artifacts, svc.events, reg.get_model(name))
    view = next((v for v in reg.list_versions(name) if v.version.number == number), None)
    if view is None:
        raise NotFound(f"model {name!r} has no version {number}")
    return {**release_note(src, view), "figures": src.figures.items}


@router.put("/v1/models/{name}/versions/{number}/note")
def write_note(name: Name, number: Number, body: NewNote, svc: Svc, who: Admin) -> dict[str, Any]:
    """Set the operator's own text of a version's release note (who and when are kept with it)."""
    svc.registry.get_version(name, number)
    written = Note(text=body.text, who=who)
    Notes(svc.registry, name).put(number, written)
    return written.model_dump(mode="json")


@router.get("/v1/models/{name}/locked")
def locked(name: Name, svc: Svc, _: Reader) -> dict[str, Any]:
    """The model's locked test sets (site -> digest and batches) and every version's score on each."""
    svc.registry.get_model(name)
    sets = LockedSets(svc.registry, name)
    scores: dict[str, dict[str, Any]] = {}
    for (version, site), score in sets.scores().items():
        scores.setdefault(str(version), {})[site] = score.model_dump(mode="json")
    return {"sets": {s: {"digest": d, "batches": sets.sites()[s]} for s, d in sets.digests().items()},
            "scores": scores}
