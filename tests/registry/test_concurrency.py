"""Promotion under concurrent readers: no reader ever sees an alias on a missing or unservable version."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

from clreg.registry.errors import Conflict, NotFound
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion, VersionStatus
from clreg.registry.store import RedisRegistry, StoreConfig

ON_CLUSTER = True  # tests that take a registry run on one Redis and on a Redis Cluster (conftest.py)

UNSERVABLE = {VersionStatus.REJECTED, VersionStatus.ARCHIVED, VersionStatus.CANDIDATE}


def _run(workers: list[Callable[[], None]], readers: list[Callable[[threading.Event], None]]) -> None:
    """Start readers, run the writers to completion, then stop the readers; re-raise what any thread raised."""
    done, errors = threading.Event(), []

    def guard(fn: Callable[[], None]) -> Callable[[], None]:
        def wrapped() -> None:
            try:
                fn()
            except BaseException as e:  # a failed check in a thread must fail the test
                errors.append(e)
        return wrapped

    reader_threads = [threading.Thread(target=guard(lambda r=r: r(done))) for r in readers]
    writer_threads = [threading.Thread(target=guard(w)) for w in workers]
    for t in reader_threads + writer_threads:
        t.start()
    for t in writer_threads:
        t.join()
    done.set()
    for t in reader_threads:
        t.join()
    if errors:
        raise errors[0]


def test_readers_never_see_alias_on_missing_or_rejected_version(registry: RedisRegistry,  # noqa: C901 (workers)
                                                                 store_cfg: StoreConfig) -> None:
    registry.create_model(Model(name="m", factory="clreg.learner.models:small_cnn",
                                input=InputSpec(channels=1, height=16, width=16, classes=10)))
    for _ in range(10):
        registry.register_version(ModelVersion(model="m", number=1, lineage=Lineage()))
    promoted: list[int] = []
    seen: list[int] = []
    lock = threading.Lock()

    def registrar() -> None:
        reg = RedisRegistry(store_cfg)
        for _ in range(20):
            reg.register_version(ModelVersion(model="m", number=1, lineage=Lineage()))

    def promoter(seed: int) -> Callable[[], None]:
        def work() -> None:
            reg, rng = RedisRegistry(store_cfg), random.Random(seed)
            for _ in range(150):
                n = rng.randint(1, 32)  # 31 and 32 never exist: the store must refuse them
                try:
                    reg.set_status("m", n, VersionStatus.BLESSED, expect=frozenset({VersionStatus.CANDIDATE}))
                except (Conflict, NotFound):
                    pass
                try:
                    reg.promote("m", n, who=f"p{seed}", reason="race")
                except (Conflict, NotFound):
                    continue
                with lock:
                    promoted.append(n)
        return work

    def rejecter(seed: int) -> Callable[[], None]:
        def work() -> None:
            reg, rng = RedisRegistry(store_cfg), random.Random(seed)
            for _ in range(150):
                status = rng.choice([VersionStatus.REJECTED, VersionStatus.ARCHIVED])
                try:
                    reg.set_status("m", rng.randint(1, 32), status)
                except (Conflict, NotFound):
                    pass
        return work

    def reader(done: threading.Event) -> None:
        reg = RedisRegistry(store_cfg)
        while not done.is_set():
            n = reg.resolve("m")
            if n is not None:
                assert reg.get_version("m", n).number == n  # never an alias on a missing record
            views = reg.list_versions("m")  # one MULTI snapshot of statuses and aliases
            held = [v for v in views if v.aliases]
            assert len(held) <= 1 and all(v.status not in UNSERVABLE for v in held), held
            assert [v.version.number for v in views if v.status is VersionStatus.PRODUCTION] == \
                [v.version.number for v in held]
            with lock:
                seen.extend(v.version.number for v in held)

    _run([registrar, promoter(1), promoter(2), rejecter(3), rejecter(4)], [reader, reader, reader])

    history = registry.alias_history("m")
    assert sorted(c.to_version for c in history) == sorted(promoted)  # every committed move is recorded
    assert all(b.from_version == a.to_version for a, b in zip(history, history[1:], strict=False))  # no lost update
    assert history[0].from_version is None
    assert len(promoted) >= 10 and seen  # the race was real: moves happened while readers looked
    final = registry.resolve("m")
    assert final == history[-1].to_version and registry.status("m", final) is VersionStatus.PRODUCTION
