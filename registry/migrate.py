"""A one-shot move of a deployment from one Redis (or a Sentinel primary) to a Redis Cluster.

On one Redis the keys keep the names they always had; on a cluster the same keys carry a hash tag
(registry.connection.key_name), so moving a deployment copies every key under its prefix to its cluster name:

    python -m clreg.registry.migrate --from redis://:PASSWORD@old-redis:6379/0 --to redis://node-1:6379/0 \
        --prefix clreg

Run it with clreg stopped (no daemon, gateway or replica writing). Each key is copied with its value and remaining
time to live (DUMP, then RESTORE on the cluster node of its new name); a key the cluster already holds is left as
it is (so a run that was interrupted can run again); the source is left as it was. The cluster's servers must read the
source's DUMP format: the same server family and version, or newer. Then set CLREG_REDIS__URL to a cluster node and
CLREG_REDIS__CLUSTER=true.
"""

from __future__ import annotations

import argparse
import itertools

import redis

from clreg.registry.connection import StoreConfig, connect, key_name, translated


def cluster_name(prefix: str, target: StoreConfig, key: str) -> str:
    """The name `key` (a name on one Redis under `prefix`) has on the cluster `target` describes."""
    return key_name(target, tuple(key[len(prefix) + 1:].split(":")))


@translated
def copy_to_cluster(source: StoreConfig, target: StoreConfig, chunk: int = 500) -> tuple[int, int]:
    """Copy every key under `source.prefix` to its name on the cluster `target`: (keys copied, keys the cluster
    held already and kept)."""
    if source.cluster or not target.cluster:
        raise ValueError("copy_to_cluster copies from one Redis (or a Sentinel primary) to a Redis Cluster")
    src, dst = connect(source, decode_responses=False), connect(target, decode_responses=False)
    keys = src.scan_iter(match=f"{source.prefix}:*", count=chunk)
    copied = kept = 0
    while names := list(itertools.islice(keys, chunk)):
        pipe = src.pipeline(transaction=False)
        for name in names:
            pipe.dump(name)
            pipe.pttl(name)
        replies = pipe.execute()
        for name, dumped, ttl in zip(names, replies[::2], replies[1::2], strict=True):
            if dumped is None:  # expired (a heartbeat) since the scan
                continue
            try:
                dst.restore(cluster_name(source.prefix, target, name.decode()), max(int(ttl), 0), dumped)
                copied += 1
            except redis.ResponseError as e:
                if "BUSYKEY" not in str(e):
                    raise
                kept += 1
    return copied, kept


def main() -> None:
    parser = argparse.ArgumentParser(description="Copy a clreg deployment from one Redis to a Redis Cluster.")
    parser.add_argument("--from", dest="source", required=True, help="the Redis the deployment is on (its url)")
    parser.add_argument("--to", dest="target", required=True, help="any node of the cluster (its url)")
    parser.add_argument("--prefix", default="clreg", help="the deployment's key prefix (CLREG_REDIS__PREFIX)")
    args = parser.parse_args()
    copied, kept = copy_to_cluster(StoreConfig(url=args.source, prefix=args.prefix),
                                   StoreConfig(url=args.target, prefix=args.prefix, cluster=True))
    print(f"copied {copied} keys under {args.prefix} ({kept} were there already and kept): now set "
          f"CLREG_REDIS__URL={args.target} CLREG_REDIS__CLUSTER=true")


if __name__ == "__main__":
    main()
