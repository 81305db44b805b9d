"""How the registry writes: transactions with the writes they carry, acknowledged writes, and both on a Redis Cluster.

Acknowledged writes (a batch answered 202, a promotion) wait, on the very connection that wrote them, until
`StoreConfig.replicas` replicas have them (WAIT) and the primary's append-only file has them on disk (WAITAOF,
where the server keeps one and knows the command). The same connection matters: both commands wait for what
their own connection wrote, so on a connection taken from the pool afterwards they would return at once.

On one Redis (or a primary found through Sentinel) a transaction and everything it carries is one MULTI/EXEC.
On a Redis Cluster a transaction runs on the primary of its slot, and the writes it carries for keys in other
slots (the serving generation, the alerts stream, the active-batches index) follow right after EXEC, grouped
per node: each call site says why that order is safe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.crc import key_slot

from clreg.registry.connection import StoreConfig, Write
from clreg.registry.errors import StoreUnavailable

log = logging.getLogger(__name__)
Transaction = Callable[[Pipeline], Sequence[Write] | None]


class _Lent:
    """A connection pool of one connection lent by the real pool, so a transaction and its WAIT share it."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self.connection = pool.get_connection()
        self.connection_kwargs = pool.connection_kwargs

    def get_connection(self, *_args: Any, **_kwargs: Any) -> Any:
        return self.connection

    def release(self, _connection: Any) -> None:
        """Kept until give_back(): the pipeline returns it after EXEC, before the WAIT."""

    def get_encoder(self) -> Any:
        return self._pool.get_encoder()

    def give_back(self) -> None:
        self._pool.release(self.connection)


class Writer:
    """Transactions, acknowledged writes and multi-key reads for one client, whatever the topology."""

    def __init__(self, client: redis.Redis, cfg: StoreConfig) -> None:
        self.r = client
        self.cfg = cfg
        self.cluster = cfg.cluster
        self._aof: dict[str, bool] = {}  # per primary address: whether it keeps an append-only file WAITAOF can wait on

    def transaction(self, txn: Transaction, *watches: str, at: str | None = None, acknowledge: bool = False) -> None:
        """WATCH `watches`, then `txn(pipe)` reads, calls pipe.multi() and queues its writes (retried whenever a
        watched key changed); the writes it returns go into the same MULTI, or on a cluster, where their key lies
        in another slot than `at` (default: the first watched key), right after EXEC."""
        anchor = at or watches[0]
        client, address = self._client_for(anchor)
        lent, later = _Lent(client.connection_pool), list[Write]()
        try:
            with Pipeline(lent, client.response_callbacks, True, None) as pipe:
                while True:
                    try:
                        if watches:
                            pipe.watch(*watches)
                        later = self._queue(pipe, txn(pipe) or (), anchor)
                        wrote = len(pipe) > 0
                        pipe.execute()
                        break
                    except redis.WatchError:
                        continue
            if acknowledge and wrote:
                self._acknowledge(client, address, lent.connection)
        finally:
            lent.give_back()
        self.apply(later, acknowledge=acknowledge)

    def _queue(self, pipe: Pipeline, writes: Sequence[Write], anchor: str) -> list[Write]:
        """Queue the writes that share the transaction's slot; return the others (none on one Redis)."""
        slot = key_slot(anchor.encode()) if self.cluster else None
        here, elsewhere = list[Write](), list[Write]()
        for write in writes:
            (here if slot is None or key_slot(write.key.encode()) == slot else elsewhere).append(write)
        if here and pipe.watching and not pipe.explicit_transaction:
            pipe.multi()
        for write in here:
            write.add_to(pipe)
        return elsewhere

    def apply(self, writes: Sequence[Write], acknowledge: bool = False) -> None:
        """Send writes in one pipeline per node (not a transaction), acknowledged on each node when asked."""
        groups: dict[str, tuple[redis.Redis, list[Write]]] = {}
        for write in writes:
            client, address = self._client_for(write.key)
            groups.setdefault(address, (client, []))[1].append(write)
        for address, (client, group) in groups.items():
            pipe = client.pipeline(transaction=False)
            for write in group:
                write.add_to(pipe)
            self._send(client, address, pipe, len(group), acknowledge)

    def script(self, script: Script, keys: list[str], args: list[Any], acknowledge: bool = False) -> Any:
        """Run one Lua script on the primary of its keys' slot, acknowledged on the same connection when asked."""
        client, address = self._client_for(keys[0])
        pipe = client.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        return self._send(client, address, pipe, 1, acknowledge)[0]

    def mget(self, keys: list[str]) -> list[Any]:
        """Values of keys that may lie in different slots (one MGET per node on a cluster)."""
        if not keys:
            return []
        return list(self.r.mget_nonatomic(keys) if self.cluster else self.r.mget(keys))

    def _send(self, client: redis.Redis, address: str, pipe: Pipeline, n: int, acknowledge: bool) -> list[Any]:
        acks = self._ack_commands(client, address) if acknowledge else []
        for command in acks:
            pipe.execute_command(*command)
        try:
            replies = pipe.execute()
        except redis.ResponseError as e:
            self._rerouted(e, address)
            raise
        self._check(acks, replies[n:])
        return list(replies[:n])

    def _client_for(self, key: str) -> tuple[redis.Redis, str]:
        """The client that reaches the primary holding `key`, and that primary's address."""
        if not self.cluster:
            return self.r, "primary"
        node = self.r.get_node_from_key(key)
        return self.r.get_redis_connection(node), node.name

    def _rerouted(self, error: redis.ResponseError, address: str) -> None:
        """What a failed pipeline says about the topology: a slot moved (resharding, a failover), so the cluster
        client reads the slot map again; or the primary (a new one, after a failover) keeps no append-only file,
        so it is asked again. Either way the caller's error stands and the next try goes right."""
        if self.cluster and str(error).startswith(("MOVED", "ASK")):
            self.r.nodes_manager.initialize()
        if "WAITAOF" in str(error) or "appendonly" in str(error):
            self._aof.pop(address, None)

    def _acknowledge(self, client: redis.Redis, address: str, connection: Any) -> None:
        acks = self._ack_commands(client, address)
        for command in acks:
            connection.send_command(*command)
        try:
            replies = [connection.read_response() for _ in acks]
        except redis.ResponseError as e:
            connection.disconnect()  # a reply may be left unread: the pool must not lend this connection again
            self._rerouted(e, address)
            raise
        self._check(acks, replies)

    def _ack_commands(self, client: redis.Redis, address: str) -> list[tuple[Any, ...]]:
        ms = int(self.cfg.durable_timeout_s * 1000)
        out: list[tuple[Any, ...]] = [("WAIT", self.cfg.replicas, ms)] if self.cfg.replicas else []
        if self._keeps_aof(client, address):
            out.append(("WAITAOF", 1, 0, ms))
        return out

    def _check(self, acks: list[tuple[Any, ...]], replies: list[Any]) -> None:
        for command, reply in zip(acks, replies, strict=True):
            if command[0] == "WAIT" and int(reply) < self.cfg.replicas:
                raise StoreUnavailable(f"the write reached {int(reply)} of {self.cfg.replicas} replicas within "
                                       f"{self.cfg.durable_timeout_s} s (CLREG_REDIS__WAIT_REPLICAS); it may be lost "
                                       "in a failover: retry")
            if command[0] == "WAITAOF" and int(reply[0]) < 1:
                raise StoreUnavailable(f"Redis did not write the append-only file within "
                                       f"{self.cfg.durable_timeout_s} s")

    def _keeps_aof(self, client: redis.Redis, address: str) -> bool:
        if not self.cfg.durable_writes:
            return False
        if address not in self._aof:
            self._aof[address] = _probe_aof(client)
        return self._aof[address]


def _probe_aof(client: redis.Redis) -> bool:
    """Whether the primary keeps an append-only file and knows WAITAOF (Redis >= 7.2, Valkey >= 8)."""
    try:
        if str(client.info("persistence").get("aof_enabled", 0)) != "1":
            return False
        client.execute_command("WAITAOF", 0, 0, 1)
        return True
    except redis.ResponseError as e:  # an older server, or INFO/WAITAOF renamed away: writes stay async
        log.warning("durable writes off: %s", e)
        return False
