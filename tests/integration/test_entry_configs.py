"""Every entry point with every shipped config (issue 34, item 2): the config loads and the entry point's checks
before any work pass, or stop with the one line that the config's missing data or missing GPU calls for. Cheap and
in-process: each entry point's check function (etc_core/preflight.py) on each configs/*.yaml, with only path
overrides into tmp_path. The real runs: tests/integration/test_doc_examples.py runs the stages one by one on
configs/demo.yaml at tiny sizes (teacher, then the student, which trains its baseline first; full.py with the
control), test_job_submit.py the pipeline through `ray job submit`."""
from __future__ import annotations

import pytest
import torch

from etc_core import preflight
from etc_core.config import load_config
from etc_core.errors import ConfigError, DatasetError, EtcError, ShardError
from etc_core.models import PretrainedWeightsError
from tests.conftest import REPO, run_dirs

pytestmark = pytest.mark.integration

# each entry point's checks before any work, as its main() calls them
CHECKS = {
    "pipelines/full.py": preflight.check_full,
    "pipelines/precompute_flow.py": preflight.check_flow,
    "pipelines/train_teacher.py": lambda cfg: preflight.check_training(cfg, "teacher"),
    "pipelines/train_baseline.py": lambda cfg: preflight.check_training(cfg, "baseline"),
    "pipelines/train_student.py": lambda cfg: preflight.check_training(cfg, "student"),
    "pipelines/sweep.py": preflight.check_sweep,
    "etc-pipeline make-dataset": preflight.check_make_dataset,
}
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
NO_SHARDS = "manifest.json: not found (run pipelines/precompute_flow.py first)"
NO_GPU = "needs a GPU"
OFFLINE = ("cannot reach ImageNet weights", "cannot download ImageNet weights")  # pretrained=imagenet, no cache


def expected(cfg, entry: str) -> tuple[tuple[type[EtcError], ...], tuple[str, ...]] | None:
    """The errors (classes, fragments one of which the line holds) the entry point's checks may stop with on a
    fresh tmp_path, or None when they pass. From the config: a GPU it asks for, a dataset read in place (its
    folder is empty), ImageNet backbones (not cached, and this machine may be offline)."""
    from etc_core.data.registry import dataset_kind
    from etc_core.train.config import stage_config

    trains = entry.startswith(("pipelines/train_", "pipelines/sweep", "pipelines/full"))
    gpu = any(stage_config(cfg, s).train.use_gpu for s in ("teacher", "student"))
    if trains and gpu and not torch.cuda.is_available():
        return (ConfigError,), (NO_GPU,)
    generated = dataset_kind(cfg.data.kind).generated
    if entry == "etc-pipeline make-dataset":
        return None if generated else ((ConfigError,), ("is read in place, not generated",))
    imagenet = ((PretrainedWeightsError,), OFFLINE) if "imagenet" in (cfg.teacher.pretrained, cfg.student.pretrained) \
        else ((), ())
    if entry.endswith("precompute_flow.py"):
        return None if generated else ((DatasetError,), (cfg.data.root,))
    if entry.endswith("full.py"):
        return None if generated else ((DatasetError, *imagenet[0]), (cfg.data.root, *imagenet[1]))
    return (ShardError, *imagenet[0]), (NO_SHARDS, *imagenet[1])


def test_the_table_covers_every_entry_point_and_config():
    pipelines = {f"pipelines/{p.name}" for p in (REPO / "pipelines").glob("*.py") if p.name != "__init__.py"}
    assert pipelines == {e for e in CHECKS if e.startswith("pipelines/")}
    assert {"demo.yaml", "gpu.yaml", "cityscapes.yaml", "camvid.yaml"} <= set(CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_every_entry_point_checks_pass_or_stop_with_the_configs_one_line(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths of the config land here
    for var in ("CITYSCAPES_ROOT", "CAMVID_ROOT"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))  # a real dataset's root that holds nothing
    monkeypatch.setenv("ETC_BUCKET", "etc-test")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = [f"shards.uri={tmp_path}/shards", *run_dirs(tmp_path), "ray.address=null"]
    cfg = load_config(REPO / "configs" / config, paths)
    if cfg.data.kind == "synthetic":
        paths.append(f"data.root={tmp_path}/data")
    if cfg.flow.source == "ptlflow" and cfg.flow.weights != "none":  # weights that need internet the first time:
        paths.append("flow.weights=none")  # that check is about the network, not the config
    cfg = load_config(REPO / "configs" / config, paths)
    for entry, check in CHECKS.items():
        want = expected(cfg, entry)
        if want is None:
            check(cfg)
            continue
        with pytest.raises(want[0]) as err:
            check(cfg)
        line = str(err.value)
        assert any(f in line for f in want[1]) and "\n" not in line, (entry, line)
        assert err.value.exit_code == 2, (entry, line)
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "shards").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU (tests/gpu/test_gpu_config.py)")
def test_gpu_config_without_a_gpu_stops_before_any_work_with_one_line(tmp_path, monkeypatch, capsys):
    from etc_core.entry import run_entry
    from pipelines.full import main

    monkeypatch.chdir(tmp_path)  # the config's relative paths (runs/gpu/...) would land here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit) as done:
        run_entry(main, ["--config", str(REPO / "configs" / "gpu.yaml")])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and "\n" not in err, err
    assert err.startswith("ConfigError: train.use_gpu: the teacher needs a GPU, and torch ") and "docs/gpu.md" in err
    assert list(tmp_path.iterdir()) == []  # no store, no data, no Ray results
