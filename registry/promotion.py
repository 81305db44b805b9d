"""The one way the production alias moves: the daemon after a passed gate, an admin through the API, and the
CLI's promote and rollback (which call the API) all come here.

A version that has not passed its gates (a candidate) moves production only with `force`; a rejected or
archived version never does. The alias change, its history line and its alias.moved event are written in
one transaction; a `fence` (the daemon's update lease) makes the move conditional on still holding it.
Given the artifact store, the same transaction records a `site.readiness` alert for every site whose
readiness the move changes (validated before and not now, or the reverse, or a site served for the first time).
"""

from __future__ import annotations

from collections.abc import Sequence

from clreg.registry.artifacts import ArtifactStore, version_calibration
from clreg.registry.connection import StreamEntry
from clreg.registry.errors import Conflict
from clreg.registry.events import EventLog
from clreg.registry.locked import overlaid
from clreg.registry.readiness import SiteReadiness, assess_sites
from clreg.registry.records import SERVABLE, AliasChange, Model, VersionStatus
from clreg.registry.store import RedisRegistry


def promote(registry: RedisRegistry, events: EventLog, model: str, version: int, *, who: str, reason: str,
            force: bool = False, fence: tuple[str, str] | None = None,
            artifacts: ArtifactStore | None = None, approvers: Sequence[str] = (),
            request: str | None = None) -> AliasChange:
    """Point production at `version`; NotFound for an unknown model or version, Conflict for one that may not
    serve (or has not passed its gates, without `force`), LeaseLost when the fence no longer holds.

    An `approval` model's moves come here only from registry/approvals.py, with the `approvers` who allowed it
    and their `request` (a version awaiting approval is promotable then); its other callers ask there first."""
    record = registry.get_model(model)
    status = registry.status(model, version)
    approved = request is not None and status is VersionStatus.AWAITING_APPROVAL
    if status not in SERVABLE and not force and not approved:
        raise Conflict(f"version {version} is {status.value}: it has not passed the gates "
                       "(send \"force\": true to promote a candidate anyway)")
    previous = registry.resolve(model)
    before, after = {}, {}
    if artifacts is not None:
        before, after = (readiness(registry, artifacts, record, n) for n in (previous, version))

    def audit(change: AliasChange) -> list[StreamEntry]:
        entries = events.alias_moved(change, forced=force)
        if change.from_version == previous:  # else another move came between: its figures are not ours
            for site, now_ in after.items():
                then = before.get(site)
                if then is None or then.validated != now_.validated:
                    entries += events.entries(model, "site.readiness", site=site, version=version,
                                              validated=now_.validated, reasons=now_.reasons,
                                              was=None if then is None else then.validated)
        return entries

    return registry.promote(model, version, who=who, reason=reason, fence=fence, audit=audit, approvers=approvers,
                            request=request)


def readiness(registry: RedisRegistry, artifacts: ArtifactStore, model: Model,
              number: int | None) -> dict[str, SiteReadiness]:
    """Every site's readiness under a version (None: no version), judged on its locked set where it has one."""
    if number is None:
        return {}
    calibration = version_calibration(artifacts, registry.get_version(model.name, number))
    return assess_sites(overlaid(registry, calibration, model.name, number), model.readiness, model.task_metric)
