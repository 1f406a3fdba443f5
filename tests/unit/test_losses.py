"""The ETC loss functions against direct numpy / loop computations and their gradient routing (the combined
objective and its terms: tests/unit/test_etc_loss.py)."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from etc_core.losses import kd_pixel, kd_temporal, occlusion_mask, segmentation_loss, temporal_loss


# ---------- numpy references ----------

def np_warp_border(x: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Bilinear backward warp with clamped (border) sample points, pixel by pixel. x [B,C,H,W], flow [B,2,H,W]."""
    batch, channels, height, width = x.shape
    out = np.zeros_like(x)
    for b in range(batch):
        for y in range(height):
            for col in range(width):
                sx = min(max(col + flow[b, 0, y, col], 0.0), width - 1.0)
                sy = min(max(y + flow[b, 1, y, col], 0.0), height - 1.0)
                x0, y0 = int(np.floor(sx)), int(np.floor(sy))
                x1, y1 = min(x0 + 1, width - 1), min(y0 + 1, height - 1)
                ax, ay = sx - x0, sy - y0
                out[b, :, y, col] = ((1 - ax) * (1 - ay) * x[b, :, y0, x0] + ax * (1 - ay) * x[b, :, y0, x1]
                                     + (1 - ax) * ay * x[b, :, y1, x0] + ax * ay * x[b, :, y1, x1])
    return out


def np_inside(flow: np.ndarray) -> np.ndarray:
    _, _, height, width = flow.shape
    px = np.arange(width)[None, None, :] + flow[:, 0]
    py = np.arange(height)[None, :, None] + flow[:, 1]
    return ((px >= 0) & (px <= width - 1) & (py >= 0) & (py <= height - 1))[:, None].astype(np.float64)


def np_mask(image_t, image_next, flow, out_of_frame=True):
    mask = np.exp(-np.abs((image_t - np_warp_border(image_next, flow)).sum(1, keepdims=True)))
    return mask * np_inside(flow) if out_of_frame else mask


def np_softmax(z, axis=1):
    e = np.exp(z - z.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def random_pair(seed=0, batch=2, classes=3, height=5, width=6, flow_scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return dict(logits_t=torch.randn(batch, classes, height, width, generator=gen),
                logits_next=torch.randn(batch, classes, height, width, generator=gen),
                flow=(torch.rand(batch, 2, height, width, generator=gen) * 2 - 1) * flow_scale,
                image_t=torch.randn(batch, 3, height, width, generator=gen),
                image_next=torch.randn(batch, 3, height, width, generator=gen))


# ---------- temporal loss ----------

@pytest.mark.parametrize("out_of_frame", [True, False])
def test_occlusion_mask_matches_numpy(out_of_frame):
    pair = random_pair()
    assert (~torch.from_numpy(np_inside(pair["flow"].numpy()).astype(bool))).any()  # some samples leave the frame
    mask = occlusion_mask(pair["image_t"], pair["image_next"], pair["flow"], mask_out_of_frame=out_of_frame)
    assert mask.shape == (2, 1, 5, 6) and not mask.requires_grad
    expected = np_mask(*(pair[k].double().numpy() for k in ("image_t", "image_next", "flow")), out_of_frame)
    np.testing.assert_allclose(mask.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_occlusion_mask_uses_signed_channel_sum():
    image_t = torch.zeros(1, 3, 4, 4)
    image_next = image_t.clone()
    image_next[:, 0] += 1.0  # +1 in R, -1 in G: cancels in the signed sum (the code's quirk)
    image_next[:, 1] -= 1.0
    zero_flow = torch.zeros(1, 2, 4, 4)
    torch.testing.assert_close(occlusion_mask(image_t, image_next, zero_flow), torch.ones(1, 1, 4, 4))
    image_next[:, 2] += 2.0
    torch.testing.assert_close(occlusion_mask(image_t, image_next, zero_flow), torch.full((1, 1, 4, 4), np.exp(-2.0)))


@pytest.mark.parametrize("on", ["logits", "probs"])
@pytest.mark.parametrize("out_of_frame", [True, False])
def test_temporal_loss_matches_numpy(on, out_of_frame):
    pair = random_pair(seed=1)
    loss = temporal_loss(pair["logits_t"], pair["logits_next"], pair["flow"], pair["image_t"], pair["image_next"],
                         on=on, mask_out_of_frame=out_of_frame)
    assert loss.ndim == 0
    z_t, z_next, flow, image_t, image_next = (pair[k].double().numpy() for k in
                                              ("logits_t", "logits_next", "flow", "image_t", "image_next"))
    if on == "probs":
        z_t, z_next = np_softmax(z_t), np_softmax(z_next)
    mask = np_mask(image_t, image_next, flow, out_of_frame)  # [B,1,H,W]
    expected = np.mean((mask * (z_t - np_warp_border(z_next, flow))) ** 2)  # mean over B*C*H*W
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-5)


def test_temporal_loss_zero_for_static_video():
    pair = random_pair(seed=2, height=8, width=8)
    zero_flow = torch.zeros(2, 2, 8, 8)
    loss = temporal_loss(pair["logits_t"], pair["logits_t"].clone(), zero_flow, pair["image_t"], pair["image_t"])
    assert loss.item() == pytest.approx(0.0, abs=1e-10)  # grid_sample round-off only
    # identical frames, different predictions: O = 1, plain mean squared difference
    loss = temporal_loss(pair["logits_t"], pair["logits_next"], zero_flow, pair["image_t"], pair["image_t"])
    torch.testing.assert_close(loss, (pair["logits_t"] - pair["logits_next"]).square().mean())


def test_temporal_loss_constant_shift():
    """Content moving 2 px right: F = +2 in x re-aligns it; the 2 columns without correspondence are masked."""
    pair = random_pair(seed=3, height=6, width=10)
    shift = 2
    image_next = torch.roll(pair["image_t"], shifts=shift, dims=3)  # next(x) = t(x - 2) inside the frame
    logits_next = torch.roll(pair["logits_t"], shifts=shift, dims=3)
    flow = torch.zeros(2, 2, 6, 10)
    flow[:, 0] = shift  # warp(next, F)(x) = next(x + 2) = t(x)
    mask = occlusion_mask(pair["image_t"], image_next, flow)
    torch.testing.assert_close(mask[..., : 10 - shift], torch.ones(2, 1, 6, 10 - shift))
    assert (mask[..., 10 - shift:] == 0).all()
    loss = temporal_loss(pair["logits_t"], logits_next, flow, pair["image_t"], image_next)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    # the official code (border clamp, no out-of-frame mask) compares the last columns with the border column
    unmasked = temporal_loss(pair["logits_t"], logits_next, flow, pair["image_t"], image_next, mask_out_of_frame=False)
    assert unmasked.item() > 1e-3
    # and a wrong flow is penalised
    assert temporal_loss(pair["logits_t"], logits_next, flow * 0, pair["image_t"], image_next).item() > 1e-3


def test_temporal_loss_gradients_into_both_frames_only():
    pair = random_pair(seed=4)
    for key in pair:
        pair[key].requires_grad_(True)
    temporal_loss(**pair).backward()
    assert pair["logits_t"].grad.abs().sum() > 0 and pair["logits_next"].grad.abs().sum() > 0
    assert pair["flow"].grad is None and pair["image_t"].grad is None and pair["image_next"].grad is None


def test_temporal_loss_rejects_mismatched_sizes():
    pair = random_pair()
    with pytest.raises(ValueError, match="temporal_loss: logits_t"):
        temporal_loss(pair["logits_t"][..., :4], pair["logits_next"], pair["flow"], pair["image_t"], pair["image_next"])
    with pytest.raises(ValueError, match="on must be"):
        temporal_loss(**pair, on="softmax")


# ---------- segmentation ----------

def np_cross_entropy(logits, label, weight=None):
    logp = np.log(np_softmax(logits))
    num = den = 0.0
    for b, y, x in np.ndindex(*label.shape):
        cls = label[b, y, x]
        if cls == 255:
            continue
        w = 1.0 if weight is None else weight[cls]
        num += -w * logp[b, cls, y, x]
        den += w
    return num / den


def test_segmentation_loss_matches_loop():
    gen = torch.Generator().manual_seed(5)
    logits, aux = torch.randn(2, 4, 5, 6, generator=gen), torch.randn(2, 4, 5, 6, generator=gen)
    label = torch.randint(0, 4, (2, 5, 6), generator=gen)
    label[0, :2] = 255
    ce = np_cross_entropy(logits.double().numpy(), label.numpy())
    ce_aux = np_cross_entropy(aux.double().numpy(), label.numpy())
    assert segmentation_loss(logits, label).item() == pytest.approx(ce, rel=1e-5)
    assert segmentation_loss(logits, label, aux).item() == pytest.approx(ce + 0.4 * ce_aux, rel=1e-5)
    assert segmentation_loss(logits, label, aux, aux_weight=0.0).item() == pytest.approx(ce, rel=1e-5)
    weight = torch.tensor([0.9, 1.1, 1.0, 0.8])
    expected = np_cross_entropy(logits.double().numpy(), label.numpy(), weight.double().numpy())
    assert segmentation_loss(logits, label, class_weight=weight).item() == pytest.approx(expected, rel=1e-5)


def test_ignore_index_matches_the_data_package():
    from etc_core.data.base import IGNORE_INDEX
    from etc_core.losses.segmentation import IGNORE_INDEX as LOSS_IGNORE_INDEX

    assert LOSS_IGNORE_INDEX == IGNORE_INDEX == 255


def test_segmentation_loss_unlabelled_frame_is_zero_not_nan():
    logits = torch.randn(2, 4, 5, 6, requires_grad=True)
    label = torch.full((2, 5, 6), 255)
    loss = segmentation_loss(logits, label, torch.randn(2, 4, 5, 6))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


# ---------- distillation ----------

def test_kd_pixel_matches_numpy_and_kldivloss():
    gen = torch.Generator().manual_seed(6)
    student, teacher = torch.randn(2, 4, 3, 5, generator=gen), torch.randn(2, 4, 3, 5, generator=gen)
    for tau in (1.0, 2.0):
        p_t = np_softmax(teacher.double().numpy() / tau)
        p_s = np_softmax(student.double().numpy() / tau)
        expected = np.mean(p_t * (np.log(p_t) - np.log(p_s)))  # element-wise mean over B*C*H*W, no tau^2
        assert kd_pixel(student, teacher, tau).item() == pytest.approx(expected, rel=1e-5)
    with pytest.warns(UserWarning):  # nn.KLDivLoss() default 'mean', as the official CriterionKD
        reference = torch.nn.KLDivLoss()(F.log_softmax(student, 1), F.softmax(teacher, 1))
    torch.testing.assert_close(kd_pixel(student, teacher), reference)
    assert kd_pixel(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_pixel_upsamples_student_to_teacher():
    gen = torch.Generator().manual_seed(7)
    student, teacher = torch.randn(1, 3, 4, 4, generator=gen), torch.randn(1, 3, 8, 8, generator=gen)
    resized = F.interpolate(student, size=(8, 8), mode="bilinear", align_corners=True)
    torch.testing.assert_close(kd_pixel(student, teacher), kd_pixel(resized, teacher))


def np_pf(s_t, s_next, t_t, t_next):
    def affinity(a, b):  # a, b [C,H,W] -> [N,N], loop over position pairs
        fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        out = np.zeros((fa.shape[1], fb.shape[1]))
        for i in range(fa.shape[1]):
            for j in range(fb.shape[1]):
                out[i, j] = fa[:, i] @ fb[:, j] / (np.linalg.norm(fa[:, i]) * np.linalg.norm(fb[:, j]))
        return out
    return np.mean([(affinity(s_t[b], s_next[b]) - affinity(t_t[b], t_next[b])) ** 2 for b in range(len(s_t))])


def test_kd_temporal_matches_loop():
    gen = torch.Generator().manual_seed(8)
    # student and teacher may have different channel counts; only the N x N affinities are compared
    feats = [torch.randn(2, 3, 3, 4, generator=gen), torch.randn(2, 3, 3, 4, generator=gen),
             torch.randn(2, 6, 3, 4, generator=gen), torch.randn(2, 6, 3, 4, generator=gen)]
    feats[0][0, :, 0, 0] *= 50  # varying norms: the code's swapped normaliser would differ here
    expected = np_pf(*(f.double().numpy() for f in feats))
    assert kd_temporal(*feats).item() == pytest.approx(expected, rel=1e-5)
    assert kd_temporal(feats[2], feats[3], feats[2], feats[3]).item() == pytest.approx(0.0, abs=1e-10)


def test_kd_temporal_pools_large_maps():
    gen = torch.Generator().manual_seed(9)
    feats = [torch.randn(1, 2, 66, 64, generator=gen) for _ in range(4)]  # N = 4224 > 4096
    pooled = [F.avg_pool2d(f, 2) for f in feats]  # 33 x 32 = 1056 positions
    cos = [F.normalize(f.flatten(2), dim=1).double() for f in pooled]
    expected = ((cos[0].transpose(1, 2) @ cos[1] - cos[2].transpose(1, 2) @ cos[3]) ** 2).mean()
    assert kd_temporal(*feats).item() == pytest.approx(expected.item(), rel=1e-4)
    small = [f[..., :64, :64] for f in feats]  # N = 4096: not pooled
    cos = [F.normalize(f.flatten(2), dim=1).double() for f in small]
    expected = ((cos[0].transpose(1, 2) @ cos[1] - cos[2].transpose(1, 2) @ cos[3]) ** 2).mean()
    assert kd_temporal(*small).item() == pytest.approx(expected.item(), rel=1e-4)
