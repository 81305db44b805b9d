"""The daemon's side of the modification protocol (registry/protocol.py): each version is stamped with the protocol
revision it was made under, after the protocol records the gate and search settings this daemon runs with."""

from __future__ import annotations

from typing import Any

from clreg.context import Context
from clreg.registry.protocol import Protocol, Protocols
from clreg.registry.records import Model, ModelVersion


def settings_parts(ctx: Context) -> dict[str, Any]:
    """The protocol parts a daemon's settings hold: the gate's rules and the candidate search."""
    return {"gate": ctx.gate.model_dump(mode="json"), "search": ctx.search.model_dump(mode="json")}


def current(ctx: Context, model: Model) -> Protocol:
    """The protocol in force for an update: a new revision first when this daemon's settings differ from it."""
    return Protocols(ctx.registry, ctx.events).revise(
        model, who="daemon", reason="the gate and candidate search settings the daemon runs with "
                                    "(CLREG_GATE__*, CLREG_SEARCH__*)", **settings_parts(ctx))


def stamp(ctx: Context, model: Model, version: ModelVersion) -> ModelVersion:
    """The version, before it is registered, naming the protocol revision it is made under."""
    revision = current(ctx, model).revision
    return version.model_copy(update={"lineage": version.lineage.model_copy(update={"protocol": revision})})
