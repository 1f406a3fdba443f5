"""Flow sources (flow.source) by name: where the flow of the training pairs comes from. register, create, list.

A source is a FlowSource subclass, made from the flow section: what it checks before any work, what the shard
set's hash and each sample's meta.json say about it, and the estimator that computes the flow of a batch of pairs.
Adding one: its file with the subclass, its test, and one `register_flow_source` line at the bottom of this module
(docs/architecture.md, "Add a flow source"). Light on purpose: the config validates flow.source against these
names, and a source's module is imported when the source is first created.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator

from etc_core.errors import ConfigError
from etc_core.registry import Registry

if TYPE_CHECKING:
    from etc_core.flow.config import FlowConfig
    from etc_core.data.config import DataConfig
    from etc_core.flow.estimate import FlowEstimator


class FlowSource:
    """One flow source for the flow section cfg (flow.source names it); subclasses override what differs."""

    # True: the estimator holds a model, built once in each actor of a pool (flow.num_actors, GPUs when there are);
    # False: it is made in each Ray task from the dataset, as cheap as reading
    actors = False
    # True: the flow is the dataset's exact flow (its reader's pair_flow, with a validity mask), not an estimate: the
    # flow stage's pair picture shows the mask, and pipeline.ptlflow_timing_pairs times a ptlflow model against it
    exact = False

    def __init__(self, cfg: FlowConfig):
        self.cfg = cfg

    def check(self, data: DataConfig | None = None) -> None:
        """Fail fast, before Ray starts: ConfigError in one line when this source cannot run (on dataset `data`,
        when known)."""

    def identity(self) -> dict:
        """What changes the flow besides flow.source (in the shard set's hash: keep it stable, docs/shards.md)."""
        return {}

    def meta(self) -> dict:
        """flow_model and flow_weights, as every sample's meta.json records them (docs/shards.md)."""
        return {"flow_model": None, "flow_weights": None}

    def describe(self) -> str:
        """How progress lines and errors name this flow."""
        return self.cfg.source

    def estimator(self, dataset=None) -> FlowEstimator:
        """The estimator of pairs' flow (etc_core/flow/estimate.py, FlowEstimator); dataset: the clips' reader."""
        raise NotImplementedError(f"flow source {self.cfg.source!r} has no estimator")


FLOW_SOURCES = Registry("flow source")
FlowSourceName = Annotated[str, AfterValidator(FLOW_SOURCES.check)]  # the type of flow.source: a registered name


def register_flow_source(name: str, source: type[FlowSource] | str) -> type[FlowSource] | str:
    """Register flow source `name`: a FlowSource subclass, or "module:attr" naming one (imported when first made)."""
    return FLOW_SOURCES.register(name, source)


def list_flow_sources() -> list[str]:
    """The registered flow sources, in registration order."""
    return FLOW_SOURCES.names()


def create_flow_source(cfg: FlowConfig) -> FlowSource:
    """The source cfg.source made from the flow section; ConfigError naming flow.source and the known sources."""
    try:
        cls = FLOW_SOURCES.get(cfg.source)
    except ValueError as e:
        raise ConfigError(f"flow.source: {e}") from None
    return cls(cfg)


register_flow_source("ptlflow", "etc_core.flow.estimate:PtlflowSource")
register_flow_source("ground_truth", "etc_core.flow.estimate:GroundTruthSource")
register_flow_source("dis", "etc_core.flow.dis:DisSource")
