"""A model with three sites' versions built without Ray, for the evidence pack's fast tests: each version is what the
pipeline assembles (weights, scores, calibration, stamped protocol, locked-set scores, gate report), only with an
untrained network of its own instead of a trained one. Site `contrast` also pushed a locked test set; v1 (base) is
approved, v2 (contrast) declined, v3 (inverted, from v1) approved by two approvers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clreg import approving, context, locking, pipeline, protocols, scores
from clreg.calibration import calibrate_version
from clreg.client import npz_bytes
from clreg.gating import gate
from clreg.learner.answer import Answerer
from clreg.learner.models import network_for, weights_to_bytes
from clreg.learner.streams import digits_sites, to_uint8
from clreg.registry.approvals import Approvals, settle
from clreg.registry.artifacts import Artifact
from clreg.registry.batches import Limits, ingest
from clreg.registry.events import IngestQueue
from clreg.registry.records import ApprovalPolicy, InputSpec, Lineage, Model, ModelVersion, Readiness, VersionStatus
from clreg.registry.release import Note, Notes

M = "pccp"
SITES = ("base", "contrast", "inverted")


@dataclass
class Built:
    model: Model
    batches: dict[str, str]  # site -> its training batch
    locked: str  # the locked batch of site contrast


def build(ctx: context.Context) -> Built:
    reg = ctx.registry
    model = Model(name=M, factory="clreg.learner.models:small_cnn", approval=ApprovalPolicy(mode="approval"),
                  readiness=Readiness(accuracy_floor=0.05, ece_limit=1.0),
                  input=InputSpec(channels=1, height=16, width=16, classes=10))
    reg.create_model(model)
    protocols.Protocols(reg, ctx.events).revise(model, who="admin", reason="model created")
    queue = IngestQueue(reg)
    queue.ensure_group()
    data = {s.name: s for s in digits_sites(seed=5, names=SITES)}

    def push(site: str, lo: int, hi: int, locked: bool = False) -> str:
        x, y = data[site].x[lo:hi], data[site].y[lo:hi]
        return ingest(reg, ctx.artifacts, queue, ctx.events, M, site, npz_bytes(to_uint8(x), y), Limits(),
                      locked=locked)[0].id

    batches = {site: push(site, 0, 120) for site in SITES}
    locked = push("contrast", 120, 200, locked=True)
    pipeline.process(ctx, pipeline.Worker(), locked)
    v1 = _version(ctx, model, [batches["base"]], None, 1)
    _decide(ctx, model, v1, [("alice", "approve", "base figures fine")])
    v2 = _version(ctx, model, [batches["contrast"]], v1, 2)
    _decide(ctx, model, v2, [("bob", "decline", "contrast locked-set accuracy too low")])
    model = model.model_copy(update={"approval": ApprovalPolicy(mode="approval", approvers=2)})
    protocols.Protocols(reg, ctx.events).revise(model, who="admin", reason="two approvers from now on", record=True)
    v3 = _version(ctx, model, [batches["inverted"]], v1, 3)
    Notes(reg, M).put(3, Note(text="Adds the inverted-contrast scanner of site inverted.", who="admin"))
    _decide(ctx, model, v3, [("alice", "approve", "inverted ok"), ("bob", "approve", "agreed")])
    return Built(model=model, batches=batches, locked=locked)


def _version(ctx: context.Context, model: Model, ids: list[str], parent: ModelVersion | None,
             seed: int) -> ModelVersion:
    """A version assembled as the pipeline does, around an untrained network of its own."""
    torch.manual_seed(seed)
    weights = ctx.artifacts.put(weights_to_bytes(network_for(model)))
    every = ctx.stores.learnt_batches(parent) + ids
    answerer = Answerer.of(ctx.stores.module(model, weights), None)
    scored = scores.answer(ctx.stores, model, answerer, scores.batches_by_site(ctx.stores, every))
    calibration = calibrate_version(model, scored, seed)
    new_sites = sorted({ctx.registry.batches.get(b).site for b in ids})
    search = [{"settings": {"ewc_lambda": lam}, "chosen": lam == 300.0, "score": round(0.2 + seed / 100 - i / 50, 4),
               "metric": "accuracy"} for i, lam in enumerate((300.0, 3000.0))]
    version = ModelVersion(model=M, number=1, lineage=Lineage(
        parent=parent.number if parent else None, batch_ids=ids, seed=seed, search=search,
        sites=(parent.lineage.sites if parent else []) + new_sites),
        artifacts={Artifact.WEIGHTS.value: weights, Artifact.SCORES.value: ctx.artifacts.put(scores.to_bytes(scored)),
                   Artifact.CALIBRATION.value: ctx.artifacts.put(calibration.model_dump_json().encode())})
    candidate = ctx.registry.register_version(protocols.stamp(ctx, model, version))
    locking.score(ctx.stores, model, [candidate])
    report = gate(ctx.stores, ctx.gate, model, candidate, ctx.stores.production(M))
    ctx.registry.set_status(M, candidate.number, VersionStatus.BLESSED, report.id)
    assert approving.waits(ctx.stores, model, candidate, f"passed gate {report.id}")
    return candidate


def _decide(ctx: context.Context, model: Model, version: ModelVersion, decisions: list[tuple[str, str, str]]) -> None:
    approvals = Approvals(ctx.registry, ctx.events)
    for who, verdict, reason in decisions:
        decided = approvals.decide(M, version.number, who, verdict, reason)  # type: ignore[arg-type]
        settle(ctx.registry, ctx.events, decided, ctx.artifacts)


def resolve(answer: object, pointer: str) -> object:
    """The value at a figure's pointer (dotted; list items by index) in an API answer."""
    for part in pointer.split("."):
        answer = answer[int(part)] if isinstance(answer, list) else answer[part]  # type: ignore[index]
    return answer


def close(a: object, b: object) -> bool:
    """Equal, floats to 1e-12 (both come from the same stored JSON)."""
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, rtol=0, atol=1e-12))
    return a == b
