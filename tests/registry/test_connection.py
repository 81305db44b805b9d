"""External Redis as operators run it: an ACL user limited to clreg's key prefix, and TLS (rediss://)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from clreg.registry.errors import StoreRefused, StoreUnavailable
from clreg.registry.records import InputSpec, Lineage, Model, ModelVersion
from clreg.registry.store import RedisRegistry, StoreConfig

SPEC = InputSpec(channels=1, height=8, width=8, classes=3)


def _exercise(reg: RedisRegistry) -> None:
    """What the daemon and the gateway do most: models, versions (Lua), aliases (transactions)."""
    reg.create_model(Model(name="m", factory="clreg.learner.models:small_cnn", input=SPEC))
    v = reg.register_version(ModelVersion(model="m", number=1, lineage=Lineage()))
    reg.promote("m", v.number, who="ops", reason="acl")
    assert reg.resolve("m") == v.number and [c.to_version for c in reg.alias_history("m")] == [v.number]


@pytest.fixture
def acl_user(redis_url: str) -> Iterator[str]:
    """An ACL user that may touch only keys under `acltest:`; its URL."""
    admin = redis.Redis.from_url(redis_url)
    for key in admin.scan_iter(match="acltest:*"):
        admin.delete(key)
    admin.execute_command("ACL", "SETUSER", "clreg-acl", "reset", "on", ">acl-secret", "~acltest:*", "&*", "+@all")
    base, _, db = redis_url.rpartition("/")
    host = base.split("://", 1)[1].rsplit("@", 1)[-1]
    yield f"redis://clreg-acl:acl-secret@{host}/{db}"
    admin.execute_command("ACL", "DELUSER", "clreg-acl")
    for key in admin.scan_iter(match="acltest:*"):
        admin.delete(key)


def test_an_acl_user_limited_to_the_prefix_runs_the_registry(acl_user: str) -> None:
    _exercise(RedisRegistry(StoreConfig(url=acl_user, prefix="acltest")))
    with pytest.raises(StoreRefused, match="refused|NOPERM|permission"):  # outside its keys: refused
        RedisRegistry(StoreConfig(url=acl_user, prefix="other")).create_model(
            Model(name="m", factory="clreg.learner.models:small_cnn", input=SPEC))
    wrong = acl_user.replace("acl-secret", "wrong")
    with pytest.raises(StoreUnavailable):
        RedisRegistry(StoreConfig(url=wrong, prefix="acltest", socket_timeout_s=1)).ping()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server speaking TLS only, with a self-signed certificate; its rediss:// URL."""
    if not shutil.which("redis-server") or not shutil.which("openssl"):
        if os.environ.get("CLREG_TEST_REQUIRE_TLS"):  # set by .ci/run, which installs both
            pytest.fail("redis-server or openssl is missing: apt-get install redis-server openssl")
        pytest.skip("needs redis-server built with TLS and openssl (Debian's packages)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                               "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
                               str(cert), "--tls-auth-clients", "no", "--requirepass", "tls-secret", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://:tls-secret@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.RedisError:
            time.sleep(0.1)
    yield url
    server.terminate()
    server.wait(10)


def test_the_registry_talks_tls_to_a_rediss_url(tls_redis: str) -> None:
    _exercise(RedisRegistry(StoreConfig(url=tls_redis, prefix="tls")))
    plain = tls_redis.replace("rediss://", "redis://").split("?")[0]
    with pytest.raises(StoreUnavailable):  # the same port without TLS: no answer
        RedisRegistry(StoreConfig(url=plain, prefix="tls", socket_timeout_s=1)).ping()


def test_a_refused_command_is_a_bug_not_an_outage(registry: RedisRegistry) -> None:
    """WRONGTYPE cannot pass by retrying: StoreRefused (the gateway's 500, the daemon fails the batch), while
    replies that clear once the server recovers stay StoreUnavailable (the entry is kept and retried)."""
    from clreg.registry.connection import translated

    registry.r.set(registry.key("models"), "not a sorted set")
    with pytest.raises(StoreRefused, match="WRONGTYPE"):
        registry.list_models()

    @translated
    def reply(error: redis.ResponseError) -> None:
        raise error

    for transient in (redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'"),
                      redis.ResponseError("MISCONF RDB error"), redis.ReadOnlyError("READONLY a replica")):
        with pytest.raises(StoreUnavailable):
            reply(transient)
    with pytest.raises(StoreRefused):
        reply(redis.ResponseError("ERR unknown command 'NOPE'"))
