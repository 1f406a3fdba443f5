"""Cache keys: each training stage hashes what it reads and nothing else, and existing configs keep their keys."""
import pytest

from etc_core.config import load_config
from etc_core.errors import ConfigError
from etc_core.sweep.run import sweep_name
from etc_core.train.config import stage_config
from etc_core.train.run import stage_hash
from tests.conftest import REPO

STAGES = ("teacher", "baseline", "student")
# As loaded from a checkout at /work/main (paths are absolute in the key): runs already registered under these
# keys, and the benchmark resuming them, depend on them staying put.
# reproduce: configs/reproduce.yaml at 4000 steps, with the swept temporal weight (logits, 0.3) of 2026-12-01.
PINNED = {"reproduce": ([], ("ad55c4d22a5a", "4cb571e8e65b", "98fba6a43229")),  # teacher: pspnet18_half
          "demo": ([], ("8c0c9c66a51a", "dc6378985302", "f8934ea8d489"))}  # teacher: pspnet18_half (2026-12-02)


@pytest.mark.parametrize("name", PINNED)
def test_existing_configs_keep_their_stage_hashes(name, monkeypatch):
    monkeypatch.chdir("/")
    monkeypatch.setenv("ETC_BASE_DIR", "/work/main")  # relative paths resolve as from that checkout
    overrides, pinned = PINNED[name]
    cfg = load_config(REPO / "configs" / f"{name}.yaml", overrides)
    assert tuple(stage_hash(cfg, s) for s in STAGES) == pinned


def _hashes(*overrides):
    cfg = load_config(REPO / "configs" / "demo.yaml", ["data.root=/d", "shards.uri=/s", *overrides])
    return {s: stage_hash(cfg, s) for s in STAGES}


def test_a_student_only_change_moves_the_student_key_only():
    base = _hashes()
    student = _hashes("student.train.max_steps=100")
    assert student["student"] != base["student"]
    assert (student["teacher"], student["baseline"]) == (base["teacher"], base["baseline"])
    teacher = _hashes("teacher.train.lr=0.01")
    assert teacher["teacher"] != base["teacher"] and teacher["student"] == base["student"]
    assert _hashes("train.max_steps=100") != base  # the shared section moves every stage


def test_stage_override_is_what_the_stage_trains_with_and_the_same_as_setting_train():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["data.root=/d", "shards.uri=/s", "student.train.max_steps=100"])
    assert stage_config(cfg, "student").train.max_steps == 100
    assert stage_config(cfg, "baseline").train.max_steps == stage_config(cfg, "teacher").train.max_steps == 360
    same = load_config(REPO / "configs" / "demo.yaml", ["data.root=/d", "shards.uri=/s", "train.max_steps=100"])
    assert stage_hash(cfg, "student") == stage_hash(same, "student")
    assert stage_config(stage_config(cfg, "student"), "student") == stage_config(cfg, "student")
    assert sweep_name(cfg) == sweep_name(same)


@pytest.mark.parametrize("override, message", [
    ("student.train.max_stps=1", r"^override student.train.max_stps=1: student.train: Value error, unknown train key "
                                 r"'max_stps' \(did you mean max_steps\?\)"),
    ("teacher.train.lr=-1", r"^override teacher.train.lr=-1: teacher.train: Value error, lr: Input should be greater "
                            r"than 0"),
])
def test_stage_override_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_the_control_is_the_student_without_its_etc_terms_and_keys_apart():
    from etc_core.train.config import stage_spec
    from etc_core.train.run import registered_name

    cfg = load_config(REPO / "configs" / "demo.yaml", ["data.root=/d", "shards.uri=/s", "student.train.max_steps=100",
                                                       "student.init_from=models:/etc-baseline-pspnet18_slim/1"])
    student, control = stage_spec(cfg, "student"), stage_spec(cfg, "control")
    assert control.arch == student.arch
    assert control.init_from == student.init_from == "models:/etc-baseline-pspnet18_slim/1"
    assert stage_config(cfg, "control").train == stage_config(cfg, "student").train  # the same steps
    assert control.loss == student.loss.per_frame() and not control.loss.needs_teacher and student.loss.tc_weight > 0
    keys = {s: stage_hash(cfg, s) for s in (*STAGES, "control")}
    assert len(set(keys.values())) == 4
    assert registered_name(cfg, "control") == "etc-control-pspnet18_slim"
    longer = load_config(REPO / "configs" / "demo.yaml", ["data.root=/d", "shards.uri=/s",
                                                          "student.train.max_steps=200",
                                                          "student.init_from=models:/etc-baseline-pspnet18_slim/1"])
    assert stage_hash(longer, "control") != keys["control"] and stage_hash(longer, "baseline") == keys["baseline"]
