import numpy as np
import pytest
import torch
import torch.nn.functional as F

from etc_core.data.synthetic import Look, Scene, make_clip, pair_flow

# Label edges stand for surface edges below; a thin bar can share its neighbour's class, so these scenes have none.
NO_BARS = Scene(thin_objects=0)
from etc_core.flow import flow_to_color, in_frame_mask, warp


def _edges(labels: torch.Tensor) -> torch.Tensor:
    """Pixels within one pixel of a class boundary: [T,1,H,W] float."""
    lab = labels.float().unsqueeze(1)
    return (F.max_pool2d(lab, 3, 1, 1) != -F.max_pool2d(-lab, 3, 1, 1)).float()


def test_constant_flow_is_an_exact_shift_with_zeros_outside():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).view(2, 3, 5, 7)
    flow = torch.zeros(2, 2, 5, 7)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # sample 2 right, 1 up
    for mode in ("bilinear", "nearest"):
        out = warp(x, flow, mode=mode)
        assert torch.allclose(out[:, :, 1:, :5], x[:, :, :4, 2:])
        assert (out[:, :, 0] == 0).all() and (out[:, :, :, 5:] == 0).all()
    mask = in_frame_mask(flow)
    assert mask.shape == (2, 1, 5, 7) and mask.dtype == torch.bool
    assert mask[:, 0, 1:, :5].all() and not mask[:, 0, 0].any() and not mask[:, 0, :, 5:].any()


def test_half_pixel_flow_interpolates_bilinearly():
    x = torch.tensor([[0.0, 10.0, 20.0, 30.0]]).view(1, 1, 1, 4).repeat(1, 1, 3, 1)
    flow = torch.zeros(1, 2, 3, 4)
    flow[:, 0] = 0.5
    out = warp(x, flow)
    assert torch.allclose(out[0, 0, 1, :3], torch.tensor([5.0, 15.0, 25.0]))


def test_zero_flow_is_identity_and_keeps_dtype():
    x = torch.rand(1, 4, 6, 9, dtype=torch.float64)
    assert torch.equal(warp(x, torch.zeros(1, 2, 6, 9)), x)


@pytest.mark.parametrize("exact", [True, False])
def test_warp_reproduces_generated_frames_and_labels(exact):
    """warp(frame t+1, flows[t]) = frame t and nearest-warped labels t+1 = labels t on non-occluded pixels."""
    clip = make_clip(seed=7, num_frames=6, height=64, width=96, num_classes=5, scene=NO_BARS,
                     look=Look.exact() if exact else Look())
    frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float()
    labels = torch.from_numpy(clip.labels)
    flows, valid = torch.from_numpy(clip.flows), torch.from_numpy(clip.valid)
    # away from class boundaries in frame t and in frame t+1 (where sampling may straddle two surfaces)
    edges = _edges(labels)
    interior = valid & (edges[:-1, 0] == 0) & (warp(edges[1:], flows)[:, 0] == 0)
    assert interior.float().mean() > 0.6

    warped_labels = warp(labels[1:].unsqueeze(1).float(), flows, mode="nearest")[:, 0].long()
    assert torch.equal(warped_labels[interior], labels[:-1].long()[interior])

    err = (warp(frames[1:], flows) - frames[:-1]).abs().mean(1)[interior]
    still = (frames[1:] - frames[:-1]).abs().mean(1)[interior]
    if exact:
        assert err.mean() < 1.5 and err.max() < 8  # only bilinear interpolation of a smooth texture
        assert err.mean() < 0.3 * still.mean()
    else:
        assert err.mean() < still.mean()  # per-frame noise dominates, motion is still compensated
    # the wrong direction of the flow must not work as well
    err_neg = (warp(frames[1:], -flows) - frames[:-1]).abs().mean(1)[interior]
    assert err.mean() < err_neg.mean()


MOVING = Scene(thin_objects=0, camera_pan=5.0, camera_zoom=0.02)  # a panning, zooming camera (configs/reproduce_motion)


@pytest.mark.parametrize("scene", [NO_BARS, MOVING], ids=["still", "moving camera"])
@pytest.mark.parametrize("t, k", [(2, 1), (3, -1), (1, 3), (4, -3)])
def test_pair_flow_for_any_gap_warps_labels_exactly(t, k, scene):
    """pair_flow(t, k) satisfies warp(frame_{t+k}, F) = frame_t for gaps both ways, and k=1 equals clip.flows; with
    a moving camera too (its pan and zoom are exact in the flow)."""
    args = dict(seed=11, num_frames=6, height=48, width=80, num_classes=5)
    clip = make_clip(**args, scene=scene, look=Look.exact())
    flow, valid = pair_flow(**args, t=t, k=k, scene=scene)
    if k == 1:
        assert np.array_equal(flow, clip.flows[t]) and np.array_equal(valid, clip.valid[t])
    labels = torch.from_numpy(clip.labels)
    edges = _edges(labels)
    flow_t = torch.from_numpy(flow)[None]
    interior = torch.from_numpy(valid) & (edges[t, 0] == 0) & (warp(edges[t + k][None], flow_t)[0, 0] == 0)
    assert interior.float().mean() > (0.5 if scene is NO_BARS else 0.3)  # a pan of 15 px takes a strip out of frame
    warped = warp(labels[t + k][None, None].float(), flow_t, mode="nearest")[0, 0].long()
    assert torch.equal(warped[interior], labels[t].long()[interior])
    frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float()
    err = (warp(frames[t + k][None], flow_t)[0] - frames[t]).abs().mean(0)[interior]
    assert err.mean() < 2.0


def test_warp_rejects_bad_shapes_and_modes():
    with pytest.raises(ValueError, match=r"\[B,2,H,W\]"):
        warp(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="must be"):
        warp(torch.zeros(1, 3, 4, 5), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="mode"):
        warp(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4), mode="bicubic")


def test_flow_to_color_wheel():
    flow = np.zeros((2, 4, 4), np.float32)
    assert (flow_to_color(flow) == 255).all()  # still = white
    flow[0] = 1.0  # pure +x
    right = flow_to_color(flow)[0, 0]
    flow[0] = -1.0  # pure -x: opposite side of the wheel
    left = flow_to_color(flow)[0, 0]
    assert right.shape == (3,) and not np.array_equal(right, left)
    assert right[0] == 255 and right[1] < 10 and right[2] < 10  # +x is red in the Middlebury wheel
    assert left[0] < 10 and left[2] > 150  # -x is cyan-blue
    half = flow_to_color(flow, max_flow=2.0)[0, 0]
    assert half.min() > left.min()  # half magnitude = less saturated
    with pytest.raises(ValueError):
        flow_to_color(np.zeros((4, 4, 2)))
