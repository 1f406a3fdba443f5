"""pipelines/full.py's stages on a rerun: --force redoes a stage (and what depends on it), --force sweep starts a
fresh sweep instead of restoring the finished one."""
import glob

import pytest

from etc_core.config import load_config
from etc_core.pipeline import run_pipeline
from tests.conftest import TINY_DATA, run_dirs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = [*TINY_DATA, "teacher.arch=pspnet18_slim", "student.arch=lraspp_mobilenetv3", "train.max_steps=2",
        "train.steps_per_epoch=2", "train.batch_size=2", "train.crop=null", "train.pictures=0",
        "pipeline.ptlflow_timing_pairs=0", "pipeline.baseline=false", "student.loss.kd_pixel_weight=0",
        "student.loss.kd_temporal_weight=0"]


def test_reruns_retrain_only_what_was_forced(ray_local, tmp_path):
    base = [f"data.root={tmp_path}/data", f"shards.uri={tmp_path}/shards", *run_dirs(tmp_path), *TINY]
    first = run_pipeline(load_config(None, base))
    assert first.ran == ["flow", "teacher", "student", "evaluate"]

    # a student-only change retrains the student alone: test_doc_examples (quickstart's student.train.max_steps line)
    forced = run_pipeline(load_config(None, base), force=("teacher",))  # the student learns from the new teacher
    assert (forced.ran, forced.skipped) == (["teacher", "student", "evaluate"], ["flow"])
    assert forced.models["teacher"].version == "2"  # a new version from a fresh Ray Train run, not the finished one
    assert len(glob.glob(f"{tmp_path}/ray_results/teacher-*")) == 2 and \
        len(glob.glob(f"{tmp_path}/ray_results/teacher-*-*-*")) == 1  # the forced run's name carries its start time

    # a one-point space at the config's own value: the sweep's best is the student trained above, which each run
    # after the sweep reuses (what is checked here is the sweep's restore and --force, not a second student)
    sweep = [*base, "pipeline.sweep=true", "sweep.num_samples=1", "sweep.search=random", "sweep.scheduler=fifo",
             "sweep.space={student.loss.tc_weight: {type: choice, values: [0.1]}}", "student.loss.tc_weight=0.1"]
    swept = run_pipeline(load_config(None, sweep))
    assert (swept.ran, swept.skipped) == (["sweep", "evaluate"], ["flow", "teacher", "student"])
    restored = run_pipeline(load_config(None, sweep))  # restored: no second sweep folder
    assert len(glob.glob(f"{tmp_path}/ray_results/sweep-*-best.yaml")) == 1 and "student" in restored.skipped
    run_pipeline(load_config(None, sweep), force=("sweep",))
    assert len(glob.glob(f"{tmp_path}/ray_results/sweep-*-best.yaml")) == 2
