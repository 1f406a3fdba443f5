"""The `pipeline` config section: what pipelines/full.py (etc_core/pipeline.py) runs after the flow shards and the
teacher. Apart from etc_core/pipeline.py so that the sections stay below etc_core/config.py, which the pipeline
imports."""
from __future__ import annotations

from pydantic import Field

from etc_core.section import Section


class PipelineConfig(Section):
    """What pipelines/full.py runs after the flow shards and the teacher."""

    baseline: bool = True  # also train the student per frame (CE only): the "without ETC" row of the table
    control: bool = False  # also train the student's equal-step control (its init and steps, CE only): the table leads with student - control, what isolates the ETC terms
    sweep: bool = False  # run the loss-weight sweep (pipelines/sweep.py) before the student
    ptlflow_timing_pairs: int = Field(8, ge=0)  # time flow.model (random init) on this many pairs; 0 = skip
    eval_batch_size: int = Field(8, ge=1)
    lock_wait_s: float = Field(3600, ge=0)  # s to wait for another run's lock on shards.uri / SQLite store; 0 = refuse
