"""clreg on a cluster, as the README's recipe runs it, with only environment variables changed: a two-node Ray
cluster from `ray start` (the second node alone offers the `trainer` resource), artifacts on an S3-compatible
server (moto, in a child process) and the tests' Redis on a database of its own as the external Redis.

Two sites are pushed through `clreg up`; training must run on the second node, every artifact must be in the
bucket and none on local disk, and predictions must be served. `clreg doctor` must name a wrong bucket, a
wrong Redis password and a node that cannot run a task, one line each.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis

from clreg.client import Client, npz_bytes
from clreg.learner.streams import digits_sites, to_uint8
from tests import cheap, s3server
from tests.clreg import processes

pytestmark = pytest.mark.integration
boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")
BIN = Path(sys.executable).parent
BUCKET, MODEL, SAMPLES = "clreg-cluster", "spread", 240


@dataclass
class Cluster:
    address: str  # a driver's: the head's GCS
    client: str  # a Ray Client's: ray://
    temp: Path
    head: str  # node ids
    trainer: str


def _agent_ports() -> list[str]:
    """Every port a node's agents would otherwise take by default (two nodes share this host)."""
    flags = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port")
    return [f"--{flag}={s3server.free_port()}" for flag in flags]


def _nodes(address: str) -> list[dict]:
    """The cluster's nodes as Ray lists them, from a driver of its own."""
    code = (f"import json, ray; ray.init(address={address!r}, logging_level='ERROR'); "
            "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'resources': n['Resources']} "
            "for n in ray.nodes()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "RAY_AUTH_MODE": "token"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _processes_of(temp: Path) -> list[psutil.Process]:
    """This cluster's daemons (their command lines name its temp folder), with everything they started."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(temp) in part for part in proc.info["cmdline"] or []):
            found += [proc, *proc.children(recursive=True)]
    return found


@pytest.fixture(scope="module")
def bucket() -> Iterator[tuple[str, object]]:
    with s3server.moto_server() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in s3server.CREDENTIALS.items()
                                                               if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client


@pytest.fixture(scope="module")
def cluster(bucket: tuple[str, object]) -> Iterator[Cluster]:
    """Two nodes; each has the object store's credentials in its environment, as every node of a real cluster
    needs them (or an instance role): Ray's workers, Serve's replicas among them, inherit the node's."""
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths must stay short
    port, client_port = s3server.free_port(), s3server.free_port()
    ray = str(BIN / "ray")
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    # Ray's token authentication stays on (the nodes share the token)
    env = {**os.environ, "RAY_AUTH_MODE": "token", **s3server.environment(bucket[0])}
    try:
        subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                        f"--temp-dir={temp}", f"--ray-client-server-port={client_port}", *common,
                        *_agent_ports()], check=True, capture_output=True, timeout=120, env=env)
        subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"trainer": 1}',
                        *common, *_agent_ports()], check=True, capture_output=True, timeout=120, env=env)
        nodes = _nodes(f"127.0.0.1:{port}")
        trainer = next(n["id"] for n in nodes if n["resources"].get("trainer"))
        head = next(n["id"] for n in nodes if not n["resources"].get("trainer"))
        yield Cluster(f"127.0.0.1:{port}", f"ray://127.0.0.1:{client_port}", temp, head, trainer)
    finally:
        for proc in _processes_of(temp):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture(scope="module")
def external_redis(redis_url: str) -> str:
    """The tests' Redis, on a database of its own (emptied first: an earlier run may have left keys there)."""
    url = re.sub(r"/\d+$", "/13", redis_url)
    redis.Redis.from_url(url).flushdb()
    return url


def _env(cluster: Cluster, endpoint: str, redis_url: str, home: Path, port: int, **extra: str) -> dict[str, str]:
    """`clreg up`'s environment: the recipe's variables and nothing else of the tests' stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLREG_", "AWS_"))}
    env.update(s3server.environment(endpoint))
    env.update({"CLREG_HOME": str(home), "CLREG_RAY__ADDRESS": cluster.address,
                "CLREG_REDIS__URL": redis_url, "CLREG_REDIS__PREFIX": "cluster",
                "CLREG_ARTIFACTS_URL": f"s3://{BUCKET}/artifacts", "CLREG_SEARCH__RESOURCE": "trainer",
                "CLREG_SERVE__PORT": str(port), "CLREG_SERVE__PROXY_LOCATION": "HeadOnly",
                "CLREG_TRAIN__EPOCHS": "4", "CLREG_WATCH__ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "token",
                **{f"CLREG_{k.upper()}": v for k, v in cheap.ENV.items()}, **extra})
    return env


# Joined as a driver (HEAD:PORT) and as a Ray Client (ray://). A Ray Client `clreg up` failed once in CI when
# Ray's client proxier could not start its per-client server ("Starting Ray client server failed"); clreg
# retries that (clreg/embedded.py: _join).
@pytest.mark.parametrize("joined_as", ["driver", "client"])
def test_two_sites_through_clreg_up_train_on_the_trainer_node_and_store_only_in_the_bucket(
        cluster: Cluster, bucket: tuple[str, object], external_redis: str, tmp_path: Path, joined_as: str) -> None:
    endpoint, s3 = bucket
    port = s3server.free_port()
    env = _env(cluster, endpoint, external_redis, tmp_path / "home", port, CLREG_REDIS__PREFIX=f"cluster-{joined_as}",
               CLREG_ARTIFACTS_URL=f"s3://{BUCKET}/{joined_as}",
               CLREG_RAY__ADDRESS=cluster.address if joined_as == "driver" else cluster.client)
    up = processes.Child(["up"], env, tmp_path / "up.log")
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "home" / "tokens.json").exists() and time.monotonic() < deadline:
            assert up.proc.poll() is None, up.output()[-3000:]
            time.sleep(0.5)
        tokens = json.loads((tmp_path / "home" / "tokens.json").read_text())
        admin = Client(f"http://127.0.0.1:{port}", tokens["admin"])
        admin.wait_ready(timeout_s=180)
        admin.create_model(MODEL, "clreg.learner.models:small_cnn", (1, 16, 16), classes=10)
        states = []
        # both sites as a driver; one as a Ray Client (its join is what differs; it keeps the suite's time)
        for site in digits_sites(seed=5, names=("base", "contrast") if joined_as == "driver" else ("base",)):
            token = admin.add_site(f"{MODEL}-{site.name}")["token"]
            pushed = admin.push(f"{MODEL}-{site.name}", token,
                                npz_bytes(to_uint8(site.x[:SAMPLES]), site.y[:SAMPLES]), MODEL)
            states.append(admin.wait_batch(pushed["batch_id"], timeout_s=240, served=True))
        assert states[0]["status"] == "promoted" and states[0]["served"], states
        versions = admin.get(f"/v1/models/{MODEL}/versions")
        assert {v["version"]["lineage"]["train_settings"]["node"] for v in versions} == {cluster.trainer}
        production = admin.get(f"/v1/models/{MODEL}/aliases")["aliases"]["production"]
        answer, served = admin.predict(digits_sites(seed=5, names=("base",))[0].x[:2], MODEL)
        assert served == production and len(answer["labels"]) == 2

        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{joined_as}/").get("Contents", [])
        stored = {o["Key"].rsplit("/", 1)[-1] for o in listed}
        digests = {d for v in versions for d in v["version"]["artifacts"].values()}
        assert digests and digests <= stored
        local = [p for root in (tmp_path, cluster.temp) for p in root.rglob("*") if p.name in digests]
        assert local == [] and not (tmp_path / "home" / "artifacts").exists()
        assert up.terminate(timeout_s=60) == 0, up.output()[-3000:]  # SIGTERM stops it cleanly
    finally:
        processes.reap()


def _doctor(env: dict[str, str], tmp_path: Path, node_timeout_s: int = 30) -> tuple[int, list[str]]:
    """`clreg doctor`'s exit code and lines. Nodes that should answer get 30 s: a task on a node may first need
    a worker process started there (seconds on a loaded 2-core machine, more through a Ray Client)."""
    done = subprocess.run([str(BIN / "clreg"), "doctor", "--node-timeout-s", str(node_timeout_s)], env=env,
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    return done.returncode, [line for line in done.stdout.splitlines() if line.strip()]


def test_doctor_names_a_wrong_bucket_a_wrong_password_and_a_node_that_cannot_run_a_task(
        cluster: Cluster, bucket: tuple[str, object], external_redis: str, tmp_path: Path) -> None:
    endpoint, _ = bucket
    env = _env(cluster, endpoint, external_redis, tmp_path / "home", s3server.free_port())
    # through a Ray Client this time: the checks still run as tasks pinned to each node
    code, lines = _doctor({**env, "CLREG_ARTIFACTS_URL": "s3://no-such-bucket/a", "CLREG_RAY__ADDRESS": cluster.client},
                          tmp_path)
    wrong = [line for line in lines if "no-such-bucket" in line]
    assert code == 1 and len(wrong) == 3 and all("does not exist" in line for line in wrong), lines  # here + 2 nodes

    bad = re.sub(r"^(rediss?://)(?:[^@/]*@)?", r"\1:not-the-password@", env["CLREG_REDIS__URL"])
    code, lines = _doctor({**env, "CLREG_REDIS__URL": bad}, tmp_path)
    failed = [line for line in lines if "redis" in line.lower() and "not-the-password" not in line]
    assert code == 1 and failed and all("***" in line for line in failed if "@" in line), lines

    raylet = next(p for p in _processes_of(cluster.temp) if p.name() == "raylet"
                  and any(cluster.trainer[:8] in part or "trainer" in part for part in p.cmdline()))
    raylet.send_signal(signal.SIGSTOP)
    try:
        code, lines = _doctor(env, tmp_path, node_timeout_s=15)  # the other node's worker starts on a busy machine
    finally:
        raylet.send_signal(signal.SIGCONT)
    stuck = [line for line in lines if "cannot run a task" in line]
    assert code == 1 and len(stuck) == 1, lines
