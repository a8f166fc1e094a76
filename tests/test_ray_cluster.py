"""A real two-node Ray cluster on this machine: `ray start --head`, a second node joining with `ray start --address`,
and a sweep sent to it with `--executor ray --address`. Its table must equal the in-process one.

Skipped when Ray is not installed. Both nodes are started with ``--block`` in their own process groups and stopped
by signalling those groups, so the test never runs ``ray stop`` (which would stop every Ray node of this user).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_sweep import CONFIG, comparable

from modeconnect.experiments.sweep import run_sweep

pytest.importorskip("ray")
RAY = Path(sys.executable).with_name("ray")
pytestmark = pytest.mark.skipif(not RAY.exists(), reason=f"no ray command next to {sys.executable}")

CLUSTER_ENV = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
"""Ray >= 2.5x enables token authentication on `ray start --head`; every process that joins or connects must
then run with RAY_AUTH_MODE=token and see the same token (here ~/.ray/auth_token, written by the head)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(RAY), "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    probe = ("import ray; ray.init(address=%r, log_to_driver=False, configure_logging=False); "
             "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else 0


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture
def two_node_cluster(tmp_path):
    env = {**os.environ, **CLUSTER_ENV}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _start(["--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--include-dashboard", "false"],
                  env, tmp_path / "head.log")
    nodes = [head]
    try:
        deadline = time.monotonic() + 120
        joined = False
        while time.monotonic() < deadline:
            if head.poll() is not None:
                pytest.fail(f"ray head exited: {(tmp_path / 'head.log').read_text()[-2000:]}")
            if not joined and _alive_nodes(address, env) >= 1:
                nodes.append(_start(["--address", address], env, tmp_path / "worker.log"))
                joined = True
            elif joined and _alive_nodes(address, env) >= 2:
                break
            time.sleep(1)
        else:
            logs = "\n".join(p.read_text()[-1500:] for p in tmp_path.glob("*.log"))
            pytest.fail(f"the two-node cluster did not come up in 120 s:\n{logs}")
        yield address, env
    finally:
        for process in reversed(nodes):
            _stop(process)
        # `ray stop` would also forget the cluster's address; signalling the nodes leaves it behind
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.exists() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


def test_a_sweep_on_a_two_node_cluster_equals_the_local_one(two_node_cluster, tmp_path):
    address, env = two_node_cluster
    out = tmp_path / "cluster-sweep"
    levels = ",".join(str(level) for level in CONFIG.levels)
    command = [sys.executable, "-m", "modeconnect", "sweep", "--task", CONFIG.base.task, "--levels", levels,
               "--pairs", str(CONFIG.pairs), "--seed", str(CONFIG.seed), "--executor", "ray", "--address", address,
               "--workers", "2", "--threads", "1", "--no-figures", "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"cluster at {address}" in done.stderr  # the sweep said where its units ran
    cluster_table = json.loads((out / "table.json").read_text())
    local_table = run_sweep(CONFIG, str(tmp_path / "local"))
    assert comparable(cluster_table) == comparable(local_table)
