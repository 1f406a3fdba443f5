"""What a stage or a sweep trial asks of the cluster is computed once (etc_core/train/config.py): the resource check
before any work (etc_core/cluster_check.py) and the sweep's concurrency (etc_core/sweep/run.py) read the same."""
from __future__ import annotations

import inspect

from etc_core import cluster_check
from etc_core.config import load_config
from etc_core.train.config import trial_resources, worker_resources
from tests.conftest import REPO


def test_a_sweep_trial_asks_its_driver_plus_the_students_workers_with_student_overrides():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["sweep.cpus_per_trial=0.5", "train.workers=1",
                                                       "train.cpus_per_worker=2", "student.train.workers=3"])
    assert trial_resources(cfg) == {"CPU": 0.5 + 3 * 2, "GPU": 0.0}
    gpu = load_config(REPO / "configs" / "demo.yaml", ["train.use_gpu=true", "train.workers=2"])
    assert worker_resources(gpu.train) == {"CPU": 2 * gpu.train.cpus_per_worker, "GPU": 2.0}
    checked = dict((what.split(":")[0], need) for what, need in cluster_check.requests(cfg, ("teacher",), sweep=True))
    assert checked["one sweep trial"] == trial_resources(cfg)
    assert checked["teacher"] == {"CPU": 2.0, "GPU": 0.0}


def test_the_sweep_sizes_its_concurrency_from_the_same_request():
    from etc_core.sweep import run

    assert "trial_resources(cfg)" in inspect.getsource(run._concurrency)


def test_the_private_ray_name_the_cluster_check_reads_is_still_there():
    # etc_core/cluster_check.py asks what an autoscaler can reach through Ray's private GlobalState (no public API
    # says it); Ray Train's own pre-check reads the same, so a Ray upgrade that drops it breaks both loudly here
    from ray._private.state import state
    from ray.train.v2._internal.execution.worker_group import worker_group

    assert callable(state.get_max_resources_from_cluster_config)
    assert "get_max_resources_from_cluster_config" in inspect.getsource(worker_group)


def test_the_paths_checked_on_every_node_are_those_workers_read(tmp_path):
    """Shards and Ray Train storage when anything trains, the data root and a flow checkpoint file when the flow
    stage may run; s3:// and the backbone weights (the driver reads those) are never looked for on the nodes."""
    ckpt = tmp_path / "raft.ckpt"
    ckpt.write_bytes(b"x")
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"data.root={tmp_path}/data", f"shards.uri={tmp_path}/shards", "train.storage_path=s3://b/ray",
        f"student.train.storage_path={tmp_path}/student_ray", "flow.source=ptlflow", f"flow.weights={ckpt}",
        f"teacher.pretrained={ckpt}"])
    assert cluster_check.worker_paths(cfg, (), False, flow=True) == [
        ("data.root", f"{tmp_path}/data"), ("flow.weights", str(ckpt)), ("shards.uri", f"{tmp_path}/shards")]
    assert cluster_check.worker_paths(cfg, ("teacher", "student"), False, flow=False) == [
        ("shards.uri", f"{tmp_path}/shards"), ("student: train.storage_path", f"{tmp_path}/student_ray")]
    assert cluster_check.worker_paths(cfg, (), True, flow=False)[-1] == ("student: train.storage_path",
                                                                         f"{tmp_path}/student_ray")
    assert cluster_check.worker_paths(cfg, (), False, flow=False) == []
