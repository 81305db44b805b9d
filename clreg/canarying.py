"""The daemon's side of the weighted canary (registry/canary.py): the verdict on each candidate answering a share of
live requests, once it answered `min_requests`; promoted, or rolled back with the figures as the reason. Re-entrant,
as shadowing is: a daemon that died between two steps leaves what the next run finishes."""

from __future__ import annotations

import logging

from clreg.context import Stores
from clreg.registry import promotion
from clreg.registry.canary import Canaries, CanaryCounts, CanaryRun, roll_back, set_states
from clreg.registry.errors import Conflict
from clreg.registry.leases import Lease
from clreg.registry.records import NEVER_SERVED, BatchStatus, Incarnation, VersionStatus

log = logging.getLogger(__name__)


def running(stores: Stores, model: str) -> bool:
    """Whether a candidate of the model answers a share of requests (the model's next update waits for it)."""
    return Canaries(stores.registry).active(model) is not None


def judge(stores: Stores, holder: Incarnation, lease_s: float) -> list[tuple[str, int, str]]:
    """Give every canary with enough requests its verdict; (model, version, verdict) for each."""
    canaries, verdicts = Canaries(stores.registry), []
    for name, run in canaries.active_all(stores.registry.list_models()).items():
        total = sum(canaries.figures(name, run.version).values(), CanaryCounts())
        decided = stores.registry.status(name, run.version) not in (VersionStatus.BLESSED,
                                                                    VersionStatus.AWAITING_APPROVAL)
        if total.requests < run.policy.min_requests and not decided:
            continue
        lease = Lease(stores.registry, name, holder, lease_s=lease_s)
        if not lease.acquire():  # an update of the model runs: the next run judges
            continue
        try:
            verdicts.append((name, run.version, _judge(stores, canaries, run, lease)))
        finally:
            lease.release()
    return verdicts


def reasons(run: CanaryRun, sites: dict[str, CanaryCounts]) -> list[str]:
    """Why the canary fails its policy (none: it passes): its error rate, and each site's estimate against the
    candidate's validated accuracy there."""
    total, policy, out = sum(sites.values(), CanaryCounts()), run.policy, []
    if total.error_rate is not None and total.error_rate > policy.max_error_rate:
        out.append(f"it failed {total.errors} of {total.requests} requests ({total.error_rate:.1%}), more than "
                   f"{policy.max_error_rate:.1%}")
    for site, counts in sites.items():
        if counts.estimate is None or site not in run.accuracy:
            continue
        drop = run.accuracy[site] - counts.estimate
        if drop > policy.max_estimate_drop:
            out.append(f"at {site} its label-free estimate {counts.estimate:.3f} over {counts.samples} answers is "
                       f"{drop:.3f} under its validated accuracy {run.accuracy[site]:.3f} (limit "
                       f"{policy.max_estimate_drop:g})")
    return out


def _judge(stores: Stores, canaries: Canaries, run: CanaryRun, lease: Lease) -> str:
    reg = stores.registry
    version = reg.get_version(run.model, run.version)
    if reg.status(run.model, run.version) in NEVER_SERVED:  # rolled back (or archived) meanwhile: finish that
        canaries.end(run.model, run.version)
        return reg.status(run.model, run.version).value
    sites = canaries.figures(run.model, run.version)
    summary = {s: {"requests": c.requests, "errors": c.errors, "estimate": c.estimate} for s, c in sites.items()}
    failed = reasons(run, sites)
    if failed:
        roll_back(reg, stores.events, version, "; ".join(failed), summary)
        return VersionStatus.REJECTED.value
    if reg.resolve(run.model) != run.version:
        try:
            promotion.promote(reg, stores.events, run.model, run.version, who="daemon", fence=lease.fence(),
                              reason=f"canary passed: {sum(c.requests for c in sites.values())} requests answered",
                              artifacts=stores.artifacts, approvers=run.approvers, request=run.request)
        except Conflict as e:  # declined or archived by hand meanwhile: rolled back with that reason
            roll_back(reg, stores.events, version, str(e), summary)
            return VersionStatus.REJECTED.value
    set_states(reg, version, BatchStatus.PROMOTED, f"canary passed ({', '.join(run.sites)})")
    reg.batches.clear_pending(run.model, version.lineage.batch_ids)
    canaries.end(run.model, run.version)
    stores.events.append(run.model, "canary.finished", version=run.version, verdict="production", figures=summary)
    return VersionStatus.PRODUCTION.value
