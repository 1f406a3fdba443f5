"""The pyfunc of every registered version (MLflow models-from-code): uint8 RGB frames in, class ids out.

    mlflow.pyfunc.load_model("models:/etc-student-pspnet18_slim@champion").predict(frames)
        frames uint8 [N,H,W,3] (RGB) -> class ids uint8 [N,H,W] (int64 above 256 classes)
        params={"logits": True}     -> float32 logits [N,K,H,W]

MLflow runs this file when it loads a version (`mlflow.pyfunc.load_model`, `mlflow models serve`); the project
code travels with the model (`code_paths`), and the weights load with `torch.load(weights_only=True)`: loading
unpickles nothing. The model normalises the frames and resizes them to the size it was trained at
(`input_size` in etc_model.json), then resizes the logits back to the frames' size. Logged by
`etc_core.tracking.registry.log_and_register`; never imported by the project itself.
"""
from __future__ import annotations

import json

import mlflow
import numpy as np

BATCH = 8  # frames per forward: bounds the memory of a large request


class EtcSegmenter(mlflow.pyfunc.PythonModel):
    """A registered etc-pipeline network behind the pyfunc interface (see the module docstring)."""

    def load_context(self, context) -> None:
        import torch

        from etc_core.infer.load import pick_device
        from etc_core.infer.predict import Predictor
        from etc_core.models import from_weights

        with open(context.artifacts["meta"]) as f:
            meta = json.load(f)
        model = from_weights(meta["arch"], meta["num_classes"],
                             torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
        size = meta.get("input_size")
        self.num_classes = int(meta["num_classes"])
        self.predictor = Predictor(model, pick_device("auto"), size=tuple(size) if size else None)

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        """uint8 [N,H,W,3] (or one [H,W,3] frame) -> class ids [N,H,W]; logits [N,K,H,W] with params logits=True."""
        import torch

        frames = np.asarray(model_input)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
            raise ValueError(f"expected uint8 RGB frames [N,H,W,3], got {frames.dtype} {list(frames.shape)}")
        logits = bool((params or {}).get("logits", False))
        ids = torch.uint8 if self.num_classes <= 256 else torch.int64
        out = []
        for i in range(0, len(frames), BATCH):
            batch = self.predictor.logits(frames[i:i + BATCH])  # [B,K,H,W] at the frames' size
            out.append((batch if logits else batch.argmax(1).to(ids)).cpu().numpy())
        return np.concatenate(out)


mlflow.models.set_model(EtcSegmenter())
