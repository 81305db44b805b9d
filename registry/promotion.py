"""The one way the production alias moves: the daemon after a passed gate, an admin through the API, and the
CLI's promote and rollback (which call the API) all come here.

A version that has not passed its gates (a candidate) moves production only with `force`; a rejected or
archived version never does. The alias change, its history line and its alias.moved event are written in
one transaction; a `fence` (the daemon's update lease) makes the move conditional on still holding it.
"""

from __future__ import annotations

from registry.errors import Conflict
from registry.events import EventLog
from registry.records import SERVABLE, AliasChange
from registry.store import RedisRegistry


def promote(registry: RedisRegistry, events: EventLog, model: str, version: int, *, who: str, reason: str,
            force: bool = False, fence: tuple[str, str] | None = None) -> AliasChange:
    """Point production at `version`; NotFound for an unknown model or version, Conflict for one that may not
    serve (or has not passed its gates, without `force`), LeaseLost when the fence no longer holds."""
    registry.get_model(model)
    status = registry.status(model, version)
    if status not in SERVABLE and not force:
        raise Conflict(f"version {version} is {status.value}: it has not passed the gates "
                       "(send \"force\": true to promote a candidate anyway)")
    return registry.promote(model, version, who=who, reason=reason, fence=fence,
                            audit=lambda change: events.alias_moved(change, forced=force))
