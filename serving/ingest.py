"""The push route's work: scope and quota checks, the body read within its limit, DICOM conversion, ingest.

Everything that can refuse a push runs before anything is stored, so a refused push leaves no trace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from clreg.registry.artifacts import ArtifactStore
from clreg.registry.batches import Limits, ingest
from clreg.registry.dicom import DicomLimits, deidentified_study, dicom_zip_to_npz
from clreg.registry.events import EventLog, IngestQueue
from clreg.registry.records import Batch, InputSpec, Site
from clreg.registry.store import RedisRegistry
from clreg.serving.config import ServingConfig
from clreg.serving.errors import Forbidden, TooManyRequests, UnsupportedMedia
from clreg.serving.guard import read_body

KINDS = ("application/octet-stream", "application/zip")


@dataclass(frozen=True)
class Ingest:
    """What a push needs: the stores and the limits."""

    cfg: ServingConfig
    reg: RedisRegistry
    artifacts: ArtifactStore
    events: EventLog
    queue: IngestQueue

    async def push(self, request: Request, site: Site, model: str, locked: bool = False) -> tuple[Batch, bool]:
        """Store and queue a pushed batch (`locked`: a locked test set); (batch, is_new)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind not in KINDS:
            raise UnsupportedMedia("send npz bytes as application/octet-stream, or a zip of DICOM files with "
                                   "labels.csv as application/zip")
        if site.models is not None and model not in site.models:
            raise Forbidden(f"site {site.name!r} may push to {site.models}, not to {model!r}")
        spec = self.reg.get_model(model).input  # 404 before the body is read
        body = await read_body(request.headers.get("content-length"), request.stream(), self.cfg.max_body_bytes)
        self._check_quota(site, len(body))
        return await run_in_threadpool(self._store, site, model, spec, body, kind, locked)

    def _store(self, site: Site, model: str, spec: InputSpec, body: bytes, kind: str,
               locked: bool) -> tuple[Batch, bool]:
        limits = Limits(max_samples=self.cfg.max_samples, heldout_fraction=self.cfg.heldout_fraction,
                        max_inflated_bytes=self.cfg.max_inflated_bytes)
        data, source = body, None
        if kind == "application/zip":
            dicom = DicomLimits(max_files=self.cfg.max_samples, max_unzipped_bytes=self.cfg.max_unzipped_bytes)
            data = dicom_zip_to_npz(body, spec, dicom)
            source = deidentified_study(body, dicom) if self.cfg.keep_dicom_source else None
        return ingest(self.reg, self.artifacts, self.queue, self.events, model, site.name, data, limits,
                      source=source, locked=locked)

    def _check_quota(self, site: Site, size: int) -> None:
        usage = self.reg.batches.site_usage(site.name)
        if usage.batches_today >= site.batches_per_day:
            midnight = (int(time.time()) // 86400 + 1) * 86400
            raise TooManyRequests(f"site {site.name!r} stored its {site.batches_per_day} batches for today (UTC)",
                                  retry_after_s=max(1, midnight - int(time.time())))
        if usage.bytes + size > site.max_bytes:
            raise TooManyRequests(f"site {site.name!r} has stored {usage.bytes:,} of its {site.max_bytes:,} bytes; "
                                  "this push would pass the quota", retry_after_s=3600)
