"""TC with a validity mask (tc_noc), the flicker rate, the reference rows and the one scoring path."""
import pytest
import torch

from etc_core.metrics import (Flicker, SegScores, TemporalConsistency, interior_mask, reference_predictions,
                              stride_oracle)


def _shift_flow(h: int, w: int, dx: float, dy: float = 0.0) -> torch.Tensor:
    flow = torch.zeros(1, 2, h, w)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


def _blocks(h: int = 24, w: int = 32) -> torch.Tensor:
    """A label map of two big regions: class 0 left, class 1 right (one vertical edge at x = w // 2)."""
    lab = torch.zeros(1, h, w, dtype=torch.long)
    lab[..., w // 2:] = 1
    return lab


def test_occluded_pixel_does_not_count_with_valid_and_counts_without():
    pred_t = torch.tensor([[[0, 0, 1, 1]]])
    pred_next = torch.tensor([[[0, 0, 1, 0]]])  # the last pixel disagrees
    flow = torch.zeros(1, 2, 1, 4)
    valid = torch.tensor([[[True, True, True, False]]])  # ... and it is occluded in the next frame
    plain, noc = TemporalConsistency(2), TemporalConsistency(2)
    plain.update(pred_t, pred_next, flow)
    noc.update(pred_t, pred_next, flow, valid=valid)
    assert noc.value() == pytest.approx(100.0)
    # without the mask: class 0 I=2 U=3, class 1 I=1 U=2
    assert plain.value() == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)


def test_constant_shift_of_a_perfect_prediction_scores_100():
    lab = _blocks()
    nxt = torch.roll(lab, shifts=3, dims=-1)  # everything moved 3 px right at t+1
    nxt[..., :3] = 0
    flow = _shift_flow(24, 32, 3.0)  # warp(next, flow)(p) = next(p + 3) = lab(p)
    s = SegScores(2)
    s.update_pairs(lab, nxt, flow, lab, nxt, valid=torch.ones_like(lab, dtype=torch.bool))
    r = s.result()
    assert r["tc"] == pytest.approx(100.0) and r["tc_noc"] == pytest.approx(100.0)
    assert r["flicker_interior"] == 0.0 and r["flicker_boundary"] == 0.0


def test_one_flipped_interior_pixel_gives_the_expected_rate():
    lab = _blocks()
    pred_next = lab.clone()
    pred_next[0, 5, 4] = 1  # deep inside class 0 (x=4, 12 px from the edge)
    f = Flicker()
    f.update(lab, pred_next, lab, lab, torch.zeros(1, 2, 24, 32))
    interior = interior_mask(lab)
    n_interior = int(interior.sum())
    assert n_interior == 24 * 32 - 24 * 6  # the 3-px band on each side of the one edge is boundary
    rate_int, rate_bnd = f.value()
    assert rate_int == pytest.approx(100.0 / n_interior) and rate_bnd == 0.0


def test_flicker_counts_only_pixels_whose_label_is_stable_and_valid():
    lab = _blocks()
    lab_next = lab.clone()
    lab_next[0, 10:14, 2:6] = 1  # the ground truth itself changes here: not counted, whatever the model does
    pred_next = lab.clone()
    pred_next[0, 10:14, 2:6] = 1
    valid = torch.ones_like(lab, dtype=torch.bool)
    valid[0, 0, 0] = False
    f = Flicker()
    f.update(lab, pred_next, lab, lab_next, torch.zeros(1, 2, 24, 32), valid)
    assert f.value()[0] == 0.0
    assert int(f.counts[:, 0].sum()) == 24 * 32 - 16 - 1


def test_stride_oracle_and_reference_rows():
    lab = _blocks(32, 64)
    assert torch.equal(reference_predictions("ground truth", lab, 2), lab)
    oracle = stride_oracle(lab, 2, 8)
    assert torch.equal(oracle, lab)  # an edge on the stride grid survives
    odd = torch.zeros(1, 32, 64, dtype=torch.long)
    odd[..., 10:13, 20:23] = 1  # a 3x3 object is lost at stride 8
    assert (stride_oracle(odd, 2, 8) == 0).all()
    ignore = lab.clone()
    ignore[0, 0, 0] = 255
    assert stride_oracle(ignore, 2, 8)[0, 0, 0] == 255
    with pytest.raises(ValueError, match="unknown reference"):
        reference_predictions("oracle", lab, 2)


def test_seg_scores_says_none_for_what_the_source_cannot_give():
    s = SegScores(3)
    pred = torch.zeros(2, 8, 8, dtype=torch.long)
    s.update_frames(pred, torch.full((2, 8, 8), 255))  # unlabelled frames
    s.update_pairs(pred, pred, torch.zeros(2, 2, 8, 8))  # no labels on the pair, no mask
    r = s.result()
    assert r["miou"] is None and r["tc_noc"] is None and r["flicker_interior"] is None
    assert r["tc"] == pytest.approx(100.0)


def test_training_validation_and_the_table_share_the_scoring_path():
    """etc_core.train.evaluate and etc_core.infer.evaluate both score through SegScores.update_batch."""
    import inspect

    from etc_core.infer import evaluate as table
    from etc_core.train import evaluate as validation

    assert "update_batch" in inspect.getsource(validation.evaluate)
    assert "update_batch" in inspect.getsource(table._score_shards)
    assert "ConfusionMatrix(" not in inspect.getsource(table) + inspect.getsource(validation)
