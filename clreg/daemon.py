"""The daemon: consume the ingest stream, run the pipeline per batch, run periodic jobs, stop cleanly.

Crash safety, in three parts:
- an entry is acked only when its batch has a verdict (or waits in the pending set by design), so a daemon
  killed mid-batch finds the entry in its pending list when it starts again, and resumes it;
- while alive, the daemon beats a heartbeat and touches its pending entries; a dead daemon's entries grow
  idle and another daemon claims them (XAUTOCLAIM) after `claim_idle_s`;
- an entry whose model is being updated by another live daemon is kept, not acked, and retried every
  `retry_s` until that update has taken it in or finished.
"""

from __future__ import annotations

import logging
import re
import time

from apscheduler.schedulers.background import BackgroundScheduler

from clreg import canarying, pipeline, shadowing, watch
from clreg.context import Context
from clreg.dispatch import Dispatcher
from clreg.learner.errors import TrainingInterrupted
from clreg.memory import stack_memory
from clreg.registry.daemons import Daemons, incarnation, this_host
from clreg.registry.errors import LeaseLost, NotFound, RegistryError, StoreUnavailable
from clreg.registry.events import IngestQueue
from clreg.registry.records import BatchState, BatchStatus, Incarnation
from clreg.registry.retention import Retention
from clreg.settings import DaemonConfig

log = logging.getLogger(__name__)


def default_name(role: str) -> str:
    """`<role>-<host>` in the name pattern (lower case, other characters as '-')."""
    host = re.sub(r"[^a-z0-9_-]+", "-", this_host().lower()).strip("-_") or "localhost"
    return f"{role}-{host}"[:63]


# On a Redis Cluster a push writes its ingest entry before the batch record (registry/batches.py: the record is
# what a retried push looks for), so a daemon may read the entry first; an entry this young whose batch is not
# found stays pending and is read again at the next sweep (DaemonConfig.retry_s).
UNSTORED_GRACE_S = 60.0


def _entry_age_s(entry_id: str) -> float:
    """Seconds since the stream entry was added (its id starts with Redis's clock in milliseconds)."""
    return time.time() - int(entry_id.split("-", 1)[0]) / 1000


class Daemon:
    def __init__(self, ctx: Context, cfg: DaemonConfig | None = None, role: str = "daemon") -> None:
        self.ctx = ctx
        self.cfg = cfg = cfg or DaemonConfig()
        self.me: Incarnation = incarnation(cfg.name or default_name(role), role)
        self.worker = pipeline.Worker(self.me, lease_s=cfg.lease_s)
        self.queue = IngestQueue(ctx.registry, self.me.name)
        self.daemons = Daemons(ctx.registry, cfg.heartbeat_ttl_s)
        self.processed = 0
        self.doing = ""
        self.scheduler = BackgroundScheduler(daemon=True)
        self._jobs(ctx)

    def _jobs(self, ctx: Context) -> None:
        every = {"max_instances": 1, "coalesce": True}
        self.scheduler.add_job(self.heartbeat, "interval", seconds=self.cfg.heartbeat_s, id="heartbeat", **every)
        self.scheduler.add_job(self.flush_pending, "interval", seconds=ctx.trigger.flush_interval_s,
                               id="flush-pending", **every)
        self.scheduler.add_job(self.judge_shadows, "interval", seconds=self.cfg.shadow_check_s, id="shadows",
                               **every)
        if ctx.watch.enabled:  # drift of the inputs Serve sees, before their labels arrive
            self.scheduler.add_job(watch.run, "interval", args=[ctx.stores, ctx.drift, ctx.watch],
                                   seconds=ctx.watch.interval_s, id="watch-inputs", **every)
        self.dispatcher = Dispatcher(ctx.registry, ctx.webhook)  # webhook deliveries, off every request's path
        self.scheduler.add_job(self.dispatcher.run, "interval", seconds=ctx.webhook.interval_s, id="webhooks", **every)
        if ctx.retention.enabled:
            self.scheduler.add_job(self.apply_retention, "interval", seconds=ctx.retention.interval_s,
                                   id="retention", **every)

    @property
    def stopping(self) -> bool:
        return self.worker.stop.is_set()

    def run(self) -> None:
        """Block until `stop()`: resume this daemon's unacked entries, claim dead daemons', follow the stream."""
        dead = self.daemons.register(self.me, wait_s=self.cfg.heartbeat_ttl_s + 1)
        if dead is not None:
            log.warning("%s restarted: its earlier start (pid %s on %s) died without stopping; resuming its work",
                        self.me.name, dead.pid, dead.host)
        self.queue.ensure_group()
        self.scheduler.start()
        try:
            self._loop()
        finally:
            self.scheduler.shutdown(wait=True)  # a flush job in flight sees the stop event and returns
            try:
                self.daemons.retire(self.me, self.processed)
            except RegistryError as e:
                log.warning("heartbeat of %s not removed: %s", self.me.name, e)

    def stop(self) -> None:
        """Take no new entries; a running training is cancelled and resumed by the next start."""
        self.worker.stop.set()

    def _loop(self) -> None:
        next_sweep, backoff = 0.0, self.cfg.retry_s
        while not self.stopping:
            try:
                if time.monotonic() >= next_sweep:  # own pending entries first, then dead daemons' ones
                    entries = self.queue.read(pending=True, count=100) + self.queue.claim_idle(self.cfg.claim_idle_s)
                    next_sweep = time.monotonic() + self.cfg.retry_s
                else:
                    entries = self.queue.read(block_ms=500)
                backoff = self.cfg.retry_s
            except RegistryError as e:  # Redis away: wait, longer each time, then read again
                log.warning("ingest stream unreadable, retrying in %.1f s: %s", backoff, e)
                self.worker.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            for entry_id, model, batch_id in entries:
                if self.stopping:
                    return
                self._one(entry_id, model, batch_id)

    def _one(self, entry_id: str, model: str, batch_id: str) -> None:
        self.doing = f"{model}: batch {batch_id[:12]}"
        try:
            outcome = pipeline.process(self.ctx, self.worker, batch_id)
        except NotFound as e:
            if _entry_age_s(entry_id) < UNSTORED_GRACE_S:  # on a cluster the record follows its ingest entry
                log.info("batch %s of %s not stored yet, retried: %s", batch_id[:12], model, e)
                return
            log.error("batch %s of %s dropped: %s", batch_id[:12], model, e)  # gone: nothing to resume
            outcome = pipeline.Outcome.DONE
        except (StoreUnavailable, LeaseLost, TrainingInterrupted) as e:  # kept: the entry is retried or resumed
            log.warning("batch %s of %s not finished, kept for later: %s", batch_id[:12], model, e)
            return
        except Exception as e:  # the loop's edge: one poison batch must not stop the daemon
            log.exception("batch %s of %s failed", batch_id[:12], model)
            self._fail(model, batch_id, e)
            outcome = pipeline.Outcome.DONE
        finally:
            self.doing = ""
        if outcome is pipeline.Outcome.DONE:
            self.queue.ack(entry_id)
            self.processed += 1

    def _fail(self, model: str, batch_id: str, error: Exception) -> None:
        try:
            self.ctx.registry.batches.set_state(batch_id, BatchState(status=BatchStatus.FAILED, detail=str(error)))
            self.ctx.registry.batches.clear_pending(model, [batch_id])
            self.ctx.events.append(model, "update.failed", batches=[batch_id], error=f"{type(error).__name__}: {error}")
        except RegistryError as e:
            log.error("could not record the failure of batch %s: %s", batch_id[:12], e)

    def heartbeat(self) -> None:
        """Periodic job: say this daemon lives, and keep its pending entries from being claimed."""
        try:
            self.daemons.beat(self.me, doing=self.doing, processed=self.processed, memory=stack_memory())
            self.queue.touch()
        except RegistryError as e:
            log.warning("heartbeat failed: %s", e)

    def apply_retention(self) -> None:
        """Periodic job: archive old candidates and rejected versions, prune artifacts nothing kept uses."""
        try:
            report = Retention(self.ctx.registry, self.ctx.artifacts, self.ctx.retention.policy, self.me).run()
        except RegistryError as e:  # Redis or storage down: the next run tries again
            log.warning("retention skipped: %s", e)
            return
        log.info("retention archived %s, pruned %d artifacts, skipped %s", report.archived, len(report.pruned),
                 report.skipped)

    def judge_shadows(self) -> None:
        """Periodic job: promote or reject candidates mirrored on live traffic, or answering a share of it as a
        canary, once they have enough requests."""
        try:
            for model, version, verdict in shadowing.judge(self.ctx.stores, self.me, self.cfg.lease_s):
                log.info("shadowed version %s of %s: %s", version, model, verdict)
            for model, version, verdict in canarying.judge(self.ctx.stores, self.me, self.cfg.lease_s):
                log.info("canary version %s of %s: %s", version, model, verdict)
        except RegistryError as e:  # the next run judges
            log.warning("shadow verdicts skipped: %s", e)

    def flush_pending(self) -> None:
        """Periodic job: learn batches that arrived but never reached a trigger on their own. Batches waiting
        after a rejected update are not enough: the same data from the same production would be rejected again,
        so they join the next update that another batch starts."""
        try:
            for name in self.ctx.registry.list_models():
                batches = self.ctx.registry.batches
                fresh = [b for b in batches.pending(name) if batches.state(b).status is not BatchStatus.WAITING]
                if fresh and not self.stopping:
                    pipeline.update(self.ctx, self.worker, self.ctx.registry.get_model(name))
        except (RegistryError, TrainingInterrupted) as e:  # the next run, or the entries' owners, finish it
            log.warning("flush of pending batches stopped: %s", e)
