"""Training checkpoints: one plain dict (model, optimizer, scheduler, scaler, step, RNG, arch, num_classes) in
`state.pt`, loaded weights-only: the one reader of a checkpoint, for the Ray Train resume, the registration of the
best checkpoint and `--model ckpt/state.pt` (etc_core/infer/load.py) alike."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.pt"


def rng_state() -> dict:
    """Python, NumPy and torch RNG states in a form torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)}}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def save_checkpoint(directory: str, **state) -> str:
    """torch.save(state) to directory/state.pt through a temp file (never a half-written checkpoint)."""
    path = os.path.join(directory, STATE_FILE)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint file of `path`: path/state.pt for a directory, else path itself."""
    path = Path(path)
    return path / STATE_FILE if path.is_dir() else path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint (a directory holding state.pt, or the file) with weights_only=True (no pickled code runs)."""
    return torch.load(checkpoint_file(path), map_location=map_location, weights_only=True)
