"""Frames in and out: a video file (PyAV), a directory of images or a glob in; palette PNG masks and videos out.

Frames are uint8 RGB [H,W,3] numpy arrays throughout. Every reading failure becomes one InputError line that
names the path; writes go to a temporary name first and are renamed when complete.
"""
from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from etc_core.errors import first_line
from etc_core.extras import require
from etc_core.infer import InputError
from etc_core.storage.images import open_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FPS = 10.0  # overlay frame rate when the input has none (frames directory or glob)


@dataclass(frozen=True)
class FrameSource:
    """Where frames come from: a video file, or image files in order; num_frames None when a video does not say."""

    path: str
    files: tuple[Path, ...] | None  # None: a video file
    num_frames: int | None
    fps: float | None

    def frames(self) -> Iterator[np.ndarray]:
        """Yield every frame in order: uint8 RGB [H,W,3], all of one size."""
        inner = self._video_frames() if self.files is None else (_read_image(f) for f in self.files)
        size = None
        count = 0
        for frame in inner:
            if size is None:
                size = frame.shape
            elif frame.shape != size:
                raise InputError(f"{self.path}: frame {count} is {frame.shape[1]}x{frame.shape[0]}, the first was "
                                 f"{size[1]}x{size[0]} (all frames must share one size)")
            count += 1
            yield frame
        if count == 0:
            raise InputError(f"{self.path}: no frames could be decoded")

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield frames in batches: uint8 [B,H,W,3] (the last batch may be smaller)."""
        batch: list[np.ndarray] = []
        for frame in self.frames():
            batch.append(frame)
            if len(batch) == batch_size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)

    def _video_frames(self) -> Iterator[np.ndarray]:
        import av  # _probe_video required it

        try:
            with av.open(self.path) as container:
                for frame in container.decode(video=0):
                    yield frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise InputError(f"{self.path}: unreadable video ({first_line(e)})") from None


def open_frames(spec: str) -> FrameSource:
    """Resolve --input: a video file, a directory of images (sorted by name) or a glob of images."""
    if any(c in spec for c in "*?["):
        files = tuple(sorted(Path(p) for p in glob.glob(spec) if os.path.isfile(p)))
        if not files:
            raise InputError(f"{spec}: the glob matches no files")
        return FrameSource(spec, files, len(files), None)
    path = Path(spec)
    if path.is_dir():
        files = tuple(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        if not files:
            raise InputError(f"{spec}: no frames in the directory (looked for {', '.join(IMAGE_SUFFIXES)})")
        return FrameSource(spec, files, len(files), None)
    if not path.exists():
        raise InputError(f"{spec}: no such video, directory or glob")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return FrameSource(spec, (path,), 1, None)
    return _probe_video(spec)


def _probe_video(path: str) -> FrameSource:
    av = require("av", f"reading the video {path}")

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InputError(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            return FrameSource(path, None, int(stream.frames) or None, fps)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable video ({first_line(e)})") from None


def _read_image(path: Path) -> np.ndarray:
    with open_image(path, InputError) as im:
        return np.asarray(im.convert("RGB"))


def write_mask(path: Path, mask: np.ndarray, palette: np.ndarray) -> None:
    """Write class ids uint8 [H,W] as a palette PNG (pixel values are the class ids) via a temporary file."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write uint8 RGB [H,W,3] as PNG via a temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(rgb).save(tmp, format="PNG")
    os.replace(tmp, path)


class VideoWriter:
    """Encode uint8 RGB frames into `path` (H.264 when PyAV has it, else MPEG-4); renamed into place on close."""

    def __init__(self, path: str | os.PathLike, fps: float = DEFAULT_FPS):
        av = require("av", f"writing the video {path}")

        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.stem}.tmp{self.path.suffix}")  # keeps the container's suffix
        self.fps = fps
        self._container = av.open(str(self.tmp), "w")
        self._codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._stream = None

    def write(self, frame: np.ndarray) -> None:
        from fractions import Fraction

        import av

        height, width = frame.shape[:2]
        # yuv420p needs even sizes: repeat the last row/column where needed
        frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        if self._stream is None:
            self._stream = self._container.add_stream(self._codec, rate=Fraction(self.fps).limit_denominator(1001))
            self._stream.width, self._stream.height = frame.shape[1], frame.shape[0]
            self._stream.pix_fmt = "yuv420p"
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Close without publishing: the temporary file is removed."""
        self._container.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close() if exc_type is None else self.abort()


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = DEFAULT_FPS) -> None:
    """Encode uint8 RGB [H,W,3] frames into a video file (format from the suffix: .mp4, .avi, ...)."""
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)


def overlay(frame: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised mask over a frame: uint8 [H,W,3] both -> uint8 [H,W,3]."""
    return (frame.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round().astype(np.uint8)
