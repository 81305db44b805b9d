"""The daemon: consume the ingest stream, run the pipeline per batch, run periodic jobs, stop cleanly.

Entries are acked only after `pipeline.process` returns, so a daemon killed mid-batch re-reads the entry
(its pending list) on restart and the pipeline resumes from the batch's stored state.
"""

from __future__ import annotations

import logging
import threading

from apscheduler.schedulers.background import BackgroundScheduler

from clreg import pipeline, watch
from clreg.context import Context
from registry.errors import NotFound, RegistryError
from registry.events import IngestQueue
from registry.records import BatchState, BatchStatus
from registry.retention import Retention

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, ctx: Context, consumer: str = "daemon-1") -> None:
        self.ctx = ctx
        self.queue = IngestQueue(ctx.registry, consumer)
        self.stopping = threading.Event()
        self.processed = 0
        self.scheduler = BackgroundScheduler(daemon=True)
        self.scheduler.add_job(self.flush_pending, "interval", seconds=ctx.trigger.flush_interval_s,
                               id="flush-pending", max_instances=1, coalesce=True)
        if ctx.watch.enabled:  # drift of the inputs Serve sees, before their labels arrive
            self.scheduler.add_job(watch.run, "interval", args=[ctx], seconds=ctx.watch.interval_s,
                                   id="watch-inputs", max_instances=1, coalesce=True)
        if ctx.retention.enabled:
            self.scheduler.add_job(self.apply_retention, "interval", seconds=ctx.retention.interval_s,
                                   id="retention", max_instances=1, coalesce=True)

    def run(self) -> None:
        """Block until `stop()`: resume unacked entries first, then follow the stream."""
        self.queue.ensure_group()
        self.scheduler.start()
        try:
            self._drain(pending=True)
            while not self.stopping.is_set():
                self._drain(pending=False)
        finally:
            self.scheduler.shutdown(wait=False)

    def stop(self) -> None:
        self.stopping.set()

    def _drain(self, pending: bool) -> None:
        try:
            entries = self.queue.read(block_ms=500, pending=pending)
        except RegistryError as e:
            log.warning("ingest stream unreadable, retrying: %s", e)
            self.stopping.wait(1.0)
            return
        for entry_id, model, batch_id in entries:
            if self.stopping.is_set():
                return
            self._one(entry_id, model, batch_id)

    def _one(self, entry_id: str, model: str, batch_id: str) -> None:
        try:
            pipeline.process(self.ctx, batch_id)
        except NotFound as e:  # the record is gone: nothing to resume, drop the entry
            log.error("batch %s of %s dropped: %s", batch_id[:12], model, e)
        except RegistryError as e:  # Redis or storage down: leave it unacked, it is re-read on restart
            log.error("batch %s of %s not processed: %s", batch_id[:12], model, e)
            return
        except Exception as e:  # the loop's edge: one poison batch must not stop the daemon
            log.exception("batch %s of %s failed", batch_id[:12], model)
            self._fail(model, batch_id, e)
        self.queue.ack(entry_id)
        self.processed += 1

    def _fail(self, model: str, batch_id: str, error: Exception) -> None:
        try:
            self.ctx.registry.set_batch_state(batch_id, BatchState(status=BatchStatus.FAILED, detail=str(error)))
            self.ctx.registry.clear_pending(model, [batch_id])
            self.ctx.events.append(model, "update.failed", batches=[batch_id], error=f"{type(error).__name__}: {error}")
        except RegistryError as e:
            log.error("could not record the failure of batch %s: %s", batch_id[:12], e)

    def apply_retention(self) -> None:
        """Periodic job: archive old candidates and rejected versions, prune artifacts nothing kept uses."""
        try:
            report = Retention(self.ctx.registry, self.ctx.artifacts, self.ctx.retention.policy).run()
        except RegistryError as e:  # Redis or storage down: the next run tries again
            log.warning("retention skipped: %s", e)
            return
        log.info("retention archived %s, pruned %d artifacts, skipped %s", report.archived, len(report.pruned),
                 report.skipped)

    def flush_pending(self) -> None:
        """Periodic job: learn batches that arrived but never reached a trigger on their own."""
        for name in self.ctx.registry.list_models():
            if self.ctx.registry.pending(name):
                pipeline.update(self.ctx, self.ctx.registry.get_model(name))
