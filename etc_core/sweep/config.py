"""The `sweep` config section: the Ray Tune sweep over student training (etc_core/sweep/, pipelines/sweep.py)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from etc_core.losses.etc import list_terms
from etc_core.section import Section


class ParamSpace(Section):
    """One swept config value: `loguniform`/`uniform` in [low, high], or `choice`/`grid` among `values`."""

    type: Literal["loguniform", "uniform", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None  # grid: every value is tried (random search only)

    @model_validator(mode="after")
    def _matching_bounds(self) -> "ParamSpace":
        kind, low, high = self.type, self.low, self.high
        if kind in ("loguniform", "uniform"):
            if low is None or high is None or self.values is not None:
                raise ValueError(f"{kind} needs low and high (and no values)")
            if not low < high:
                raise ValueError(f"{kind} needs low < high, got low={low} high={high}")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform needs low > 0, got {low}")
        elif not self.values or low is not None or high is not None:
            raise ValueError(f"{kind} needs a non-empty values list (and no low/high)")
        return self


def _default_space() -> dict[str, ParamSpace]:
    """The weight of every loss term with a sweep range (etc_core.losses.etc.TERMS), then the learning rate."""
    space = {f"student.loss.{term.weight}": ParamSpace(type="loguniform", low=term.sweep[0], high=term.sweep[1])
             for term in list_terms() if term.sweep}
    return space | {"train.lr": ParamSpace(type="loguniform", low=0.001, high=0.1)}


class SweepConfig(Section):
    """A Ray Tune sweep over student training (pipelines/sweep.py); space keys are dotted train.*/student.* paths.

    The frame gap k is not swept here: shards hold a fixed set of gaps (shards.k), so comparing gaps means
    comparing shard sets made by separate flow-stage runs.
    """

    num_samples: int = Field(8, ge=1)  # trials in all (a grid entry multiplies them)
    metric: Literal["val_miou", "val_tc", "val_score"] = "val_miou"  # maximised; every trial reports all three
    score_tc_weight: float = Field(0.5, ge=0, le=1)  # val_score = (1 - w) * mIoU + w * TC
    space: dict[str, ParamSpace] = Field(default_factory=_default_space)
    search: Literal["optuna", "random"] = "optuna"
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)  # epochs (reports) before ASHA may stop a trial
    reduction_factor: float = Field(2.0, gt=1)
    cpus_per_trial: float = Field(1.0, ge=0)  # the trial's driver; its Ray Train workers ask train.cpus_per_worker
    max_concurrent_trials: int | None = Field(None, ge=1)  # None: as many as the cluster's CPUs hold
    seed: int = 0  # of the search algorithm
    register_best: bool = False  # register the best trial's best checkpoint as etc-student-<arch>
