"""Everything a test stack stores, taken before a crash and after its replay, and what may differ between them.

A dump holds every Redis key under the stack's prefix (type and content) and the artifact listing. The crash
tests take one while the daemon is paused at a failpoint (what it wrote so far) and one after the restarted
daemon finished the batch, then check that the replay lost nothing, rewrote no record of the past, only appended
to the streams, and wrote no step's event twice.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from clreg.registry import keys
from clreg.registry.store import RedisRegistry

# events written again by design: each start or take-over of an update says so, each replica its swap
REPEATABLE = frozenset({"update.started", "update.resumed", "update.taken_over", "serving.swapped",
                        "serving.failed"})
# the fields that name the step an event reports (two events of one kind naming the same are one step twice)
STEP_FIELDS = ("version", "batch", "site", "report", "report_id", "to", "frm", "rejected", "revision")


@dataclass(frozen=True)
class Dump:
    keys: dict[str, Any]
    artifacts: frozenset[str]


def take(registry: RedisRegistry, artifacts_root: Path) -> Dump:
    """Every key under the registry's prefix with its content, and every artifact's digest."""
    r = redis.Redis.from_url(registry.cfg.url)  # raw bytes: the inputs stream holds images
    keys = {_text(key): _content(r, key) for key in r.scan_iter(match=f"{registry.cfg.prefix}:*", count=1000)}
    artifacts = frozenset(p.name for p in artifacts_root.glob("*/*") if p.is_file())
    return Dump(keys=keys, artifacts=artifacts)


def _content(r: redis.Redis, key: bytes) -> Any:
    kind = _text(r.type(key))
    if kind == "string":
        return _text(r.get(key))
    if kind == "hash":
        return _text(r.hgetall(key))
    if kind == "list":
        return _text(r.lrange(key, 0, -1))
    if kind == "set":
        return frozenset(_text(list(r.smembers(key))))
    if kind == "zset":
        return _text(r.zrange(key, 0, -1, withscores=True))
    if kind == "stream":
        return _text(r.xrange(key))
    return kind  # gone between the scan and the read ("none")


def _text(value: Any) -> Any:
    """Bytes as text where they are UTF-8 (records, ids), kept as bytes where not (images), in any container."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_text(v) for v in value)
    return value


def replay_problems(registry: RedisRegistry, model: str, before: Dump, after: Dump) -> list[str]:
    """What the replay did wrong, in words: an empty list when it lost nothing and duplicated nothing."""
    key = registry.key
    problems = [f"artifact {a[:12]} lost" for a in sorted(before.artifacts - after.artifacts)]
    problems += [f"{k}: a key registry/keys.py does not name" for k in after.keys
                 if keys.spec_of(k, registry.cfg.prefix) is None]
    problems += [f"{k} rewritten" for k in _records(registry, model, before) if after.keys.get(k) != before.keys[k]]
    for stream in (key("events", model), key("alerts")):
        old, new = before.keys.get(stream) or [], after.keys.get(stream) or []
        if new[: len(old)] != old:
            problems.append(f"{stream}: entries before the crash changed or vanished")
        problems += [f"{stream}: {kind} written {n} times for {step}"
                     for (kind, step), n in _steps(after, stream, model).items() if n > 1]
    for artifacts in _versions(after, key("model", model, "v", "")):
        problems += [f"a version's artifact {a[:12]} is missing" for a in artifacts.values()
                     if a not in after.artifacts]
    return problems


def _records(registry: RedisRegistry, model: str, dump: Dump) -> list[str]:
    """The model's write-once records in a dump: its versions, batches, drift reports, and the gate reports its
    versions' verdicts name."""
    key = registry.key
    prefixes = (key("model", model, "v", ""), key("batch", ""), key("report", "drift", ""))
    owned = [k for k, v in dump.keys.items() if k.startswith(prefixes) and not k.endswith(":state")
             and isinstance(v, str) and json.loads(v).get("model") == model]
    gated = dump.keys.get(key("model", model, "gate")) or {}
    return owned + [key("report", "gate", report_id) for report_id in gated.values()]


def _steps(dump: Dump, stream: str, model: str) -> Counter[tuple[str, str]]:
    """How many events of the model, of each (kind, step), the stream holds, leaving out the kinds a replay
    repeats."""
    counts: Counter[tuple[str, str]] = Counter()
    for _, fields in dump.keys.get(stream) or []:
        event = json.loads(fields["json"])
        if event["model"] == model and event["kind"] not in REPEATABLE:
            step = {f: event["data"][f] for f in STEP_FIELDS if f in event["data"]}
            counts[(event["kind"], json.dumps(step, sort_keys=True))] += 1
    return counts


def _versions(dump: Dump, prefix: str) -> list[dict[str, str]]:
    """The artifact map of every stored version record."""
    return [json.loads(raw)["artifacts"] for k, raw in dump.keys.items()
            if k.startswith(prefix) and k[len(prefix):].isdigit()]
