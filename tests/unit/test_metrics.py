import math

import numpy as np
import pytest
import torch

from etc_core.metrics import ConfusionMatrix, TemporalConsistency, mean_iou, temporal_consistency


def test_mean_iou_hand_computed():
    gt = np.array([[0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1]], np.uint8)
    # class 0: I=1 U=2 -> 0.5 ; class 1: I=2 U=3 -> 2/3
    assert mean_iou([(pred, gt)], num_classes=2) == pytest.approx(100 * (0.5 + 2 / 3) / 2)


def test_mean_iou_accumulates_over_pairs_not_per_image():
    gt1, pred1 = np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 1]])  # class 0: I=3, U=4; class 1: I=0, U=1
    gt2, pred2 = np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 1]])  # class 1: I=4, U=4
    # accumulated: class 0 = 3/4, class 1 = 4/5 (a per-image mean would give something else)
    assert mean_iou([(pred1, gt1), (pred2, gt2)], 2) == pytest.approx(100 * (0.75 + 0.8) / 2)


def test_perfect_prediction_is_100_and_absent_classes_do_not_count():
    gt = np.random.default_rng(0).integers(0, 3, (5, 7)).astype(np.uint8)
    assert mean_iou([(gt, gt)], num_classes=10) == pytest.approx(100.0)


def test_ignore_pixels_are_excluded():
    gt = np.array([[0, 255, 1, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 0]], np.uint8)
    assert mean_iou([(pred, gt)], 2) == pytest.approx(100.0)


def test_invalid_prediction_counts_as_a_miss_and_bad_target_raises():
    gt = np.array([[0, 0]], np.uint8)
    pred = np.array([[0, 255]], np.uint8)
    assert mean_iou([(pred, gt)], 2) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="outside"):
        mean_iou([(gt, np.array([[0, 7]]))], 2)
    with pytest.raises(ValueError, match="shape"):
        mean_iou([(np.zeros((2, 2)), np.zeros((2, 3)))], 2)
    assert math.isnan(mean_iou([], 3))


def test_numpy_tensor_and_batched_updates_agree():
    rng = np.random.default_rng(1)
    gts = rng.integers(0, 4, (3, 6, 8)).astype(np.uint8)
    preds = np.where(rng.random((3, 6, 8)) < 0.7, gts, rng.integers(0, 4, (3, 6, 8))).astype(np.uint8)
    gts[0, 0] = 255
    per_pair = mean_iou(zip(preds, gts), 4)
    as_tensors = mean_iou(zip(torch.from_numpy(preds), torch.from_numpy(gts)), 4)
    cm = ConfusionMatrix(4)
    cm.update(torch.from_numpy(preds), gts)  # one batched call, mixed types
    assert per_pair == pytest.approx(as_tensors) == pytest.approx(cm.mean_iou())
    other = ConfusionMatrix(4)
    other.update(preds[:1], gts[:1])
    rest = ConfusionMatrix(4)
    rest.update(preds[1:], gts[1:])
    other.merge(rest)
    assert torch.equal(other.mat, cm.mat)


def test_tc_static_scene_equals_miou_of_identical_maps():
    rng = np.random.default_rng(2)
    pred = rng.integers(0, 5, (12, 16)).astype(np.uint8)
    zero = np.zeros((2, 12, 16), np.float32)
    assert temporal_consistency([(pred, pred, zero)], 5) == pytest.approx(mean_iou([(pred, pred)], 5)) == 100.0


def test_tc_follows_the_flow_and_ignores_out_of_frame():
    pred_t = np.array([[0, 0, 1, 1, 2, 2]] * 3, np.uint8)
    pred_next = np.roll(pred_t, 1, axis=1)  # the scene moved one pixel right
    pred_next[:, 0] = 2  # what entered on the left
    flow = np.zeros((2, 3, 6), np.float32)
    flow[0] = 1.0  # pixel x of frame t is at x+1 in frame t+1
    assert temporal_consistency([(pred_t, pred_next, flow)], 3) == pytest.approx(100.0)  # last column out of frame
    # without the flow the shifted maps disagree
    assert temporal_consistency([(pred_t, pred_next, np.zeros_like(flow))], 3) < 60


def test_tc_hand_computed_and_ignore_in_pred_t():
    pred_t = np.array([[0, 0, 1, 1]], np.uint8)
    pred_next = np.array([[0, 1, 1, 1]], np.uint8)
    zero = np.zeros((2, 1, 4), np.float32)
    assert temporal_consistency([(pred_t, pred_next, zero)], 2) == pytest.approx(100 * (0.5 + 2 / 3) / 2)
    pred_t_ign = np.array([[0, 255, 1, 1]], np.uint8)
    assert temporal_consistency([(pred_t_ign, pred_next, zero)], 2) == pytest.approx(100.0)


def test_tc_batched_accumulator_matches_function():
    rng = np.random.default_rng(3)
    preds = rng.integers(0, 3, (4, 10, 12)).astype(np.uint8)
    flows = rng.normal(0, 1.5, (3, 2, 10, 12)).astype(np.float32)
    expected = temporal_consistency(zip(preds[:-1], preds[1:], flows), 3)
    acc = TemporalConsistency(3)
    acc.update(torch.from_numpy(preds[:-1]), torch.from_numpy(preds[1:]), torch.from_numpy(flows))
    assert acc.value() == pytest.approx(expected)
    with pytest.raises(ValueError, match="TC"):
        acc.update(preds[:2], preds[1:3], flows[:1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_metrics_on_gpu_match_cpu():
    rng = np.random.default_rng(4)
    preds = torch.from_numpy(rng.integers(0, 3, (4, 10, 12)))
    flows = torch.from_numpy(rng.normal(0, 1.5, (3, 2, 10, 12)).astype(np.float32))
    cpu = TemporalConsistency(3)
    cpu.update(preds[:-1], preds[1:], flows)
    gpu = TemporalConsistency(3, device="cuda")
    gpu.update(preds[:-1].cuda(), preds[1:].cuda(), flows.cuda())
    assert gpu.value() == pytest.approx(cpu.value())


@pytest.mark.parametrize("budget_s, calls", [(0.0, 2 + 4), (60.0, 2 + 7)])
def test_measure_latency_times_iters_calls_then_up_to_max_iters_within_the_budget(budget_s, calls):
    from etc_core.metrics.speed import measure_latency

    seen = []
    ms = measure_latency(lambda: seen.append(1), torch.device("cpu"), warmup=2, iters=4, budget_s=budget_s,
                         max_iters=7)
    assert len(seen) == calls and 0 <= ms < 1000
