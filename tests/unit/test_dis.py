"""flow.source=dis (etc_core/flow/dis.py): OpenCV's DIS flow follows the project's flow convention (a known shift,
and warping frame t+k with it reconstructs frame t better than zero flow on generated pairs, k = +1 and -1), beats
zero flow in end-point error against the exact flow, is validated by the config and writes shards."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch

from etc_core.config import load_config
from etc_core.data import flow_codec, make_clip, shards, write_dataset
from etc_core.data.synthetic import Look, pair_flow
from etc_core.errors import ConfigError
from etc_core.flow.config import FlowConfig
from etc_core.flow.dis import DisEstimator, DisSource
from etc_core.flow.sources import create_flow_source
from etc_core.flow.stage import plan_shards, stage_identity
from etc_core.flow.timing import timed_flow
from etc_core.flow.warp import in_frame_mask, warp
from etc_core.flow.work import ShardJob, flow_meta, write_shards_sequentially

T, H, W, K = 4, 64, 96, 5


def _estimate(img0: np.ndarray, img1: np.ndarray) -> np.ndarray:
    """DIS flow of one pair through the source the config makes: uint8 [H,W,3] x2 -> float32 [2,H,W]."""
    estimator = create_flow_source(FlowConfig(source="dis")).estimator()
    flow = estimator.estimate(img0[None], img1[None], [])
    assert flow.shape == (1, 2, *img0.shape[:2]) and flow.dtype == np.float32
    return flow[0]


def test_a_known_shift_comes_out_as_x_then_y_in_the_convention():
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.random((1, 3, 16, 24), np.float32))
    img0 = (torch.nn.functional.interpolate(noise, size=(H, W), mode="bicubic", align_corners=False)[0]
            .clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy())  # smooth texture [H,W,3]
    img1 = np.roll(img0, (2, 3), axis=(0, 1))  # img1(y, x) = img0(y-2, x-3), so img0(y, x) = img1(y+2, x+3)
    flow = _estimate(img0, img1)[:, 8:-8, 8:-8]  # interior: away from the wrapped border
    assert np.median(flow[0]) == pytest.approx(3, abs=0.25) and np.median(flow[1]) == pytest.approx(2, abs=0.25)


@pytest.mark.parametrize("look", [Look.exact(), Look()], ids=["exact-look", "default-look"])
@pytest.mark.parametrize("k", [1, -1])
def test_warping_frame_t_plus_k_with_dis_flow_reconstructs_frame_t_better_than_zero_flow(k, look):
    seed, t = 11, 1 if k > 0 else 2
    clip = make_clip(seed, T, H, W, K, look=look)
    exact, valid = pair_flow(seed, T, H, W, K, t, k)  # [2,H,W], bool [H,W]: visible in both frames
    dis = _estimate(clip.frames[t], clip.frames[t + k])
    frame_t = torch.from_numpy(clip.frames[t]).permute(2, 0, 1).float()  # [3,H,W]
    src = torch.from_numpy(clip.frames[t + k]).permute(2, 0, 1)[None].float()  # [1,3,H,W]
    flows = {"dis": torch.from_numpy(dis)[None], "zero": torch.zeros(1, 2, H, W)}
    mask = torch.from_numpy(valid)
    for flow in flows.values():
        mask &= in_frame_mask(flow)[0, 0]
    error = {name: (warp(src, flow)[0] - frame_t).abs().mean(0)[mask].mean().item() for name, flow in flows.items()}
    assert mask.float().mean() > 0.5 and error["dis"] < error["zero"], error
    epe = lambda f: np.sqrt(((f - exact) ** 2).sum(0)).mean()  # noqa: E731 - end-point error, px
    assert epe(dis) < epe(np.zeros_like(exact)), (epe(dis), np.abs(exact).max())


def test_the_config_accepts_dis_and_refuses_a_bad_preset_in_one_line_naming_the_key():
    cfg = load_config(None, ["flow.source=dis", "flow.dis_preset=fast"])
    source = create_flow_source(cfg.flow)
    assert isinstance(source, DisSource) and not source.actors and not source.exact
    with pytest.raises(ConfigError) as err:
        load_config(None, ["flow.source=dis", "flow.dis_preset=slow"])
    assert str(err.value).startswith("override flow.dis_preset=slow: flow.dis_preset: Input should be 'ultrafast', "
                                     "'fast' or 'medium'") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^flow.dis_preset: unknown preset 'slow' \(known: ultrafast, fast, "
                                          r"medium\)$"):
        DisEstimator("slow")


def test_dis_shards_carry_its_preset_in_the_hash_and_meta_and_its_flow(tmp_path):
    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", f"shards.uri={tmp_path / 'shards'}", "data.num_videos=3",
                             "data.num_frames=3", "data.height=32", "data.width=48", "shards.k=[1]",
                             "flow.source=dis", "pipeline.ptlflow_timing_pairs=4"])
    assert stage_identity(cfg)["flow"] == {"source": "dis", "dis_preset": "medium"}
    fast = load_config(None, ["flow.source=dis", "flow.dis_preset=fast"])
    assert stage_identity(fast)["flow"]["dis_preset"] == "fast"  # another preset, another shard set
    assert flow_meta(cfg) == {"source": "dis", "flow_model": "dis", "flow_weights": "medium"}
    assert timed_flow(cfg) is None  # an estimate: nothing exact to time a ptlflow model against
    dataset = write_dataset(cfg.data, progress=False)
    jobs = [ShardJob(split, i, samples) for split, shard_list in plan_shards(dataset, cfg).items()
            for i, samples in enumerate(shard_list)]
    write_shards_sequentially(cfg, dataset, jobs, create_flow_source(cfg.flow).estimator(dataset))
    with tarfile.open(tmp_path / "shards" / shards.shard_name("train", 0)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}
    flows = np.stack([flow_codec.decode_flow(name.split(".", 1)[1], data) for name, data in members.items()
                      if ".flow." in name])  # flow.png (shards.flow_encoding) or flow.npy
    metas = [json.loads(data) for name, data in members.items() if name.endswith(".meta.json")]
    assert flows.shape[1:] == (2, 32, 48) and np.isfinite(flows).all() and flows.any()
    assert {(m["source"], m["flow_model"], m["flow_weights"]) for m in metas} == {("dis", "dis", "medium")}
