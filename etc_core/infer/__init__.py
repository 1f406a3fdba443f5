"""Inference on videos: load a model (registry, run or checkpoint), predict masks, evaluate, export.

    etc-pipeline predict --model models:/etc-student-pspnet18_slim@champion --input clip.mp4 --out out/
    etc-pipeline evaluate --model models:/etc-teacher@champion --model ckpt/state.pt --data runs/demo/data
    etc-pipeline export --model models:/etc-student-pspnet18_slim@champion --out export/ --format both
"""
from etc_core.errors import EtcError


class InputError(EtcError):
    """A model URI, video, frames directory or glob given on the command line cannot be used (exit code 2)."""

    exit_code = 2
