"""Video consistency (mVC, VSPW): known answers by hand, VSPW's own code as the oracle, and clips rebuilt from pairs."""
import random

import numpy as np
import pytest
import torch

from etc_core.metrics import SegScores, VideoConsistency
from etc_core.metrics.vc import ClipBuffer

# one clip, T=4 frames of 1x4 pixels
LABELS = np.array([[[0, 0, 1, 1]], [[0, 0, 1, 2]], [[0, 1, 1, 2]], [[0, 1, 1, 2]]], np.uint8)
PREDS = np.array([[[0, 0, 1, 1]], [[0, 1, 1, 2]], [[0, 1, 1, 2]], [[1, 1, 1, 2]]], np.uint8)


def vspw_get_common(list_, predlist, clip_num, h, w):
    """VSPW's TC_cal.py, verbatim but for names: the per-window accuracies of one clip."""
    accs = []
    for i in range(len(list_) - clip_num):
        global_common = np.ones((h, w))
        predglobal_common = np.ones((h, w))
        for j in range(1, clip_num):
            common = (list_[i] == list_[i + j])
            global_common = np.logical_and(global_common, common)
            pred_common = (predlist[i] == predlist[i + j])
            predglobal_common = np.logical_and(predglobal_common, pred_common)
        pred = (predglobal_common * global_common)
        acc = pred.sum() / global_common.sum()
        accs.append(acc)
    return accs


@pytest.mark.parametrize("as_input", [np.asarray, torch.from_numpy, lambda a: torch.from_numpy(a).long()])
def test_hand_computed_windows_numpy_and_torch(as_input):
    # window 2, VSPW's starts i in range(4 - 2) = {0, 1} (the window at i = 2 is never counted):
    #   i=0 frames 0,1: label same at px 0,1,2 (den 3); prediction also same at px 0,2 -> 2/3
    #   i=1 frames 1,2: label same at px 0,2,3 (den 3); prediction same at all of them   -> 3/3
    #   (i=2 would add frames 2,3: den 4, px 0 flips -> 3/4, and change the mean)
    vc2 = VideoConsistency(2)
    vc2.update(as_input(PREDS), as_input(LABELS))
    assert vc2.windows == 2 and vc2.compute() == pytest.approx(100 * (2 / 3 + 1) / 2)
    # window 3, starts range(1) = {0}: frames 0,1,2: label same at px 0,2 (den 2), prediction same there -> 1
    #   (i=1, frames 1,2,3, would give 2/3)
    vc3 = VideoConsistency(3)
    vc3.update(as_input(PREDS), as_input(LABELS))
    assert vc3.windows == 1 and vc3.compute() == pytest.approx(100.0)


def test_a_clip_of_exactly_window_frames_gives_no_window_and_none():
    vc = VideoConsistency(4)
    vc.update(PREDS, LABELS)  # range(4 - 4) is empty, as in VSPW
    assert vc.windows == 0 and vc.compute() is None
    with pytest.raises(ValueError, match="window"):
        VideoConsistency(1)
    with pytest.raises(ValueError, match=r"\[T,H,W\]"):
        vc.update(PREDS[0], LABELS[0])


def test_mean_over_every_window_of_every_clip():
    vc = VideoConsistency(2)
    vc.update(PREDS, LABELS)  # windows 2/3 and 1 (above)
    other_labels = np.zeros((3, 1, 4), np.uint8)
    other_preds = np.array([[[0, 0, 0, 0]], [[1, 1, 1, 1]], [[1, 1, 1, 1]]], np.uint8)
    vc.update(other_preds, other_labels)  # range(1): frames 0,1, every prediction flips -> 0
    assert vc.compute() == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)  # windows weigh alike, not clips


@pytest.mark.parametrize("window", [3, 8])
def test_agrees_with_vspw_code_on_random_clips(window):
    rng = np.random.default_rng(window)
    vc, accs = VideoConsistency(window), []
    for length in (window, window + 1, 12, 15):
        labels = rng.integers(0, 2, (length, 6, 7)).astype(np.uint8)
        labels[:, :3] = 1  # a stable region, so every window has a denominator
        preds = np.where(rng.random(labels.shape) < 0.1, 1 - labels, labels).astype(np.uint8)
        vc.update(torch.from_numpy(preds), labels)
        accs += vspw_get_common(labels, preds, window, 6, 7)
    assert vc.windows == len(accs) and vc.compute() == pytest.approx(100 * np.mean(accs))


def test_ignored_pixels_do_not_count_unlike_vspw():
    labels = np.array([[[0, 0, 255, 255]]] * 3, np.uint8)
    preds = np.array([[[0, 1, 0, 0]], [[0, 0, 0, 0]], [[0, 0, 0, 0]]], np.uint8)
    vc = VideoConsistency(2)
    vc.update(preds, labels)  # i=0 only: labelled px 0,1 (den 2), prediction same at px 0 -> 1/2
    assert vc.compute() == pytest.approx(50.0)
    assert vspw_get_common(labels, preds, 2, 1, 4) == [0.75]  # VSPW counts the 255 pixels: 3/4


def test_windows_with_an_unlabelled_frame_or_no_stable_pixel_are_skipped():
    labels = np.zeros((5, 1, 4), np.uint8)
    labels[1] = 255  # frame 1 unlabelled: windows i=0 (frames 0,1) and i=1 (frames 1,2) skipped
    preds = np.zeros((5, 1, 4), np.uint8)
    preds[3, 0, 0] = 1  # window i=2 (frames 2,3): 3 of 4 pixels keep their prediction
    vc = VideoConsistency(2)
    vc.update(preds, labels)
    assert vc.windows == 1 and vc.compute() == pytest.approx(75.0)
    flipping = np.array([[[0, 1]], [[1, 0]], [[0, 1]]], np.uint8)  # every label changes: denominator 0
    vc = VideoConsistency(2)
    vc.update(flipping, flipping)
    assert vc.compute() is None


def _clip(seed: int, length: int = 11, h: int = 5, w: int = 6):
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, 3, (1, h, w)), length, 0).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.05] = 2
    preds = np.where(rng.random(labels.shape) < 0.03, 0, labels).astype(np.uint8)
    return torch.from_numpy(preds), torch.from_numpy(labels)


def test_seg_scores_rebuilds_clips_from_pairs_in_any_order_and_from_frame_batches():
    clips = {f"clip_{i:06d}": _clip(i) for i in range(2)}
    want = VideoConsistency(8)
    for preds, labels in clips.values():
        want.update(preds, labels)
    # shard samples: pairs (t, t+1) of every t, plus k=-1 pairs that must not count; any order, batches of 4
    samples = [(v, t, k) for v, (p, _) in clips.items() for t in range(len(p)) for k in (1, -1)
               if 0 <= t + k < len(p)]
    random.Random(0).shuffle(samples)
    from_pairs = SegScores(3)
    for a in range(0, len(samples), 4):
        chunk = samples[a:a + 4]
        pick = lambda i, name: torch.stack([clips[v][i][t + (k if name == "1" else 0)]  # noqa: E731
                                            for v, t, k in chunk])
        batch = {"label": pick(1, "0").long(), "label1": pick(1, "1").long(),
                 "flow": torch.zeros(len(chunk), 2, 5, 6), "key": [f"{v}_{t:06d}_{k}" for v, t, k in chunk]}
        from_pairs.update_batch(batch, pick(0, "0"), pick(0, "1"))
    from_frames = SegScores(3)
    for v, (preds, labels) in clips.items():
        for t in range(0, len(preds), 3):
            from_frames.update_frames(preds[t:t + 3], labels[t:t + 3], v, t)
    for scores in (from_pairs, from_frames):
        result = scores.result()
        assert result["mvc8"] == pytest.approx(want.compute()) and result["mvc16"] is None  # 11 frames < 17


def test_sparsely_labelled_clips_keep_no_frames():
    """Cityscapes-like: one labelled frame in 30; pairs in order keep at most the frames a window could use."""
    buf = ClipBuffer(8)
    label = torch.zeros(4, 4, dtype=torch.uint8)
    unlabelled = torch.full((4, 4), 255, dtype=torch.uint8)
    for t in range(29):
        buf.add("clip", t, label, label if t == 19 else unlabelled)
        buf.add("clip", t + 1, label, label if t + 1 == 19 else None, primary=False)
    assert buf.frames["clip"] == {} and buf.consistency((8,)) == {8: None}
