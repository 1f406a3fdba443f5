"""Sweeps on a real local Ray (2 CPUs) with a real SQLite MLflow: trials, ASHA, MLflow parent/children, pictures,
best.yaml, resume after an interrupt, one-line errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import pytest

from etc_core.config import load_config
from etc_core.tracking.registry import logged_model_id
from etc_core.sweep.run import release_orphaned_placement_groups, run_sweep, sweep_name
from tests.conftest import REPO, mlflow_server, run_dirs, run_python

pytestmark = pytest.mark.integration

TINY_TRAIN = ["student.arch=lraspp_mobilenetv3", "train.batch_size=2", "train.val_batch_size=4", "train.pictures=0",
              "train.max_steps=4", "train.steps_per_epoch=2", "train.workers=1", "student.loss.kd_pixel_weight=0",
              "student.loss.kd_temporal_weight=0"]  # no distillation: no teacher needed


@pytest.mark.slow
def test_asha_sweep_logs_parent_children_pictures_and_best_yaml(tiny_shards, tmp_path):
    # grid order fixes which trial runs first: lr 0.05 learns (mIoU ~14 after 2 steps), the tiny ones do not,
    # so ASHA (grace period 1 epoch of 2) stops them at the first rung
    space = ("{train.lr: {type: grid, values: [0.05, 0.000001, 0.0000001]}, "
             "student.loss.tc_weight: {type: loguniform, low: 0.01, high: 1.0}}")
    # the demo's resource shape (configs/demo.yaml): a 2-CPU Train worker and a trial driver of 0 CPUs fit 2 cores
    cfg = load_config(None, [*tiny_shards, *run_dirs(tmp_path), *TINY_TRAIN, "train.cpus_per_worker=2",
                             "sweep.cpus_per_trial=0", "sweep.num_samples=1",
                             "sweep.search=random", "sweep.scheduler=asha", "sweep.grace_period=1",
                             f"sweep.space={space}", "sweep.metric=val_miou", "sweep.register_best=true"])
    summary = run_sweep(cfg)
    trials = summary["trials"]
    assert len(trials) == 3 and not summary["restored"] and all(t.error is None for t in trials)
    epochs = {t.values["train.lr"]: len(t.history) for t in trials}
    assert epochs[0.05] == 2 and min(epochs.values()) == 1  # ASHA stopped at least one trial early
    for t in trials:  # every report carries both objectives and the score
        assert {"val_miou", "val_tc", "val_score", "step"} <= set(t.final)
    best = summary["best"]
    assert best.values["train.lr"] == 0.05 and best.trial_id in summary["front"]

    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["etc.stage"] == "sweep" and parent.data.tags["etc.sweep"] == sweep_name(cfg)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 3 and set(summary["child_run_ids"].values()) == {c.info.run_id for c in children}
    for child in children:
        trial = next(t for t in trials if t.trial_id == child.data.tags["etc.trial_id"])
        assert float(child.data.params["train.lr"]) == trial.values["train.lr"]
        assert float(child.data.params["student.loss.tc_weight"]) == trial.values["student.loss.tc_weight"]
        history = client.get_metric_history(child.info.run_id, "val/miou")
        assert [m.step for m in history] == [int(r["step"]) for r in trial.history]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/pareto_miou_tc.png", "sweep/val_miou_vs_train.lr.png",
                         "sweep/val_miou_vs_student.loss.tc_weight.png", "sweep/best.yaml"}

    best_yaml = Path(summary["best_yaml"])
    assert load_config(best_yaml) == best.config  # train_student.py --config best.yaml trains this config
    assert best.config.student.loss.tc_weight == best.values["student.loss.tc_weight"]
    local = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="sweep/best.yaml",
                                                tracking_uri=cfg.mlflow.tracking_uri, dst_path=str(tmp_path / "dl"))
    assert load_config(local) == best.config
    registered = summary["registered"]  # sweep.register_best: the best trial's best checkpoint, in its child run
    version = client.get_model_version(registered.name, registered.version)
    assert registered.name == "etc-student-lraspp_mobilenetv3" and version.run_id == summary["child_run_ids"][
        best.trial_id]


@pytest.mark.slow
def test_a_sweep_on_s3_storage_with_a_server_logs_trials_live_and_registers_its_best(tiny_shards, moto_s3, tmp_path):
    """train.storage_path=s3://... (moto, at s3.endpoint_url) and an MLflow server: the trial opens its child run and
    its Ray Train worker logs to it while the sweep runs (before the driver logs the sweep's summary); the best
    trial's checkpoint is read back through the filesystem Ray Train stored it on and registered in that run."""
    from etc_core.storage import uri as storage

    storage.s3_client(moto_s3).create_bucket(Bucket="etc-sweep")
    with mlflow_server(f"{tmp_path}/server/mlflow.db", tmp_path / "server" / "artifacts") as server:
        cfg = load_config(None, [*tiny_shards, *run_dirs(tmp_path), *TINY_TRAIN, "train.cpus_per_worker=2",
                                 "sweep.cpus_per_trial=0", "sweep.num_samples=1", "sweep.search=random",
                                 "sweep.scheduler=fifo", "sweep.space={train.lr: {type: grid, values: [0.05]}}",
                                 "sweep.metric=val_miou", "sweep.register_best=true", f"mlflow.tracking_uri={server}",
                                 "train.storage_path=s3://etc-sweep/ray", f"s3.endpoint_url={moto_s3}"])
        summary = run_sweep(cfg)
        assert [t.error for t in summary["trials"]] == [None]
        kept = [r["checkpoint_path"] for r in summary["best"].history if "checkpoint_path" in r]
        assert kept and all(p.startswith("etc-sweep/ray/") for p in kept)  # on S3, not on this disk
        client = mlflow.MlflowClient(server)
        child = summary["child_run_ids"][summary["best"].trial_id]
        registered = summary["registered"]
        assert client.get_model_version(registered.name, registered.version).run_id == child
        children = client.search_runs([client.get_run(child).info.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}'")
        assert [c.info.run_id for c in children] == [child]  # the trial's own run, not a second one after it
        live = client.get_metric_history(child, "val/miou")  # logged by the trial's rank-0 worker
        summary_at = client.get_metric_history(summary["parent_run_id"], "sweep/trials")[0].timestamp
        assert [m.step for m in live] == [int(r["step"]) for r in summary["best"].history]
        assert max(m.timestamp for m in live) < summary_at  # while the sweep ran, not after it
        assert client.get_run(child).data.params["train.lr"] == "0.05"
        # the best trial's model card has the FPS its rank-0 worker timed while it trained, not a second timing
        timed = min(client.get_metric_history(child, "fps"), key=lambda m: m.timestamp)
        version = client.get_model_version(registered.name, registered.version)
        on_model = {m.key: m.value for m in client.get_logged_model(logged_model_id(version)).metrics}
        assert on_model["fps"] == pytest.approx(timed.value)


def test_placement_groups_of_a_dead_creator_are_released_and_live_ones_kept(ray_local):
    # what ReleaseStoppedTrials does for a trial ASHA stopped: it reads Ray's private GCS table (no public API says
    # which actor created a placement group), so a Ray upgrade that changes it fails here
    import time

    ray = ray_local
    from ray.util.placement_group import placement_group, remove_placement_group

    @ray.remote(num_cpus=0)
    class Creator:  # stands in for a trial's Ray Train controller, which holds its workers' placement group
        def make(self):
            group = placement_group([{"CPU": 0.01}])
            ray.get(group.ready())
            return group

    live, doomed = Creator.remote(), Creator.remote()
    kept, orphaned = ray.get(live.make.remote()), ray.get(doomed.make.remote())
    ray.kill(doomed)
    deadline, released = time.monotonic() + 30, 0
    while not released and time.monotonic() < deadline:  # the GCS learns of the death asynchronously
        released = release_orphaned_placement_groups()
        time.sleep(0.2)
    assert released == 1
    assert ray.util.placement_group_table(orphaned)["state"] == "REMOVED"
    assert ray.util.placement_group_table(kept)["state"] == "CREATED"
    remove_placement_group(kept)
    ray.kill(live)


def _watch(stream, lines: list[str], completed: threading.Event) -> None:
    for line in stream:
        lines.append(line)
        if " completed after " in line:
            completed.set()


def _final_step(run: Path) -> int:
    """The last reported step of a Ray Train run directory (0 when it has none yet)."""
    import json

    try:
        results = json.loads((run / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return 0
    return max((r["metrics"].get("step", 0) for r in results), default=0)


@pytest.mark.slow
def test_interrupted_sweep_resumes_with_tuner_restore(ray_local, tiny_shards, tmp_path):
    overrides = [*tiny_shards, *run_dirs(tmp_path), *TINY_TRAIN, "sweep.num_samples=2", "sweep.search=optuna",
                 "sweep.scheduler=fifo", "sweep.metric=val_score",
                 "sweep.space={student.loss.tc_weight: {type: loguniform, low: 0.01, high: 1.0}}"]
    cfg = load_config(None, overrides)
    join = f"ray.address={ray_local.get_runtime_context().gcs_address}"  # killing the driver orphans nothing
    proc = subprocess.Popen([sys.executable, "pipelines/sweep.py", *overrides, join], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    out: list[str] = []
    err: list[str] = []
    completed = threading.Event()
    watchers = [threading.Thread(target=_watch, args=(proc.stdout, out, completed), daemon=True),
                threading.Thread(target=_watch, args=(proc.stderr, err, threading.Event()), daemon=True)]
    for w in watchers:
        w.start()
    try:
        assert completed.wait(timeout=180), "".join(out)[-3000:]
        assert proc.poll() is None, "the sweep finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    for w in watchers:
        w.join(timeout=10)
    stderr = "".join(err)
    assert proc.returncode == 1 and "SweepError: " in stderr and "rerun the same command to resume" in stderr, \
        stderr[-3000:]
    train_runs = Path(cfg.train.storage_path) / f"{sweep_name(cfg)}-train"
    finished = [run for run in train_runs.iterdir() if _final_step(run) == 4]  # trials done before Ctrl-C
    first = {p: p.stat().st_mtime_ns for run in finished for p in run.glob("checkpoint_*") if p.is_dir()}

    summary = run_sweep(cfg)  # the same config again: Tuner.restore, not a new sweep
    assert summary["restored"] and len(summary["trials"]) == 2
    assert all(t.error is None and t.final["step"] == 4 for t in summary["trials"])
    assert first and all(p.exists() and p.stat().st_mtime_ns == stamp for p, stamp in first.items()), \
        "a trial that had finished before the interrupt was trained again"
    assert len({t.trial_id for t in summary["trials"]}) == 2


def test_bad_search_space_entry_is_one_line_exit_2(tmp_path):
    proc = run_python("pipelines/sweep.py", *run_dirs(tmp_path),
                      "sweep.space={student.loss.tc_wieght: {type: loguniform, low: 0.01, high: 1.0}}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ConfigError: sweep.space.student.loss.tc_wieght: 0.01 is not a valid value")
    assert "did you mean tc_weight" in last
