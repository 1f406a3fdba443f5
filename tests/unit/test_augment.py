import numpy as np
import pytest
import torch

from etc_core.data.synthetic import Look, make_clip, pair_flow
from etc_core.flow import in_frame_mask, warp
from etc_core.models import normalize
from etc_core.train.augment import PairAugment


def _sample(k: int):
    args = dict(seed=5, num_frames=5, height=48, width=64, num_classes=4)
    clip = make_clip(**args, look=Look.exact())
    flow, _ = pair_flow(**args, t=2, k=k)
    return {"img0": clip.frames[2], "img1": clip.frames[2 + k], "flow": flow, "label": clip.labels[2],
            "__key__": "x"}


def _warp_error(sample: dict) -> tuple[float, float]:
    """Median |warp(img1, flow) - img0| over in-frame pixels, and the in-frame fraction."""
    img0 = torch.from_numpy(sample["img0"]).permute(2, 0, 1)[None].float()
    img1 = torch.from_numpy(sample["img1"]).permute(2, 0, 1)[None].float()
    flow = torch.from_numpy(sample["flow"])[None]
    err = (warp(img1, flow) - img0).abs().mean(1)[0]
    mask = in_frame_mask(flow)[0, 0]
    return float(err[mask].median()), float(mask.float().mean())


@pytest.mark.parametrize("k", [1, -2])
@pytest.mark.parametrize("scale", [(0.6, 0.6), (1.7, 1.7), (1.0, 1.0)])
def test_augmented_flow_still_warps_img1_onto_img0(k, scale):
    np.random.seed(0)
    base_err, _ = _warp_error(_sample(k))
    for _ in range(4):  # random flips and crop positions
        out = PairAugment(crop=(40, 56), scale=scale, flip=True)(_sample(k))
        assert out["img0"].shape == (40, 56, 3) and out["flow"].shape == (2, 40, 56) and out["label"].shape == (40, 56)
        err, frac = _warp_error(out)
        assert frac > 0.3
        assert err < base_err + 4  # resampling adds a little error, a wrong flow transform adds a lot


def test_flip_negates_flow_x_and_padding_has_no_correspondence():
    np.random.seed(1)
    sample = _sample(1)
    sample["flow"] = np.stack([np.full((48, 64), 2.0), np.full((48, 64), -1.0)]).astype(np.float32)
    flipped = None
    for _ in range(20):
        out = PairAugment(crop=(48, 64), scale=(1.0, 1.0), flip=True)(sample)
        if np.array_equal(out["img0"], sample["img0"][:, ::-1]):
            flipped = out
            break
    assert flipped is not None
    assert np.allclose(flipped["flow"][0], -2.0) and np.allclose(flipped["flow"][1], -1.0)
    out = PairAugment(crop=(64, 80), scale=(1.0, 1.0), flip=False)(_sample(1))  # bigger than the frame: pad
    pad = out["label"] == 255
    assert pad.sum() >= 64 * 80 - 48 * 64
    mask = in_frame_mask(torch.from_numpy(out["flow"])[None])[0, 0].numpy()
    assert not mask[pad].any()


def test_normalize_matches_imagenet_stats():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = normalize(x)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))


@pytest.mark.parametrize("s", [0.625, 1.0, 1.5])
def test_scaling_multiplies_flow_vectors_exactly_by_the_resize_ratio(s):
    """A constant flow (3, -2) resized by s is (3 s, -2 s) everywhere the crop sees frame (bilinear keeps a
    constant, up to float rounding): without the rescale it would stay (3, -2)."""
    np.random.seed(2)
    sample = _sample(1)
    sample["flow"] = np.stack([np.full((48, 64), 3.0), np.full((48, 64), -2.0)]).astype(np.float32)
    out = PairAugment(crop=(24, 40), scale=(s, s), flip=False)(sample)
    sy, sx = round(48 * s) / 48, round(64 * s) / 64  # the resize ratio of each axis (sizes are whole pixels)
    assert np.allclose(out["flow"][0], 3 * sx, rtol=0, atol=1e-5)
    assert np.allclose(out["flow"][1], -2 * sy, rtol=0, atol=1e-5)
