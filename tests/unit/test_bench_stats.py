"""The statistics and controls of the reproduction benchmark (benchmarks/reproduce.py), on hand-made numbers."""
import pytest
import torch

from benchmarks import reproduce


def test_ci95_uses_students_t():
    r = reproduce.ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert r["mean"] == 3.0 and r["n"] == 5
    assert r["ci95"] == pytest.approx(2.776 * (2.5 ** 0.5) / 5 ** 0.5, rel=1e-3)  # t(0.975, 4 df) * s / sqrt(n)


def test_above_curve_interpolates_at_equal_miou():
    curve = [{"miou": 60.0, "tc_noc": 80.0}, {"miou": 50.0, "tc_noc": 90.0}]  # blur: less mIoU, more TC
    assert reproduce.above_curve({"miou": 55.0, "tc_noc": 86.0}, curve) == pytest.approx(1.0)
    assert reproduce.above_curve({"miou": 55.0, "tc_noc": 84.0}, curve) == pytest.approx(-1.0)
    assert reproduce.above_curve({"miou": 65.0, "tc_noc": 84.0}, curve) is None  # outside the curve


def test_smoothed_blurs_logits_and_keeps_constant_maps():
    from etc_core.models import SegOutput

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):
            return SegOutput(self.logits, self.logits)

    flat = torch.ones(1, 3, 16, 16)
    assert torch.allclose(reproduce.Smoothed(Fixed(flat), 2.0)(None).logits, flat, atol=1e-6)
    spike = torch.zeros(1, 1, 16, 16)
    spike[0, 0, 8, 8] = 1.0
    out = reproduce.Smoothed(Fixed(spike), 1.0)(None).logits
    assert out.sum() == pytest.approx(1.0, rel=1e-5) and out.max() < 0.2 and out[0, 0, 8, 8] == out.max()
