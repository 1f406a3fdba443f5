"""The pure side of a sweep: the search space as Tune domains, trial values applied to a config, the objective
and the Pareto front of (mIoU, TC).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from etc_core.errors import ConfigError
from etc_core.extras import require
from etc_core.losses.etc import list_terms
from etc_core.section import with_values
from etc_core.sweep.config import ParamSpace, SweepConfig

if TYPE_CHECKING:  # the aggregate sits above this module (tests/unit/test_layers.py)
    from etc_core.config import EtcConfig

SWEEPABLE = ("train.", "student.")  # every trial reads the same shards, so data/shards/flow stay fixed


def apply_values(base: EtcConfig, values: dict[str, Any]) -> EtcConfig:
    """`base` with each dotted key (`student.loss.tc_weight`) set to its value, validated; ConfigError names the key
    (etc_core.section.with_values, the one config editor; also etc_core.config.apply_values)."""
    return with_values(base, values)


def _corners(spec: ParamSpace) -> list[Any]:
    return [spec.low, spec.high] if spec.values is None else list(spec.values)


def check_space(cfg: EtcConfig) -> None:
    """Raise ConfigError (one line, `sweep.space.<key>: ...`) for a key or range the trials could not train with."""
    sweep = cfg.sweep
    if not sweep.space:
        raise ConfigError("sweep.space: empty; give at least one dotted key to sweep")
    if sweep.search == "optuna":
        require("optuna", "sweep.search=optuna (or sweep.search=random, which needs nothing more)")
    for key, spec in sweep.space.items():
        if not key.startswith(SWEEPABLE):
            raise ConfigError(f"sweep.space.{key}: only train.* and student.* keys can be swept "
                              "(all trials share the shards)")
        if spec.type == "grid" and sweep.search == "optuna":
            raise ConfigError(f"sweep.space.{key}: grid needs sweep.search=random (Optuna samples, it has no grid)")
        for value in _corners(spec):
            try:
                apply_values(cfg, {key: value})
            except ConfigError as e:
                raise ConfigError(f"sweep.space.{key}: {value!r} is not a valid value ({e})") from None


def may_need_teacher(cfg: EtcConfig) -> bool:
    """True when the base config or some sampled distillation weight can switch distillation on."""
    if cfg.student.loss.needs_teacher:
        return True
    teacher_keys = {f"student.loss.{term.weight}" for term in list_terms() if term.teacher}
    return any(key in teacher_keys and max(_corners(spec)) > 0 for key, spec in cfg.sweep.space.items())


def tune_space(sweep: SweepConfig) -> dict[str, Any]:
    """The Tune param_space: {dotted key: tune domain}."""
    from ray import tune

    make = {"loguniform": lambda s: tune.loguniform(s.low, s.high), "uniform": lambda s: tune.uniform(s.low, s.high),
            "choice": lambda s: tune.choice(list(s.values)), "grid": lambda s: tune.grid_search(list(s.values))}
    return {key: make[spec.type](spec) for key, spec in sweep.space.items()}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (mIoU, TC) points no other point beats on both (higher is better), by mIoU descending.

    A point with a NaN is never on the front; equal points are all kept.
    """
    finite = [i for i, (a, b) in enumerate(points) if math.isfinite(a) and math.isfinite(b)]
    front = []
    for i in finite:
        a, b = points[i]
        dominated = any(points[j][0] >= a and points[j][1] >= b and (points[j][0] > a or points[j][1] > b)
                        for j in finite)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (-points[i][0], -points[i][1], i))
