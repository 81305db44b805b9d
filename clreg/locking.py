"""The daemon's side of locked test sets (registry/locked.py): admit a locked batch, and score versions on them.

A locked batch reaches the daemon through the ingest stream like any other, and `pipeline.process` hands it here
before any other step: it never reaches the drift check, the pending set, an update's training or replay data, the
candidate search's validation data, or the calibration fit. It joins its site's locked set, whose digest the model's
protocol fixes (clreg/protocols.py), and every version is scored on it; each new candidate is scored on every locked
set before its gate (`score`), so its figures are there when approvers decide. Every step is safe to replay.
"""

from __future__ import annotations

import numpy as np

from clreg.calibration import fixed_record
from clreg.context import Stores
from clreg.learner.answer import Answerer
from clreg.learner.evaluate import predict_logits
from clreg.learner.models import to_tensor
from clreg.registry import promotion
from clreg.registry.artifacts import Artifact, version_calibration
from clreg.registry.locked import LockedScore, LockedSets, set_digest
from clreg.registry.protocol import Protocols
from clreg.registry.readiness import SiteReadiness
from clreg.registry.records import Batch, BatchState, BatchStatus, Model, ModelVersion


def admit(stores: Stores, model: Model, batch: Batch) -> None:
    """A locked batch joins its site's locked set; every version is scored on the set; the batch is `locked`."""
    production = stores.registry.resolve(model.name)
    before = promotion.readiness(stores.registry, stores.artifacts, model, production)  # on the sets as they were
    sets = LockedSets(stores.registry, model.name)
    sets.add(batch.id, batch.site)
    fixed = {site: {"digest": set_digest(ids), "batch_ids": ids} for site, ids in sets.sites().items()}
    Protocols(stores.registry, stores.events).revise(  # the set's digest, fixed in the protocol
        model, who=f"site:{batch.site}", reason=f"locked test set of site {batch.site}: batch {batch.id[:12]} added",
        locked=fixed)
    ids = sets.sites()[batch.site]
    versions = [v.version for v in stores.registry.list_versions(model.name)]
    score(stores, model, versions)
    _readiness_alerts(stores, model, production, before)
    stores.registry.batches.set_state(batch.id, BatchState(
        status=BatchStatus.LOCKED, detail=f"a locked test set of site {batch.site} ({len(ids)} batch"
                                         f"{'es' if len(ids) > 1 else ''}): never learnt; every version is scored "
                                         f"on it ({len(versions)} so far)"))
    stores.events.append(model.name, "batch.locked", batch=batch.id, site=batch.site, samples=batch.samples,
                         digest=set_digest(ids), batches=len(ids))


def _readiness_alerts(stores: Stores, model: Model, production: int | None,
                      before: dict[str, SiteReadiness]) -> None:
    """A site.readiness alert for every site whose readiness under production the locked set changed (its figures
    replace the held-out ones), as a promotion raises one for the sites it changes."""
    after = promotion.readiness(stores.registry, stores.artifacts, model, production)
    for site, now_ in after.items():
        then = before.get(site)
        if then is None or then.validated != now_.validated:
            stores.events.append(model.name, "site.readiness", site=site, version=production,
                                 validated=now_.validated, reasons=now_.reasons,
                                 was=None if then is None else then.validated, judged_on="locked")


def score(stores: Stores, model: Model, versions: list[ModelVersion]) -> list[LockedScore]:
    """Score each version on each site's current locked set, where that score is not stored yet; the new scores."""
    sets = LockedSets(stores.registry, model.name)
    members = sets.sites()
    made = []
    for version in versions:
        if Artifact.WEIGHTS.value not in version.artifacts:  # a record without weights: nothing to score
            continue
        for site, ids in members.items():
            digest = set_digest(ids)
            if not sets.has(version.number, site, digest):
                made.append(_score(stores, model, version, site, ids, digest))
                sets.put(made[-1])
    for found in made:
        stores.events.append(model.name, "locked.scored", version=found.version, site=found.site,
                             digest=found.digest, samples=found.figures.samples, metric=found.figures.metric,
                             value=found.figures.metric_value, interval=found.figures.metric_interval)
    return made


def _score(stores: Stores, model: Model, version: ModelVersion, site: str, ids: list[str],
           digest: str) -> LockedScore:
    """The version on a locked set, answered as /v1/predict naming the site answers (its BatchNorm, or the one MAP
    routing picks, and the temperature served there)."""
    arrays = [stores.arrays(model, stores.registry.batches.get(b)) for b in ids]
    x, y = np.concatenate([a[0] for a in arrays]), np.concatenate([a[1] for a in arrays])
    answerer = Answerer.of(stores.module(model, version.artifacts[Artifact.WEIGHTS]), stores.bank(version),
                           version_calibration(stores.artifacts, version))
    net, _, _ = answerer.pick(site, to_tensor(x))
    _, temperature = answerer.temperature(site)
    figures = fixed_record(model, predict_logits(net, x), y, temperature, seed=version.lineage.seed)
    return LockedScore(model=model.name, version=version.number, site=site, digest=digest, batch_ids=ids,
                       learnt=site in version.lineage.sites, figures=figures)
