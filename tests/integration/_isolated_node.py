"""A Ray worker node that does not see one folder of this machine: run as
`unshare -m --propagation private python -m tests.integration._isolated_node GCS_ADDRESS HIDDEN_DIR`; it mounts an
empty tmpfs over HIDDEN_DIR in its own mount namespace, then joins the cluster at GCS_ADDRESS on 127.0.0.1 as node
`isolated` (1 CPU) the way ray.cluster_utils.Cluster.add_node starts its worker nodes, and stays until SIGTERM.
`ray start --address` would refuse (it takes a multi-node cluster on this platform only with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, which also makes Ray listen beyond 127.0.0.1)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading


def main() -> None:
    gcs_address, hidden = sys.argv[1], sys.argv[2]
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", hidden], check=True)
    import ray._private.node
    import ray._private.parameter

    params = ray._private.parameter.RayParams(
        gcs_address=gcs_address, node_ip_address="127.0.0.1", num_cpus=1, num_gpus=0, node_name="isolated",
        object_store_memory=150 * 1024 * 1024, min_worker_port=0, max_worker_port=0, include_log_monitor=False,
        node_manager_port=0, resources={"isolated": 1})
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print("joined", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    node.kill_all_processes(check_alive=False, allow_graceful=True)


if __name__ == "__main__":
    main()
