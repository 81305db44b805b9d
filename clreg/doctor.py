"""`clreg doctor`: can this deployment reach and write what it needs, from here and from every Ray node?

Each check is one line: Redis (read and write under the key prefix), the artifact store (write, read back
with its sha256, delete), the Serve endpoint (/healthz), and, on a Ray cluster, the same Redis and artifact
checks from a task pinned to each alive node, since a worker on another node may not reach what the head
reaches. Exit status 1 when any check failed.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
import ray
import typer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from clreg import embedded, terminal
from clreg.errors import NoRedis
from clreg.registry.artifacts import ArtifactStore
from clreg.registry.connection import StoreConfig
from clreg.registry.errors import RegistryError
from clreg.registry.store import RedisRegistry


@dataclass(frozen=True)
class Check:
    where: str  # "here", or a Ray node
    what: str  # redis, artifacts, serve, node
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.where:<22} {self.what:<9} {self.detail}"


def redacted(url: str) -> str:
    """A URL without its password (printed, never the secret)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=f"{user}{host}{f':{parts.port}' if parts.port else ''}"))


def storage(store: StoreConfig, artifacts_url: str, where: str = "here") -> list[Check]:
    """Redis and the artifact store, each written, read back and cleaned up, from the calling process."""
    probe = f"doctor-{uuid.uuid4().hex[:12]}".encode()
    out = []
    try:
        RedisRegistry(store).check_writable()
        out.append(Check(where, "redis", True, f"{redacted(store.url)} (prefix {store.prefix}): read and write"))
    except RegistryError as e:
        out.append(Check(where, "redis", False, f"{redacted(store.url)}: {e}"))
    try:
        artifacts = ArtifactStore(artifacts_url)
        digest = artifacts.put(probe)
        if artifacts.get(digest) != probe:
            raise RegistryError("what was written did not read back")
        artifacts.delete(digest)
        out.append(Check(where, "artifacts", True, f"{artifacts_url}: write, read, delete"))
    except (RegistryError, OSError) as e:
        out.append(Check(where, "artifacts", False, f"{artifacts_url}: {_one_line(e)}"))
    return out


def serve(url: str, timeout_s: float = 5.0) -> Check:
    try:
        answer = httpx.get(f"{url}/healthz", timeout=timeout_s)
    except httpx.HTTPError as e:
        return Check("here", "serve", False, f"{url}: {_one_line(e) or type(e).__name__}")
    return Check("here", "serve", answer.status_code == 200, f"{url}/healthz answered {answer.status_code}")


@ray.remote(num_cpus=0, max_retries=0)
def _on_node(store: StoreConfig, artifacts_url: str) -> tuple[str, list[Check]]:
    return ray.get_runtime_context().get_node_id(), storage(store, artifacts_url, "node")


def nodes(store: StoreConfig, artifacts_url: str, timeout_s: float = 30.0) -> list[Check]:
    """The storage checks from a task pinned to every alive node of the connected Ray cluster, all sent at once
    so that one stuck node neither delays nor shortens another's time to answer."""
    sent: dict[str, ray.ObjectRef[tuple[str, list[Check]]]] = {}
    for node in (n for n in ray.nodes() if n["Alive"]):  # type: ignore[no-untyped-call]
        where = f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]})"  # nodes may share an address
        pinned = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        sent[where] = _on_node.options(scheduling_strategy=pinned).remote(store, artifacts_url)
    if not sent:
        return []
    ready, _ = ray.wait(list(sent.values()), num_returns=len(sent), timeout=timeout_s)
    out = []
    for where, ref in sent.items():
        if ref not in ready:
            ray.cancel(ref, force=True)
            out.append(Check(where, "node", False, f"no answer within {timeout_s:g} s: the node cannot run a task"))
            continue
        try:
            _, checks = ray.get(ref)
        except ray.exceptions.RayError as e:
            out.append(Check(where, "node", False, _one_line(e)))
            continue
        out += [Check(where, c.what, c.ok, c.detail) for c in checks]
    return out


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def command(node_timeout_s: float = 30.0) -> None:
    """Check that Redis, the artifact store and the Serve endpoint are reachable and writable, from here and
    from every node of the Ray cluster (CLREG_RAY__ADDRESS); one line each, exit status 1 if any failed."""
    settings = terminal.settings()
    checks: list[Check] = []
    try:
        store = settings.redis.store(embedded.redis_url(settings),
                                     socket_timeout_s=min(settings.redis.socket_timeout_s, node_timeout_s))
        checks += storage(store, settings.artifacts())
    except NoRedis as e:
        store = None
        checks.append(Check("here", "redis", False, str(e)))
    checks.append(serve(f"http://{settings.serve.host}:{settings.serve.port}"))
    if settings.ray.address and store is not None:
        try:
            ray.init(address=settings.ray.address, logging_level=logging.ERROR, log_to_driver=False)
            checks += nodes(store, settings.artifacts(), node_timeout_s)
        except (ConnectionError, RuntimeError) as e:
            checks.append(Check("here", "ray", False, f"{settings.ray.address}: {_one_line(e)}"))
        finally:
            ray.shutdown()
    else:
        checks.append(Check("here", "ray", True, "CLREG_RAY__ADDRESS unset: a local Ray, no other node to check"))
    for check in checks:
        terminal.console.print(check.line(), style=None if check.ok else "red", highlight=False, soft_wrap=True)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
