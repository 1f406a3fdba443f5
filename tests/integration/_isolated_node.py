"""A Ray worker node that does not see some folders of this machine, with a home, torch cache, temp dir and working
directory of its own (its log: <home>/node.log): `start(gcs_address, hidden, home)` runs this module under `unshare -m --propagation private`;
it mounts an empty tmpfs over each hidden folder in its own mount namespace, then joins the cluster at gcs_address on
127.0.0.1 the way ray.cluster_utils.Cluster.add_node starts its worker nodes, and stays until SIGTERM.
`ray start --address` would refuse (it takes a multi-node cluster on this platform only with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, which also makes Ray listen beyond 127.0.0.1)."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


def start(gcs_address: str, hidden: list[Path], home: Path, cpus: int = 1, resources: dict | None = None,
          name: str = "isolated", tries: int = 2, timeout: float = 180) -> subprocess.Popen:
    """The node's process, once it has joined (its raylet and workers are its descendants). A node that dies before
    joining is started again once (a CI run saw one abort in Ray's C++ while joining, on a loaded machine); the
    first failure's cause goes to stderr, the last one's to the AssertionError."""
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "TORCH_HOME": str(home / "torch"), "TMPDIR": str(home),
           "XDG_CACHE_HOME": str(home / "cache"), "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and "RAY_AUTH_TOKEN" not in os.environ:
        # A cluster with token authentication (Ray's default for a new local cluster when RAY_AUTH_MODE is unset: an
        # earlier ray.init in this process set it): a second machine is given the cluster's token; its own home has none
        env.setdefault("RAY_AUTH_TOKEN_PATH", str(Path.home() / ".ray" / "auth_token"))
    for attempt in range(1, tries + 1):
        proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", sys.executable, "-m",
                                 "tests.integration._isolated_node", gcs_address, json.dumps([str(h) for h in hidden]),
                                 str(cpus), json.dumps(resources or {}), name],
                                cwd=home, env=env, stdout=subprocess.PIPE, stderr=open(home / "node.log", "w"),
                                text=True)
        # the one line it prints (nothing fills the pipe afterwards); Ray retries an unreachable GCS for ever
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline().strip() if ready else f"nothing after {timeout} s"
        if line == "joined":
            return proc
        stop(proc, kill=True)
        log = (home / "node.log").read_text().splitlines()
        cause = [t for t in log if "Check failed" in t or "rror" in t or "Failed" in t][:10]  # above the stack trace
        failure = (f"the isolated node did not join (try {attempt}/{tries}): {line!r}; its log says {cause} ... "
                   f"{log[-8:]}")
        print(failure, file=sys.stderr, flush=True)
    raise AssertionError(failure)


def tree(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        parent = psutil.Process(proc.pid)
        return [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return []


def raylet_pid(proc: subprocess.Popen) -> int:
    return next(p.pid for p in tree(proc) if p.name() == "raylet")


def stop(proc: subprocess.Popen, kill: bool = False) -> None:
    """End the node: SIGKILL to every process of it at once (kill: a lost machine), else SIGTERM, then SIGKILL."""
    procs = tree(proc)
    for p in procs:
        try:
            p.kill() if kill else p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        p.kill()
    proc.wait(timeout=20)


def main() -> None:
    gcs_address, hidden, cpus, resources, name = sys.argv[1:6]
    for folder in json.loads(hidden):
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", folder], check=True)
    import ray._private.node
    import ray._private.parameter

    params = ray._private.parameter.RayParams(
        gcs_address=gcs_address, node_ip_address="127.0.0.1", num_cpus=int(cpus), num_gpus=0, node_name=name,
        object_store_memory=150 * 1024 * 1024, min_worker_port=0, max_worker_port=0, include_log_monitor=False,
        node_manager_port=0, resources=json.loads(resources))
    params.dashboard_agent_listen_port = None  # a free port, not the head's 52365 (as Cluster.add_node does)
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print("joined", flush=True)
    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    stop_event.wait()
    node.kill_all_processes(check_alive=False, allow_graceful=True)


if __name__ == "__main__":
    main()
