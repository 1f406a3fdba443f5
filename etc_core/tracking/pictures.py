"""Pictures people would rather see than read: label colours, flow colours, side-by-side grids (uint8 RGB)."""
from __future__ import annotations

import numpy as np

from etc_core.data.base import IGNORE_INDEX

_BASE = np.array([[128, 64, 128], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                  [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60],
                  [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200],
                  [128, 0, 0], [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128]], np.uint8)


def palette(num_classes: int) -> np.ndarray:
    """[256,3] uint8 colours: distinct ones for the classes, black for ignore (255)."""
    pal = np.zeros((256, 3), np.uint8)
    rng = np.random.default_rng(0)
    for c in range(min(num_classes, 255)):
        pal[c] = _BASE[c] if c < len(_BASE) else rng.integers(0, 256, 3)
    pal[IGNORE_INDEX] = 0
    return pal


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class ids [H,W] -> uint8 [H,W,3]."""
    return palette(num_classes)[np.asarray(labels, np.uint8)]


def grid(rows: list[list[np.ndarray]], pad: int = 2, titles: list[str] | None = None) -> np.ndarray:
    """Tile equally sized uint8 [H,W,3] tiles row by row with white gaps; `titles` name the columns in a strip on top.

    A title wider than its column wraps at spaces; the strip is as tall as the longest title needs.
    """
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) - pad, cols * (w + pad) - pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            out[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = tile
    if titles:
        out = np.concatenate([_title_strip(titles[:cols], w, pad, out.shape[1]), out])
    return out


def _title_strip(titles: list[str], col_width: int, pad: int, width: int) -> np.ndarray:
    """uint8 [h,width,3]: each title in black on white, centred over its column, wrapped to the column width."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    line_h = int(font.getbbox("Ag")[3]) + 2
    wrapped = [_wrap(title, font, col_width) for title in titles]
    height = line_h * max(len(lines) for lines in wrapped) + pad + 2
    strip = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(strip)
    for j, lines in enumerate(wrapped):
        for k, line in enumerate(lines):
            x = j * (col_width + pad) + max((col_width - font.getlength(line)) / 2, 0)
            draw.text((x, 1 + k * line_h), line, fill="black", font=font)
    return np.asarray(strip)


def _wrap(title: str, font, width: int) -> list[str]:
    """Split title at spaces into lines no wider than width (a single longer word keeps its own line)."""
    lines: list[str] = []
    for word in title.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]
