"""A real local Ray: every port on 127.0.0.1, and the dataset stage fanned out over Ray tasks."""
import os
import subprocess
import sys

import numpy as np
import psutil
import pytest

from etc_core.config import DataConfig
from etc_core.data import write_dataset
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _ray_pids(ray) -> set[int]:
    """PIDs of this session's Ray processes: those naming its session dir, and their descendants (workers).

    Not every process titled `ray::...` on the machine: other programs' Ray clusters are none of our business.
    """
    session_dir = ray._private.worker.global_worker.node.get_session_dir_path()
    pids = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if session_dir in " ".join(proc.info["cmdline"] or []):
            pids.add(proc.info["pid"])
            try:
                pids.update(child.pid for child in proc.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
    return pids


def test_local_ray_listens_only_on_loopback(ray_local):
    ray = ray_local

    @ray.remote
    def pid() -> int:
        return os.getpid()

    worker_pids = set(ray.get([pid.remote() for _ in range(4)]))
    pids = _ray_pids(ray) | {os.getpid()}
    assert worker_pids <= pids  # the workers that ran our tasks are among them
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert len(listening) >= 3  # GCS, raylet, dashboard, workers ... are really there
    addrs = {c.laddr.ip for c in listening}
    assert addrs <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, sorted(addrs)


@pytest.mark.slow
def test_dataset_written_by_ray_tasks_matches_in_process(ray_local, tmp_path):
    kw = dict(num_videos=5, val_fraction=0.4, num_frames=4, height=24, width=32, num_classes=3)
    by_ray = write_dataset(DataConfig(root=str(tmp_path / "ray"), **kw), progress=False)
    ray_local.shutdown()
    try:
        local = write_dataset(DataConfig(root=str(tmp_path / "local"), **kw), progress=False)
    finally:
        from etc_core.config import RayConfig
        from etc_core.ray_utils import init_ray

        init_ray(RayConfig(num_cpus=2))
    for split in ("train", "val", "test"):
        assert by_ray.clip_ids(split) == local.clip_ids(split)
        for clip_id in by_ray.clip_ids(split):
            a, b = by_ray.read_clip(split, clip_id), local.read_clip(split, clip_id)
            assert np.array_equal(a.frames, b.frames) and np.array_equal(a.flows, b.flows)


@pytest.mark.slow
def test_no_address_starts_its_own_ray_even_beside_a_ray_start_cluster(ray_local):
    """Ray's ray.init() without an address joins the cluster whose address `ray start` (or
    ray.cluster_utils.Cluster) left in <temp>/ray/ray_current_cluster, and then refuses num_cpus. init_ray
    without ray.address / RAY_ADDRESS starts its own, as the docs say: here beside ray_local, whose address the
    file names."""
    import shutil
    import tempfile

    temp = tempfile.mkdtemp(prefix="rayaddr", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        os.makedirs(f"{temp}/ray")
        gcs = ray_local.get_runtime_context().gcs_address
        with open(f"{temp}/ray/ray_current_cluster", "w") as f:
            f.write(gcs)
        code = ("import ray; from etc_core.config import RayConfig; from etc_core.ray_utils import init_ray; "
                "ctx = init_ray(RayConfig(num_cpus=1)); print(ctx['address'], ray.cluster_resources()['CPU'])")
        env = {**os.environ, "RAY_TMPDIR": temp, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "PYTHONPATH": str(REPO)}
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        address, cpus = proc.stdout.split()[-2:]
        assert address != gcs and float(cpus) == 1.0
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_model_work_runs_in_a_ray_task_asking_for_a_gpu_only_where_the_cluster_has_one(ray_local):
    """on_worker: the final evaluation and the model card's FPS run as Ray tasks, not in the driver (on a GPU node
    when there is one); without Ray they run in this process."""
    from etc_core.ray_utils import on_worker

    def where() -> tuple[int, list]:
        import ray

        return os.getpid(), ray.get_runtime_context().get_assigned_resources().get("GPU", 0)

    pid, gpus = on_worker(where)
    assert pid != os.getpid() and gpus == 0  # this cluster has no GPU: the task asked for none
    assert ray_local.cluster_resources().get("GPU", 0) == 0
