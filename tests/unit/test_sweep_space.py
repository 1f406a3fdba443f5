"""The pure side of a sweep: dotted values on a config, search-space checks, objective, Pareto front, best.yaml."""
import math

import pytest

from etc_core.config import EtcConfig, RegistryConfig, load_config
from etc_core.errors import ConfigError
from etc_core.metrics import val_score
from etc_core.sweep.space import apply_values, check_space, may_need_teacher, pareto_front, tune_space
from etc_core.tracking.registry import score


def test_pareto_front_keeps_the_non_dominated_points_by_miou():
    points = [(50.0, 90.0), (60.0, 80.0), (55.0, 85.0), (40.0, 95.0), (45.0, 85.0), (60.0, 70.0), (math.nan, 99.0)]
    assert pareto_front(points) == [1, 2, 0, 3]  # 4 and 5 are dominated, the NaN never counts
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # ties are both kept
    assert pareto_front([]) == [] and pareto_front([(math.inf, 1.0)]) == []


def test_val_score_is_the_weighted_sum_for_the_sweep_and_the_champion_rule():
    assert val_score(60.0, 90.0, 0.5) == 75.0 and val_score(60.0, 90.0, 0.0) == 60.0
    assert val_score(60.0, 90.0, 1.0) == 90.0
    rule = RegistryConfig(champion_metric="val_score", score_tc_weight=0.25)  # the registry's rule: the same sum
    assert score({"val_miou": 60.0, "val_tc": 90.0}, rule) == val_score(60.0, 90.0, 0.25) == 67.5


def test_apply_values_sets_dotted_keys_and_names_bad_ones():
    base = EtcConfig()
    cfg = apply_values(base, {"student.loss.tc_weight": 0.3, "train.lr": 0.002, "train.optimizer": "adamw"})
    assert cfg.student.loss.tc_weight == 0.3 and cfg.train.lr == 0.002 and cfg.train.optimizer == "adamw"
    assert cfg.student.loss.kd_pixel_weight == base.student.loss.kd_pixel_weight and base.train.lr == 0.01
    with pytest.raises(ConfigError, match=r"student.loss.tc_wieght: unknown key \(did you mean tc_weight\?\)"):
        apply_values(base, {"student.loss.tc_wieght": 0.3})
    with pytest.raises(ConfigError, match="train.lr.x: train.lr is not a config section"):
        apply_values(base, {"train.lr.x": 1})
    with pytest.raises(ConfigError, match="student.loss.tc_weight: Input should be greater than or equal to 0"):
        apply_values(base, {"student.loss.tc_weight": -1.0})


def _cfg(space: str, *extra: str) -> EtcConfig:
    return load_config(None, [f"sweep.space={space}", *extra])


def test_check_space_gives_one_line_per_bad_entry():
    check_space(EtcConfig())  # the defaults are a valid sweep
    bad = {
        "{student.loss.tc_wieght: {type: uniform, low: 0, high: 1}}": "sweep.space.student.loss.tc_wieght: 0.0 is "
                                                                      "not a valid value .*did you mean tc_weight",
        "{data.height: {type: choice, values: [32, 64]}}": "sweep.space.data.height: only train.. and student..",
        "{train.optimizer: {type: choice, values: [sgd, adam]}}": "sweep.space.train.optimizer: 'adam' is not a valid",
        "{train.lr: {type: grid, values: [0.1, 0.01]}}": "grid needs sweep.search=random",
    }
    for space, message in bad.items():
        with pytest.raises(ConfigError, match=message) as err:
            check_space(_cfg(space))
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"sweep.space.train.lr: Value error, loguniform needs low > 0, got 0.0"):
        _cfg("{train.lr: {type: loguniform, low: 0, high: 1}}")
    with pytest.raises(ConfigError, match="sweep.space.train.lr.type: Input should be 'loguniform'"):
        _cfg("{train.lr: {type: log_uniform, low: 0.1, high: 1}}")


def test_tune_space_and_teacher_need():
    from ray import tune

    cfg = _cfg("{train.lr: {type: loguniform, low: 0.001, high: 0.1}, student.loss.kd_pixel_weight: "
               "{type: choice, values: [0, 1]}, train.optimizer: {type: grid, values: [sgd, adamw]}}",
               "sweep.search=random", "student.loss.kd_pixel_weight=0", "student.loss.kd_temporal_weight=0")
    space = tune_space(cfg.sweep)
    assert isinstance(space["train.lr"], tune.search.sample.Float) and space["train.lr"].lower == 0.001
    assert space["student.loss.kd_pixel_weight"].categories == [0, 1]
    assert space["train.optimizer"] == {"grid_search": ["sgd", "adamw"]}
    assert may_need_teacher(cfg)  # kd_pixel_weight may be sampled as 1
    no_kd = _cfg("{student.loss.tc_weight: {type: uniform, low: 0, high: 1}}", "student.loss.kd_pixel_weight=0",
                 "student.loss.kd_temporal_weight=0")
    assert not may_need_teacher(no_kd)


def test_best_yaml_reloads_as_the_same_config(tmp_path):
    from etc_core.sweep.report import write_best_yaml
    from etc_core.sweep.run import Trial

    base = load_config(None, [f"data.root={tmp_path}/data", "train.crop=[32, 48]", f"train.storage_path={tmp_path}"])
    values = {"student.loss.tc_weight": 0.123456789, "train.lr": 3.3e-3}
    trial = Trial("abc_00001", values, apply_values(base, values))
    path = write_best_yaml(trial, "sweep-x", tmp_path / "best.yaml")
    assert load_config(path) == trial.config
    assert "train_student.py --config" in path.read_text().splitlines()[1]


def test_the_private_ray_gcs_names_release_stopped_trials_reads_are_still_there():
    # etc_core/sweep/run.py's ReleaseStoppedTrials reads the GCS placement-group table (no public API names a
    # group's creator); tests/integration/test_sweep.py checks the behaviour on a real Ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    assert callable(state._connect_and_get_accessor)
    fields = set(gcs_pb2.PlacementGroupTableData.DESCRIPTOR.fields_by_name)
    assert {"placement_group_id", "state", "creator_actor_id", "creator_actor_dead", "creator_job_id",
            "is_detached"} <= fields
    assert gcs_pb2.PlacementGroupTableData.CREATED != gcs_pb2.PlacementGroupTableData.REMOVED
