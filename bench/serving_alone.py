"""The serving row a user meets: the whole stack as `clreg up` starts it, against a bare Ray Serve deployment of the
same network alone on the box, one at a time, the same clients (bench/serving.py --alone).

`clreg up` runs in its own home with default settings (its daemon, gateway, Valkey, replicas, polls, recorders and
jobs all there, idle); the small CNN with a 3-site BatchNorm bank and per-site temperatures is registered as its
production version. The bare side is another process: its own local Ray and Serve on another port serving the same
weights (parse the JSON, run the network, answer), nothing else. Sides alternate by round; each starts anew.
Run as a server: python bench/serving_alone.py --serve-bare PORT WEIGHTS (used by the benchmark itself).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port  # noqa: E402
from clreg import embedded  # noqa: E402
from clreg.memory import process_name  # noqa: E402
from clreg.registry.artifacts import ArtifactStore  # noqa: E402
from clreg.registry.connection import StoreConfig  # noqa: E402
from clreg.registry.store import RedisRegistry  # noqa: E402
from clreg.serving.config import ServingConfig  # noqa: E402
from clreg.settings import Settings  # noqa: E402

MODEL, SIDE = "small", 16
IDLE_S = 10.0  # each side's processes watched at rest, answered and warm, before its load


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT to the side's process group (clreg up stops its stack on it), then SIGKILL to whatever is left."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    time.sleep(2)  # the ports and the cores are free again


def _wait_answering(url: str, timeout_s: float = 240) -> None:
    """Until one prediction of the model is answered 200 (the replica has loaded the production version)."""
    from bench.serving import warm

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, params={"model": MODEL}, json={"inputs": [[[0.0] * SIDE] * SIDE], "site": "a"},
                          timeout=10).status_code == 200:
                warm(url, MODEL, SIDE)
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def _clreg_up(home: Path, port: int, weights_file: Path) -> subprocess.Popen:
    """`clreg up` on `home`; the first time, the model is registered and its weights written to `weights_file`."""
    from bench.serving import register

    env = {**os.environ, "CLREG_HOME": str(home), "CLREG_SERVE__PORT": str(port)}
    up = _start([str(Path(sys.executable).parent / "clreg"), "up"], env)
    if not weights_file.exists():
        settings = Settings(home=home)
        deadline = time.monotonic() + 120
        while True:
            try:
                reg = RedisRegistry(StoreConfig(url=embedded.redis_url(settings), prefix=settings.redis.prefix))
                reg.list_models()
                break
            except Exception:  # noqa: BLE001 - Valkey not up yet: any refusal means wait
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        weights_file.write_bytes(register(reg, ArtifactStore(settings.artifacts()), MODEL, SIDE, 1))
    return up


def _bare(port: int, weights_file: Path) -> subprocess.Popen:
    return _start([sys.executable, __file__, "--serve-bare", str(port), str(weights_file)], dict(os.environ))


def run(seconds: float, rounds: int, clients: tuple[int, ...]) -> list[dict[str, Any]]:
    """Every (round, side, clients) cell; the sides one at a time, alternating which goes first."""
    from bench.serving import load

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home, weights_file = Path(tmp) / "home", Path(tmp) / "weights.safetensors"
        for r in range(rounds):
            for side in (("clreg up", "bare alone") if r % 2 == 0 else ("bare alone", "clreg up")):
                port = free_port()
                proc = _clreg_up(home, port, weights_file) if side == "clreg up" else _bare(port, weights_file)
                url = f"http://127.0.0.1:{port}/v1/predict" if side == "clreg up" else f"http://127.0.0.1:{port}/bare"
                try:
                    _wait_answering(url)
                    rows.append({"round": r, "side": side, "idle_cpu": idle_cpu(proc.pid, IDLE_S)})
                    for k in clients:
                        rows.append({"round": r, "side": side, "clients": k, **load(url, MODEL, SIDE, k, seconds)})
                        print(rows[-1], file=sys.stderr)
                finally:
                    _stop(proc)
    return rows


def idle_cpu(root: int, seconds: float) -> dict[str, float]:
    """What each process of a side's tree used of one core while no request came, by process name (summed over
    processes of one name), largest first: the share of the box a side takes before it answers anything."""
    procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]

    def used() -> dict[int, tuple[str, float]]:
        out = {}
        for proc in procs:
            try:
                t = proc.cpu_times()
                out[proc.pid] = (process_name(proc), t.user + t.system)
            except psutil.Error:  # ended meanwhile
                continue
        return out

    before = used()
    time.sleep(seconds)
    shares: dict[str, float] = {}
    for pid, (name, spent) in used().items():
        if pid in before:
            shares[name] = shares.get(name, 0.0) + (spent - before[pid][1]) / seconds
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def serve_bare(port: int, weights_file: Path) -> None:
    """The bare side's process: a private local Ray and Serve on `port`, the Bare deployment, until SIGINT."""
    import ray
    from ray import serve

    from bench.serving import Bare

    os.environ.setdefault("RAY_worker_niceness", "0")  # as clreg starts Ray
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServingConfig()
    bare = serve.deployment(name="Bare", max_ongoing_requests=cfg.max_ongoing_requests,
                            ray_actor_options={"num_cpus": 0})(Bare)
    serve.run(bare.bind({MODEL: (SIDE, 1, weights_file.read_bytes())}), name="bare", route_prefix="/bare")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    os._exit(0)  # the group's SIGINT stops Ray's processes; the caller kills what is left


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "WEIGHTS"), required=True)
    args = parser.parse_args()
    serve_bare(int(args.serve_bare[0]), Path(args.serve_bare[1]))
