"""`etc-pipeline predict` on CUDA: float32 and --half agree with the CPU masks."""
import numpy as np
import pytest
import torch
from PIL import Image

from etc_core.cli import main
from etc_core.data.synthetic import make_clip
from etc_core.models import create_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _predict(ckpt, src, out, *extra) -> np.ndarray:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(ckpt), "--input", str(src), "--out", str(out), "--overlay", "none", *extra])
    assert exit_info.value.code == 0
    return np.stack([np.asarray(Image.open(f)) for f in sorted((out / "masks").iterdir())])


def test_cuda_and_half_match_cpu(tmp_path):
    torch.manual_seed(0)
    model = create_model("pspnet18_slim", num_classes=4).eval()
    torch.save({"model": model.state_dict(), "arch": "pspnet18_slim", "num_classes": 4}, tmp_path / "state.pt")
    src = tmp_path / "frames"
    src.mkdir()
    for t, frame in enumerate(make_clip(0, 4, 64, 96, 4).frames):
        Image.fromarray(frame).save(src / f"{t:06d}.png")
    cpu = _predict(tmp_path / "state.pt", src, tmp_path / "cpu", "--device", "cpu")
    cuda = _predict(tmp_path / "state.pt", src, tmp_path / "cuda", "--device", "cuda")
    half = _predict(tmp_path / "state.pt", src, tmp_path / "half", "--device", "cuda", "--half")
    assert (cuda == cpu).mean() > 0.99 and (half == cpu).mean() > 0.95
