"""Bad input is found before any work, by every entry point: one line, exit 2, no Ray started, no MLflow store.

And the cluster check right after Ray starts: a request no cluster here can hold is one line (exit 2) instead of a
silent wait; relative paths are refused where they would name another folder on another node.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from etc_core import cluster_check
from etc_core.config import load_config
from etc_core.errors import ConfigError
from tests.conftest import REPO, run_dirs
from tests.reliability._inputs import ETC, assert_one_line_error, outputs_under, run

pytestmark = pytest.mark.integration

PY = sys.executable


def _mismatched_inputs(root):
    """A generated-dataset folder and a shard set, each made (by their manifests) with other settings."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "dataset.json").write_text(json.dumps({"format": 1, "spec": {"height": 40}, "splits": {}}))
    (root / "shards").mkdir()
    (root / "shards" / "manifest.json").write_text(json.dumps(
        {"format": "etc-shards-v1", "config_hash": "other", "config": {"data": {"height": 40}}, "splits": {}}))
    return [f"data.root={root}/data", f"shards.uri={root}/shards", *run_dirs(root / "out")]


# (argv, error class, fragments of the one line)
CASES = {
    "full_force_sweep_without_sweep": (["pipelines/full.py", "--force", "sweep"], "ConfigError",
                                       ["--force sweep: pipeline.sweep is false"]),
    "full_data_root_of_other_settings": (["pipelines/full.py", "pipeline.ptlflow_timing_pairs=0"], "DatasetError",
                                         ["data/dataset.json: generated with data."]),
    "flow_shards_of_other_config": (["pipelines/precompute_flow.py", "data.root={root}/fresh"], "ConfigError",
                                    ["holds shards made with data.height=40, this config has 96"]),
    "sweep_without_shards": (["pipelines/sweep.py", "shards.uri={root}/none"], "ShardError",
                             ["none/manifest.json: not found"]),
    "cli_make_dataset_other_settings": ([*ETC[1:], "make-dataset"], "DatasetError",
                                        ["data/dataset.json: generated with data."]),
    "cli_evaluate_missing_shards": ([*ETC[1:], "evaluate", "--model", "{root}/none.pt", "--shards", "{root}/none"],
                                    "ShardError", ["none/manifest.json: not found"]),  # the source before the model
}


@pytest.mark.slow
def test_every_entry_point_refuses_bad_input_before_ray_with_exit_2(tmp_path):
    def one(name):
        root = tmp_path / name
        overrides = _mismatched_inputs(root)
        argv = [a.replace("{root}", str(root)) for a in CASES[name][0]]
        own = [a for a in argv if "=" in a]  # the case's own overrides come last: they win
        overrides = [] if "evaluate" in argv else overrides
        return run([PY, *[a for a in argv if a not in own], *overrides, *own], timeout=600)  # a busy box

    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(CASES, pool.map(one, CASES)))
    for name, proc in procs.items():
        _, cls, fragments = CASES[name]
        assert_one_line_error(proc, cls, *fragments, code=2)
        assert "started a local Ray" not in proc.stderr, name
        assert not [f for f in outputs_under(tmp_path / name) if "mlflow" in f or "ray_results" in f], name


@pytest.mark.slow
def test_a_request_larger_than_the_cluster_is_one_line_not_a_silent_wait(tiny_shards, tmp_path):
    proc = run([PY, "pipelines/train_teacher.py", *tiny_shards, *run_dirs(tmp_path), "ray.num_cpus=2",
                "train.workers=2", "train.cpus_per_worker=2"])
    assert_one_line_error(proc, "ConfigError", "teacher: train.workers=2 x train.cpus_per_worker=2 asks for 4 CPU",
                          "this Ray cluster has 2 CPU", code=2)
    assert not (tmp_path / "ray_results").exists()  # no Ray Train run began


def test_demo_sweep_fits_two_cores_and_a_bigger_trial_does_not(ray_local):
    assert ray_local.cluster_resources()["CPU"] == 2
    demo = load_config(REPO / "configs" / "demo.yaml", ["pipeline.sweep=true"])
    assert cluster_check.check_cluster(demo, ("teacher", "baseline", "student"), sweep=True) is None
    bigger = load_config(REPO / "configs" / "demo.yaml", ["sweep.cpus_per_trial=1"])
    with pytest.raises(ConfigError, match=r"one sweep trial: sweep.cpus_per_trial=1 \+ train.workers=1 x "
                                          r"train.cpus_per_worker=2 asks for 3 CPU; this Ray cluster has 2 CPU"):
        cluster_check.check_cluster(bigger, sweep=True)
    student_only = load_config(REPO / "configs" / "demo.yaml", ["student.train.workers=2"])
    with pytest.raises(ConfigError, match=r"student: with student.train overrides \['workers'\]"):
        cluster_check.check_cluster(student_only, ("teacher", "student"))


def test_waiting_for_an_autoscaler_says_what_every_interval(ray_local, caplog, monkeypatch):
    monkeypatch.setattr(cluster_check, "WAIT_LOG_S", 0.2)
    caplog.set_level(logging.INFO, logger="etc_core.cluster_check")
    waiting = [("teacher: train.workers=4 x train.cpus_per_worker=2", {"CPU": 8.0, "GPU": 0.0})]
    threading.Thread(target=cluster_check._log_wait, args=(waiting,), daemon=True).start()
    from tests.conftest import wait_for

    wait_for(lambda: len([r for r in caplog.records if "waiting for the autoscaler" in r.message]) >= 2, 20,
             "two waiting lines")
    line = next(r.message for r in caplog.records if "waiting for the autoscaler" in r.message)
    assert line == ("waiting for the autoscaler: teacher: train.workers=4 x train.cpus_per_worker=2 needs 8 CPU, "
                    "the cluster has 2 CPU now")


def test_relative_paths_are_refused_where_nodes_differ(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"data.root={tmp_path}/abs"])
    assert ("data.root", f"{tmp_path}/abs") not in cluster_check.relative_paths(cfg)
    assert ("shards.uri", "runs/demo/shards") in cluster_check.relative_paths(cfg)
    cluster_check._check_paths(cfg, nodes=1, autoscaled=False)  # one node: resolved where the command started
    for nodes, autoscaled, span in ((3, False, "3 nodes"), (1, True, "an autoscaler")):
        with pytest.raises(ConfigError, match=rf"shards.uri: 'runs/demo/shards' is relative and this Ray cluster "
                                              rf"has {span}"):
            cluster_check._check_paths(cfg, nodes=nodes, autoscaled=autoscaled)
    absolute = load_config(None, [f"{k}={tmp_path}/{k}" for k in ("data.root", "shards.uri", "train.storage_path",
                                                                 "mlflow.artifact_root")]
                           + [f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"])
    cluster_check._check_paths(absolute, nodes=3, autoscaled=True)
