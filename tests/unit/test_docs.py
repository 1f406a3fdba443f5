"""docs/config.md is generated from the config models; it must match what the generator writes today."""
from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", REPO / "docs" / "gen_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_up_to_date():
    text = _generator().render()
    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == text, "docs/config.md is out of date: run .venv/bin/python docs/gen_config_reference.py"


def test_config_reference_names_every_key():
    from etc_core.config import EtcConfig, flatten

    text = (REPO / "docs" / "config.md").read_text()
    keys = [k for k in flatten(EtcConfig()) if not k.startswith("sweep.space.")]  # the space's entries are examples
    assert [k for k in keys if f"`{k}`" not in text] == []


def test_shards_example_runs_on_real_shards(tmp_path, capsys):
    """The code block of docs/shards.md reads shards written by etc_core.data.shards, with tarfile and webdataset."""
    import re

    import numpy as np

    from etc_core.data import shards

    rng = np.random.default_rng(0)
    samples = []
    for t, labelled, motion in ((0, True, 0.25), (1, False, 600.0)):  # 600 px: beyond KITTI's range, kept as npy
        img0, img1 = (rng.integers(0, 255, (8, 12, 3), dtype=np.uint8) for _ in range(2))
        label = rng.integers(0, 3, (8, 12), dtype=np.uint8) if labelled else None
        meta = {"video": "clip_000000", "t": t, "k": 1, "split": "val", "source": "ground_truth"}
        samples.append(shards.encode_sample(shards.sample_key("clip_000000", t, 1), img0, img1,
                                            np.full((2, 8, 12), motion, np.float32), label, meta,
                                            flow_encoding="png16"))
    path = shards.shard_name("val", 0)
    nbytes = shards.write_shard(samples, str(tmp_path / path))
    shards.write_manifest(str(tmp_path), {"format": shards.FORMAT, "flow_encoding": "png16", "splits": {
        "val": {"samples": 2, "shards": [{"path": path, "samples": 2, "bytes": nbytes}]}}})

    text = (REPO / "docs" / "shards.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert 'uri = "runs/demo/shards"' in code
    exec(compile(code.replace('uri = "runs/demo/shards"', f'uri = "{tmp_path}"'), "docs/shards.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["flow encoding: png16", "clip_000000_000000_1 (8, 12, 3) flow.png (2, 8, 12) clip_000000 0 1"]
    assert lines[2].startswith("clip_000000_000000_1 (2, 8, 12) max |flow| 0.25 px [")
    assert lines[3] == "clip_000000_000001_1 (2, 8, 12) max |flow| 600.00 px None"


def test_benchmarks_page_matches_the_committed_results():
    """docs/benchmarks.md is what benchmarks/report.py makes of benchmarks/results/*.json: no hand-edited figure."""
    from benchmarks import report

    results = {name: report._load(name) for name in report.NAMES}
    assert results["data_acceptance"] and results["train_overhead"], "benchmarks/results/ lacks the committed results"
    assert (REPO / "docs" / "benchmarks.md").read_text() == report.render(results), \
        "docs/benchmarks.md is out of date: run .venv/bin/python -m benchmarks.report"


def test_scale_page_matches_its_result_and_the_plan_is_its_arithmetic():
    """docs/scale.md is what benchmarks/report_scale.py makes of benchmarks/results/scale.json; the plan's figures
    are pairs x bytes, pairs x ms and iterations x GPUs x step, on configs/cityscapes.yaml's schedule."""
    from benchmarks import report, report_scale

    measured = report._load("scale")
    assert (REPO / "docs" / "scale.md").read_text() == report_scale.render(measured), \
        "docs/scale.md is out of date: run .venv/bin/python -m benchmarks.report"
    r = {"frame": [1024, 2048], "median_tar_bytes_per_pair": 3e6,
         "median_bytes_per_pair": {"frames": 2e6, "flow": 0.9e6, "labels": 0.05e6, "meta": 1e3},
         "decode_ms_per_pair": {"median": 100.0, "max": 120.0}}
    p = report_scale.plan(r)
    sched = p["schedule"]
    assert sched == {"iterations": 74200, "gpus": 4, "crop": 769, "batch_per_gpu": 2, "k": [-2, -1, 1, 2, 3],
                     "flow_model": "raft"}
    assert p["pairs"] == {"train": 2975 * 5, "val": 500 * 29, "test": 1525 * 29}
    assert p["bytes_per_pair"]["generated"] == 3e6
    assert p["bytes_per_pair"]["cityscapes"] == pytest.approx(2 * 324e9 / (5000 * 30) + 1e6)
    assert p["storage_gb"]["generated"]["train"] == pytest.approx(2975 * 5 * 3e6 / 1e9)
    assert p["flow_ms_per_pair"]["fp32"] == pytest.approx(256.396 * 1024 * 2048 / 500_000)
    assert p["flow_gpu_h"]["fp32"] == pytest.approx((2975 * 5 + 500 * 29) * p["flow_ms_per_pair"]["fp32"] / 3.6e6)
    for name, step in p["step_s"].items():
        assert p["train_gpu_h"][name] == pytest.approx(74200 * 4 * step / 3600)
        assert p["loader_cores_per_gpu"][name] == pytest.approx(2 / step * 0.1)
    steps = list(p["step_s"].values())  # teacher, baseline student, ETC student
    assert 0 < steps[1] < steps[2] < steps[0]  # the teacher's forwards make the ETC student's step the dearer
