"""The flow-source registry (etc_core/flow/sources.py): a source registered in one line is accepted by the config,
listed by the CLI, checked by pre-flight and made by create_flow_source into the flow stage's steps; the two
built-in sources keep the shard-set hashes of existing configs."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from etc_core.cli import main as cli_main
from etc_core.config import load_config
from etc_core.data import flow_codec, shards, write_dataset
from etc_core.errors import ConfigError
from etc_core.flow.estimate import GroundTruthSource, PtlflowSource
from etc_core.flow.sources import FLOW_SOURCES, FlowSource, create_flow_source, list_flow_sources, register_flow_source
from etc_core.flow.stage import config_hash, plan_shards, stage_identity
from etc_core.flow.work import ShardJob, flow_meta, write_shards_sequentially
from etc_core.preflight import check_flow


class ZeroEstimator:
    def estimate(self, img0: np.ndarray, img1: np.ndarray, refs) -> np.ndarray:
        return np.zeros((len(img0), 2, *img0.shape[1:3]), np.float32)  # [B,2,H,W]


class ZeroSource(FlowSource):
    """A source of the test's own: zero flow (no motion), computed in the read tasks."""

    def check(self, data=None) -> None:
        if data is not None and data.num_frames > 50:
            raise ConfigError("flow.source: zero flow is for clips of at most 50 frames")

    def describe(self) -> str:
        return "zero flow"

    def estimator(self, dataset=None) -> ZeroEstimator:
        return ZeroEstimator()


@pytest.fixture
def zero():
    """Registers `zero` as a flow source for one test: the one line a new source adds."""
    register_flow_source("zero", ZeroSource)
    yield "zero"
    FLOW_SOURCES.remove("zero")


def _cfg(tmp_path, *overrides):
    return load_config(None, [f"data.root={tmp_path / 'data'}", f"shards.uri={tmp_path / 'shards'}",
                              "data.num_videos=3", "data.num_frames=3", "data.height=32", "data.width=48",
                              "shards.k=[1]", *overrides])


def test_the_built_in_sources_keep_the_shard_set_hashes_of_existing_configs():
    assert list_flow_sources() == ["ptlflow", "ground_truth", "dis"]
    pinned = {(): "e1249de1fade2e77", ("flow.source=ptlflow",): "e5b7146168ba515a",  # as made before the registry
              ("flow.source=ptlflow", "flow.half=true", "flow.weights=things"): "a0c62b6bb6218ab7",
              ("data.kind=cityscapes", "flow.source=ptlflow", "data.resize=0.5"): "d4ad9c1ac014cc38"}
    for overrides, digest in pinned.items():
        cfg = load_config(None, ["data.root=/d", "shards.uri=/s", *overrides])
        assert config_hash(stage_identity(cfg)) == digest, overrides
    ptl = load_config(None, ["flow.source=ptlflow", "flow.weights=things"])
    source = create_flow_source(ptl.flow)
    assert isinstance(source, PtlflowSource) and source.actors
    assert flow_meta(ptl) == {"source": "ptlflow", "flow_model": "rapidflow_it1", "flow_weights": "things"}
    assert isinstance(create_flow_source(load_config().flow), GroundTruthSource)


def test_an_unknown_source_is_one_line_naming_the_key_and_the_known_sources():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["flow.source=groundtruth"])
    assert str(err.value).startswith("override flow.source=groundtruth: flow.source: Value error, unknown flow source "
                                     "'groundtruth' (did you mean ground_truth? known: ptlflow, ground_truth, dis)")
    with pytest.raises(ValueError, match="flow source 'ptlflow' is already registered"):
        register_flow_source("ptlflow", PtlflowSource)


def test_ground_truth_is_refused_before_ray_on_a_dataset_without_exact_flow(tmp_path):
    cfg = load_config(None, ["data.kind=cityscapes", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^flow.source: ground_truth needs a dataset with exact flow, "
                                          r"data.kind=cityscapes has none \(use flow.source=dis, or ptlflow\)$"):
        create_flow_source(cfg.flow).check(cfg.data)
    create_flow_source(cfg.flow).check(load_config().data)  # the generated data has it


def test_a_registered_source_is_validated_listed_checked_and_written_into_shards(zero, tmp_path, capsys):
    cfg = _cfg(tmp_path, "flow.source=zero")
    source = create_flow_source(cfg.flow)
    assert isinstance(source, ZeroSource) and not source.actors
    assert stage_identity(cfg)["flow"] == {"source": "zero"}
    assert flow_meta(cfg) == {"source": "zero", "flow_model": None, "flow_weights": None}
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--help"])
    assert exit_.value.code == 0
    assert "flow sources (flow.source): ptlflow, ground_truth, dis, zero" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^flow.source: zero flow is for clips of at most 50 frames"):
        check_flow(_cfg(tmp_path, "flow.source=zero", "data.num_frames=60"))  # pre-flight runs the source's check
    # the flow stage's steps, in one process: read, the source's estimator, encode, write
    dataset = write_dataset(cfg.data, progress=False)
    plan = plan_shards(dataset, cfg)
    jobs = [ShardJob(split, i, samples) for split, shard_list in plan.items() for i, samples in enumerate(shard_list)]
    write_shards_sequentially(cfg, dataset, jobs, source.estimator(dataset))
    with tarfile.open(tmp_path / "shards" / shards.shard_name("train", 0)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}
    flows = [flow_codec.decode_flow(name.split(".", 1)[1], data) for name, data in members.items() if ".flow." in name]
    metas = [json.loads(data) for name, data in members.items() if name.endswith(".meta.json")]
    assert flows and len(flows) == len(metas) and not np.stack(flows).any()  # [N,2,H,W] all zero
    assert {m["source"] for m in metas} == {"zero"} and {m["flow_model"] for m in metas} == {None}


def test_what_the_source_says_decides_the_pair_mask_and_the_flow_timing(zero, tmp_path):
    """FlowSource.exact, not the source's name: ground truth is the dataset's exact flow, so full.py times a ptlflow
    model (random init) against it; an estimate (ptlflow, or a new source) has nothing exact to be timed against."""
    from etc_core.flow.timing import timed_flow

    cfg = _cfg(tmp_path, "pipeline.ptlflow_timing_pairs=4", "flow.weights=things")
    assert create_flow_source(cfg.flow).exact and not create_flow_source(cfg.flow).actors
    timed = timed_flow(cfg)
    assert (timed.source, timed.model, timed.weights) == ("ptlflow", cfg.flow.model, "none")
    for other in ("flow.source=ptlflow", "flow.source=zero"):
        estimated = _cfg(tmp_path, "pipeline.ptlflow_timing_pairs=4", other)
        assert not create_flow_source(estimated.flow).exact and timed_flow(estimated) is None
    assert timed_flow(_cfg(tmp_path, "pipeline.ptlflow_timing_pairs=0")) is None
