"""Drift and gate reports: written once by the pipeline, read by the API, the metrics and retention.

Keys (under the registry's prefix): report:drift:{id} and report:gate:{id} hold the JSON record;
model:{m}:drift is a zset of a model's drift report ids by creation time.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from clreg.registry.connection import Command, Write, translated
from clreg.registry.errors import NotFound
from clreg.registry.findings import DriftReport, GateReport
from clreg.registry.records import check_name, parse
from clreg.registry.writes import Writer


class Reports:
    """The reports part of the registry (RedisRegistry.reports)."""

    def __init__(self, r: redis.Redis, key: Callable[..., str], writer: Writer) -> None:
        self.r = r
        self._key = key
        self._writer = writer

    @translated
    def put_drift(self, report: DriftReport) -> DriftReport:
        """The report and its place in the model's listing, in one transaction; on a cluster the listing follows
        the report (a listing never names a missing report). Written once: a report already stored under the id
        (a check replayed after a crash) stays as it is, and is returned."""
        key = self._key("report", "drift", report.id)
        stored: list[str] = []

        def txn(pipe: redis.client.Pipeline) -> list[Write]:
            stored[:] = [raw] if (raw := pipe.get(key)) is not None else []
            if stored:
                return []
            pipe.multi()
            pipe.set(key, report.model_dump_json())
            return [Command("ZADD", self._key("model", report.model, "drift"), (report.created_at, report.id))]

        self._writer.transaction(txn, key)
        return parse(DriftReport, stored[0]) if stored else report

    @translated
    def drift(self, model: str, limit: int = 100) -> list[DriftReport]:
        """The newest `limit` drift reports of a model, oldest first."""
        ids = self.r.zrange(self._key("model", check_name(model), "drift"), -limit, -1)
        raws = self._writer.mget([self._key("report", "drift", i) for i in ids])
        return [parse(DriftReport, raw) for raw in raws if raw is not None]

    @translated
    def get_drift(self, report_id: str) -> DriftReport:
        raw = self.r.get(self._key("report", "drift", check_name(report_id)))
        if raw is None:
            raise NotFound(f"drift report {report_id!r} does not exist")
        return parse(DriftReport, raw)

    @translated
    def put_gate(self, report: GateReport) -> None:
        self.r.set(self._key("report", "gate", report.id), report.model_dump_json())

    @translated
    def get_gate(self, report_id: str) -> GateReport:
        raw = self.r.get(self._key("report", "gate", check_name(report_id)))
        if raw is None:
            raise NotFound(f"gate report {report_id!r} does not exist")
        return parse(GateReport, raw)

    @translated
    def gates(self, report_ids: list[str]) -> dict[str, GateReport]:
        """Several gate reports in one round trip, by id; ids without a report are left out."""
        ids = [check_name(i) for i in report_ids]
        raws = self._writer.mget([self._key("report", "gate", i) for i in ids])
        return {i: parse(GateReport, raw) for i, raw in zip(ids, raws, strict=True) if raw is not None}
