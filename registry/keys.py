"""Every Redis key clreg writes, in one table: its pattern under the prefix, its type, what it holds and the
module that owns it. docs/gen_keys.py renders it into docs/reference/keys.md, and a test checks that every key
a whole flow leaves in Redis matches one of these patterns.

Placeholders: {m} a model, {n} a version number, {s} a site, {a} an alias, {id} a batch id, {r} a report id,
{name} a daemon or doctor probe. On a Redis Cluster the part naming the owner goes in braces (a hash tag, see
registry.connection.key_name), e.g. `{p}:{model:m}:status`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KeySpec:
    pattern: str  # under the prefix, e.g. "model:{m}:status"
    kind: str  # Redis type, or "JSON" for a string holding a record
    holds: str
    owner: str  # the module that writes it

    def regex(self) -> re.Pattern[str]:
        parts = re.split(r"(\{\w+\})", self.pattern)
        return re.compile("".join("[^:]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")


SCHEMA: tuple[KeySpec, ...] = (
    KeySpec("models", "zset", "model name -> created_at", "store"),
    KeySpec("model:{m}", "JSON", "Model", "store"),
    KeySpec("model:{m}:seq", "int", "the last version number (INCR inside the registering Lua script)", "store"),
    KeySpec("model:{m}:v:{n}", "JSON", "ModelVersion, written once", "store"),
    KeySpec("model:{m}:versions", "zset", "n -> n, ordered by number", "store"),
    KeySpec("model:{m}:status", "hash", "n -> VersionStatus", "store"),
    KeySpec("model:{m}:gate", "hash", "n -> the id of the version's gate report", "store"),
    KeySpec("model:{m}:aliases", "hash", "alias -> n", "store"),
    KeySpec("model:{m}:alias:{a}:history", "list", "AliasChange JSON, oldest first", "store"),
    KeySpec("model:{m}:batches", "zset", "batch id -> created_at", "batchstore"),
    KeySpec("model:{m}:site:{s}:counts", "hash", '"batches", "samples", class k -> labelled samples pushed',
            "batchstore"),
    KeySpec("model:{m}:pending", "set", "batch ids drift-checked and waiting for the model's next update",
            "batchstore"),
    KeySpec("model:{m}:drift", "zset", "drift report id -> created_at", "reports"),
    KeySpec("model:{m}:shadow", "JSON", "ShadowRun while a candidate is mirrored on live traffic", "shadow"),
    KeySpec("model:{m}:v:{n}:shadow", "hash", '"{site}:{counter}" -> what the candidate did on mirrored requests',
            "shadow"),
    KeySpec("model:{m}:canary", "JSON", "CanaryRun while a candidate answers a share of requests", "canary"),
    KeySpec("model:{m}:v:{n}:canary", "hash", '"{site}:{counter}" -> what the candidate did on the requests it '
            "answered", "canary"),
    KeySpec("model:{m}:approvals", "hash", "request id -> ApprovalRequest JSON, decisions included", "approvals"),
    KeySpec("model:{m}:locked", "hash", "batch id -> site: the model's locked test sets", "locked"),
    KeySpec("model:{m}:locked:scores", "hash", '"{version}:{site}:{digest}" -> LockedScore JSON', "locked"),
    KeySpec("model:{m}:protocol", "list", "Protocol JSON, revision 1 first", "protocol"),
    KeySpec("model:{m}:notes", "hash", "version -> Note JSON (a release note's text, who wrote it, when)", "release"),
    KeySpec("sites", "zset", "site name -> created_at", "store"),
    KeySpec("site:{s}", "JSON", "Site (its token only as a sha256)", "store"),
    KeySpec("site:{s}:usage", "hash", '"bytes" stored, "day:YYYY-MM-DD" -> batches stored that day', "batchstore"),
    KeySpec("batch:{id}", "JSON", "Batch, written once", "batchstore"),
    KeySpec("batch:{id}:state", "JSON", "BatchState", "batchstore"),
    KeySpec("batches:active", "zset", "batch id -> time of its last state change, while not final", "batchstore"),
    KeySpec("report:drift:{r}", "JSON", "DriftReport, written once per batch and reference version", "reports"),
    KeySpec("report:gate:{r}", "JSON", "GateReport", "reports"),
    KeySpec("events:{m}", "stream", "Event JSON per entry: the model's audit trail", "events"),
    KeySpec("alerts", "stream", "Event JSON of every alert, all models", "events"),
    KeySpec("ingest", "stream", '{"batch": id, "model": m}; consumer group "daemon" (at-least-once)', "events"),
    KeySpec("inputs:{m}", "stream", "served inputs the drift watch reads (one image per entry)", "inputs"),
    KeySpec("inputs:{m}:seen", "string", "digest of the last window the watch checked", "inputs"),
    KeySpec("inputs:{m}:sites", "set", "sites whose answers' confidences are kept", "inputs"),
    KeySpec("inputs:{m}:confidence:{s}", "list", "the calibrated probability that each recent answer is right",
            "inputs"),
    KeySpec("inputs:{m}:checked", "hash", "site -> the watch's checked estimate there", "inputs"),
    KeySpec("lock:{m}", "JSON", "LeaseHold: the model's update lease, expiring unless renewed", "leases"),
    KeySpec("daemon:{name}", "JSON", "Heartbeat, expiring after its ttl without a beat", "daemons"),
    KeySpec("daemons", "hash", "name -> its latest Heartbeat JSON, kept after it stops or dies", "daemons"),
    KeySpec("serving:generation", "int", "bumped by every alias move and site change: what replicas poll", "store"),
    KeySpec("serving:replicas", "hash", "replica id -> ReplicaBeat JSON (what it serves, when)", "replicas"),
    KeySpec("approvers", "hash", "approver name -> Approver JSON (its token only as a sha256)", "approvers"),
    KeySpec("webhooks", "hash", "subscription id -> Subscription JSON", "webhooks"),
    KeySpec("webhooks:cursor", "hash", "model -> id of its last event turned into deliveries", "webhooks"),
    KeySpec("webhooks:delivery", "hash", "delivery id -> Delivery JSON", "webhooks"),
    KeySpec("webhooks:log", "zset", "delivery id -> created_at (listing and trimming)", "webhooks"),
    KeySpec("webhooks:due", "zset", "delivery id -> when it is next tried", "webhooks"),
    KeySpec("webhooks:outcomes", "hash", '"delivered", "failed" -> deliveries that ended so', "webhooks"),
    KeySpec("doctor:{name}", "string", "`clreg doctor`'s write probe, deleted at once", "store"),
)


def spec_of(key: str, prefix: str) -> KeySpec | None:
    """The entry of SCHEMA a stored key is an instance of (hash tags ignored); None for a key clreg never writes."""
    if not key.startswith(prefix + ":"):
        return None
    rest = key[len(prefix) + 1:].replace("{", "").replace("}", "")
    return next((spec for spec in SCHEMA if spec.regex().match(rest)), None)
