"""A real local Ray: every port on 127.0.0.1, and the dataset stage fanned out over Ray tasks."""
import os

import numpy as np
import psutil
import pytest

from etc_core.config import DataConfig
from etc_core.data import write_dataset
from tests.conftest import TINY_DATA, run_dirs, run_python

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
def test_full_pipeline_starts_its_own_local_ray(tmp_path):
    """`python pipelines/full.py` without a cluster: starts Ray on 127.0.0.1, runs every stage, prints the table."""
    proc = run_python("pipelines/full.py", "--config", "configs/demo.yaml", f"data.root={tmp_path}/data",
                      f"shards.uri={tmp_path}/shards", *run_dirs(tmp_path), *TINY_DATA, "ray.num_cpus=2",
                      "teacher.arch=pspnet18_slim", "student.arch=lraspp_mobilenetv3", "train.max_steps=2",
                      "train.steps_per_epoch=2", "train.batch_size=2", "train.crop=null", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "started a local Ray on 127.0.0.1" in proc.stderr
    assert "stages run: flow, teacher, baseline, student, evaluate; reused: -" in proc.stdout
    table = proc.stdout.split("stages run:")[1]
    for row in ("teacher:etc-teacher/1", "baseline:etc-baseline-lraspp_mobilenetv3/1",
                "student:etc-student-lraspp_mobilenetv3/1"):
        assert row in table
    for name in ("ground truth", "stride-8 oracle"):  # the reference rows, on the test split
        assert name in table
    assert "TC-noc" in table and "flick-int" in table
    # demo.yaml's student fine-tunes the baseline this run trained (student.init_from: baseline)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`etc.stage` = 'student'")
    assert [r.data.params["student.init_from"] for r in runs] == ["models:/etc-baseline-lraspp_mobilenetv3/1"]
    assert "ptlflow rapidflow_it1 (random init, timing only)" in proc.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout and "--host 127.0.0.1" in proc.stdout
