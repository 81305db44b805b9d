"""RedisRegistry: models, versions, aliases, sites and batches in Redis, as JSON records (batches and the
pending sets: registry/batchstore.py, RedisRegistry.batches).

Every key, under `cfg.prefix` so deployments can share one Redis, is in registry/keys.py (docs/reference/keys.md).

On a Redis Cluster (StoreConfig.cluster) the same keys carry a hash tag naming what they belong to, so that a
model's keys, its events stream and its lease share one slot: `{p}:{model:m}:status`, `{p}:{model:m}:events`,
`{p}:{model:m}:lock`, `{p}:{daemons}:daemon:x`, `{p}:{webhooks}:due` (registry.connection.key_name). Keys on one
Redis keep the names of registry/keys.py.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence

import redis

from clreg.registry.batchstore import Batches
from clreg.registry.connection import Command, StoreConfig, StreamEntry, Write, connect, key_name, translated
from clreg.registry.errors import Conflict, LeaseLost, NotFound, StoreRefused
from clreg.registry.records import (
    NEVER_SERVED,
    SERVABLE,
    AliasChange,
    Model,
    ModelVersion,
    Site,
    VersionStatus,
    VersionView,
    check_name,
    parse,
)
from clreg.registry.reports import Reports
from clreg.registry.writes import Writer

# Number and write a version in one step: no gaps, no duplicates, whatever the number of writers; with a
# fence (KEYS[5] must still hold ARGV[3], the writer's lease), nothing at all once the lease was lost.
_REGISTER = """
if KEYS[5] and redis.call('GET', KEYS[5]) ~= ARGV[3] then return -1 end
local n = redis.call('INCR', KEYS[1])
local body = '{"number":' .. n .. ',' .. string.sub(ARGV[1], 2)
redis.call('SET', KEYS[2] .. n, body)
redis.call('ZADD', KEYS[3], n, n)
redis.call('HSET', KEYS[4], n, ARGV[2])
return n
"""


# An alias and the version record it points at, in one round trip (MLflow's get_model_version_by_alias).
_BY_ALIAS = """
local n = redis.call('HGET', KEYS[1], ARGV[1])
if not n then return false end
return redis.call('GET', KEYS[2] .. n)
"""


class RedisRegistry:
    """The system of record; every method is one or a few atomic Redis operations."""

    def __init__(self, cfg: StoreConfig, client: redis.Redis | None = None) -> None:
        self.cfg = cfg
        self.r = client if client is not None else connect(cfg)
        self._register = self.r.register_script(_REGISTER)
        self._by_alias = self.r.register_script(_BY_ALIAS)
        self.writer = Writer(self.r, cfg)
        self.reports = Reports(self.r, self.key, self.writer)
        self.batches = Batches(self.r, self.key, self.writer)

    def key(self, *parts: str | int) -> str:
        return key_name(self.cfg, parts)

    @translated
    def ping(self) -> bool:
        return bool(self.r.ping())

    @translated
    def check_writable(self) -> None:
        """Write, read back and delete a key under the prefix (`clreg doctor`); raises what a write would."""
        key = self.key("doctor", uuid.uuid4().hex)
        self.r.set(key, "ok", ex=60)
        if self.r.get(key) != "ok":
            raise StoreRefused(f"Redis did not read back {key!r}")
        self.r.delete(key)

    # -- models ---------------------------------------------------------------------------------
    @translated
    def create_model(self, model: Model) -> None:
        if not self.r.set(self.key("model", model.name), model.model_dump_json(), nx=True):
            raise Conflict(f"model {model.name!r} already exists")
        self.r.zadd(self.key("models"), {model.name: model.created_at})

    @translated
    def get_model(self, name: str) -> Model:
        raw = self.r.get(self.key("model", check_name(name)))
        if raw is None:
            raise NotFound(f"model {name!r} does not exist")
        return parse(Model, raw)

    @translated
    def list_models(self) -> list[str]:
        return list(self.r.zrange(self.key("models"), 0, -1))

    # -- versions -------------------------------------------------------------------------------
    @translated
    def register_version(self, version: ModelVersion, fence: tuple[str, str] | None = None) -> ModelVersion:
        """Store a new version; the number in `version` is ignored and the next free one assigned.

        With `fence` (a lease's key and value) the version is written only while that lease holds.
        """
        self.get_model(version.model)
        body = version.model_dump_json(exclude={"number"})
        keys = [self.key("model", version.model, "seq"), self.key("model", version.model, "v", ""),
                self.key("model", version.model, "versions"), self.key("model", version.model, "status")]
        args = [body, VersionStatus.CANDIDATE.value]
        if fence is not None:
            keys, args = [*keys, fence[0]], [*args, fence[1]]
        n = int(self._register(keys=keys, args=args))
        if n < 0:
            raise LeaseLost(f"version of {version.model} not registered: the update lease was taken over")
        return version.model_copy(update={"number": n})

    @translated
    def get_version(self, model: str, number: int) -> ModelVersion:
        raw = self.r.get(self.key("model", check_name(model), "v", int(number)))
        if raw is None:
            raise NotFound(f"model {model!r} has no version {number}")
        return _version_from(raw)

    @translated
    def status(self, model: str, number: int) -> VersionStatus:
        raw = self.r.hget(self.key("model", model, "status"), int(number))
        if raw is None:
            raise NotFound(f"model {model!r} has no version {number}")
        return VersionStatus(raw)

    @translated
    def set_status(self, model: str, number: int, status: VersionStatus, gate_report_id: str | None = None,
                   expect: frozenset[VersionStatus] | None = None) -> None:
        """Mark a version blessed/rejected/archived; a version holding an alias cannot be rejected.

        With `expect`, the change happens only if the current status is one of those (else Conflict).
        """
        if status is VersionStatus.PRODUCTION:
            raise Conflict("production status is given only by promote()")

        def txn(pipe: redis.client.Pipeline) -> None:
            current = pipe.hget(self.key("model", model, "status"), number)
            if current is None:
                raise NotFound(f"model {model!r} has no version {number}")
            if expect is not None and VersionStatus(current) not in expect:
                raise Conflict(f"version {number} is {current}, no longer {sorted(s.value for s in expect)}")
            held = [a for a, n in pipe.hgetall(self.key("model", model, "aliases")).items() if int(n) == number]
            if held and status not in SERVABLE:
                raise Conflict(f"version {number} holds alias {held[0]!r}; move the alias first")
            pipe.multi()
            if "production" not in held:  # production implies blessed: the holder's status stays PRODUCTION
                pipe.hset(self.key("model", model, "status"), number, status.value)
            if gate_report_id is not None:
                pipe.hset(self.key("model", model, "gate"), number, gate_report_id)

        self.writer.transaction(txn, self.key("model", model, "status"), self.key("model", model, "aliases"))

    @translated
    def gate_report_id(self, model: str, number: int) -> str | None:
        """The id of a version's gate report (one HGET); None where it was never gated."""
        raw = self.r.hget(self.key("model", check_name(model), "gate"), int(number))
        return None if raw is None else str(raw)

    @translated
    def list_versions(self, model: str, status: VersionStatus | None = None, *, site: str | None = None,
                      parent: int | None = None, since: float | None = None,
                      until: float | None = None) -> list[VersionView]:
        """Versions oldest first, each with its status, aliases and gate report id; filters combine (AND).

        `site` matches every version that has learnt the site (inherited from its parent included);
        `since` and `until` bound `created_at` as [since, until).
        """
        check_name(model)
        if site is not None:
            check_name(site)
        pipe = self.r.pipeline(transaction=True)  # one snapshot: statuses and aliases agree with each other
        pipe.zrange(self.key("model", model, "versions"), 0, -1)
        pipe.hgetall(self.key("model", model, "status"))
        pipe.hgetall(self.key("model", model, "aliases"))
        pipe.hgetall(self.key("model", model, "gate"))
        numbers, statuses, aliases, gates = pipe.execute()
        wanted = [int(n) for n in numbers if status is None or statuses.get(n) == status.value]
        raws = self.r.mget([self.key("model", model, "v", n) for n in wanted]) if wanted else []
        by_version: dict[int, list[str]] = {}
        for alias, n in aliases.items():
            by_version.setdefault(int(n), []).append(alias)
        versions = [_version_from(raw) for raw in raws if raw is not None]
        return [VersionView(version=v, status=VersionStatus(statuses[str(v.number)]),
                            aliases=sorted(by_version.get(v.number, [])), gate_report_id=gates.get(str(v.number)))
                for v in versions if _matches(v, site, parent, since, until)]

    # -- aliases --------------------------------------------------------------------------------
    @translated
    def generation(self) -> int:
        """A counter every alias move and site change bumps: a replica reads it alone while nothing changed."""
        return int(self.r.get(self.key("serving", "generation")) or 0)

    @translated
    def resolve_all(self, alias: str = "production") -> dict[str, int]:
        """Every model's version under `alias` (models without it left out), in one pipelined round trip."""
        models = self.list_models()
        pipe = self.r.pipeline(transaction=False)
        for model in models:
            pipe.hget(self.key("model", model, "aliases"), alias)
        return {m: int(n) for m, n in zip(models, pipe.execute(), strict=True) if n is not None}

    @translated
    def resolve(self, model: str, alias: str = "production") -> int | None:
        """The version an alias points at (the call on the serving path: one HGET)."""
        raw = self.r.hget(self.key("model", model, "aliases"), alias)
        return None if raw is None else int(raw)

    @translated
    def version_by_alias(self, model: str, alias: str = "production") -> ModelVersion | None:
        """The version record an alias points at, in one round trip; None while the alias is unset."""
        raw = self._by_alias(keys=[self.key("model", check_name(model), "aliases"),
                                   self.key("model", model, "v", "")], args=[alias])
        return None if raw is None else _version_from(raw)

    @translated
    def promote(self, model: str, number: int, who: str, reason: str, alias: str = "production", *,
                fence: tuple[str, str] | None = None,
                audit: Callable[[AliasChange], Sequence[StreamEntry]] | None = None,
                approvers: Sequence[str] = (), request: str | None = None) -> AliasChange:
        """Move `alias` to `number` and record the change, in one transaction; unservable versions refused.

        `audit(change)` gives stream entries (the alias.moved event) written in the same transaction; with
        `fence` (a lease's key and value) nothing is written unless that lease still holds. `approvers` and
        `request` name the approval that allowed the move (registry/approvals.py), kept in its history line.
        """
        check_name(alias)
        status_key, alias_key = self.key("model", model, "status"), self.key("model", model, "aliases")
        change: list[AliasChange] = []

        def txn(pipe: redis.client.Pipeline) -> list[Write]:
            if fence is not None and pipe.get(fence[0]) != fence[1]:
                raise LeaseLost(f"{model} v{number} not promoted: the update lease was taken over")
            status = pipe.hget(status_key, number)
            if status is None:
                raise NotFound(f"model {model!r} has no version {number}")
            if VersionStatus(status) in NEVER_SERVED:
                raise Conflict(f"version {number} is {status} and can never be served")
            previous = pipe.hget(alias_key, alias)
            rec = AliasChange(model=model, alias=alias, from_version=None if previous is None else int(previous),
                              to_version=number, who=who, reason=reason, approvers=list(approvers), request=request)
            pipe.multi()
            pipe.hset(alias_key, alias, number)
            if alias == "production":
                if previous is not None and int(previous) != number:
                    pipe.hset(status_key, previous, VersionStatus.BLESSED.value)
                pipe.hset(status_key, number, VersionStatus.PRODUCTION.value)
            pipe.rpush(self.key("model", model, "alias", alias, "history"), rec.model_dump_json())
            change[:] = [rec]
            # On a cluster the generation bump (and an alert's copy on the alerts stream) follow EXEC: a process
            # dying in between leaves replicas on the old version until the next bump, and a retried promotion
            # (the same move again) bumps it; the alias, its history and the model's events are atomic.
            return [Command("INCR", self.key("serving", "generation")), *(audit(rec) if audit else ())]

        self.writer.transaction(txn, status_key, alias_key, *([fence[0]] if fence else []), acknowledge=True)
        return change[0]

    @translated
    def aliases(self, model: str) -> dict[str, int]:
        return {a: int(n) for a, n in self.r.hgetall(self.key("model", check_name(model), "aliases")).items()}

    @translated
    def alias_history(self, model: str, alias: str = "production", moves_only: bool = True) -> list[AliasChange]:
        """The alias's moves, oldest first; with `moves_only=False` also the approval lines between them."""
        raws = self.r.lrange(self.key("model", check_name(model), "alias", check_name(alias), "history"), 0, -1)
        lines = [parse(AliasChange, raw) for raw in raws]
        return [c for c in lines if c.action == "moved"] if moves_only else lines

    def alias_line(self, change: AliasChange) -> Command:
        """The write that appends a line (an approval step, not a move) to an alias's history, for a transaction."""
        key = self.key("model", check_name(change.model), "alias", check_name(change.alias), "history")
        return Command("RPUSH", key, (change.model_dump_json(),))

    def alias_at(self, model: str, at: float, alias: str = "production") -> int | None:
        """Which version held `alias` at time `at` (None before the first promotion)."""
        holder = None
        for change in self.alias_history(model, alias):
            if change.at > at:
                break
            holder = change.to_version
        return holder

    # -- sites ----------------------------------------------------------------------------------
    @translated
    def add_site(self, site: Site) -> None:
        if not self.r.set(self.key("site", site.name), site.model_dump_json(), nx=True):
            raise Conflict(f"site {site.name!r} already exists")
        self.r.zadd(self.key("sites"), {site.name: site.created_at})
        self.r.incr(self.key("serving", "generation"))

    @translated
    def get_site(self, name: str) -> Site:
        raw = self.r.get(self.key("site", check_name(name)))
        if raw is None:
            raise NotFound(f"site {name!r} does not exist")
        return parse(Site, raw)

    @translated
    def update_site(self, site: Site) -> None:
        if not self.r.set(self.key("site", site.name), site.model_dump_json(), xx=True):
            raise NotFound(f"site {site.name!r} does not exist")
        self.r.incr(self.key("serving", "generation"))

    @translated
    def list_sites(self) -> list[str]:
        return list(self.r.zrange(self.key("sites"), 0, -1))

    @translated
    def sites(self) -> list[Site]:
        """Every site record in two round trips (the replicas poll this for thresholds)."""
        names = self.list_sites()
        raws = self.writer.mget([self.key("site", n) for n in names])
        return [parse(Site, raw) for raw in raws if raw is not None]


@functools.lru_cache(maxsize=4096)
def _version_from(raw: str) -> ModelVersion:
    """Parse a stored version; memoised on its exact JSON, which is safe because versions are written once
    and records are frozen (a listing of 1,000 versions otherwise spends most of its time re-parsing)."""
    return parse(ModelVersion, raw)


def _matches(version: ModelVersion, site: str | None, parent: int | None, since: float | None,
             until: float | None) -> bool:
    """Whether a version passes the listing filters (None: no filter)."""
    return ((site is None or site in version.lineage.sites)
            and (parent is None or version.lineage.parent == parent)
            and (since is None or version.created_at >= since)
            and (until is None or version.created_at < until))
