"""PNG bytes -> numpy through OpenCV, for the shards' members (frames, labels, flow): it reads 16-bit colour PNGs,
which PIL cuts to 8 bits, and decodes the 8-bit ones faster than PIL here (docs/benchmarks.md, "Flow encoding in
the shards"). cv2 (OpenCV) comes with ptlflow."""
from __future__ import annotations

import struct

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 2**27  # a header claiming more is refused before decoding (a decompression bomb): 64x a Cityscapes frame


def decode_png(data: bytes, mode: str) -> np.ndarray:
    """mode "RGB" -> uint8 [H,W,3] RGB, "L" -> uint8 [H,W] grey, "unchanged" -> as stored (a 16-bit colour PNG: uint16
    [H,W,3] in BGR order, OpenCV's). ValueError when data is not a PNG, is corrupt or claims more than MAX_PIXELS."""
    import cv2

    if len(data) < 24 or data[:8] != _SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    if width * height > MAX_PIXELS:
        raise ValueError(f"PNG of {width}x{height} px, over the {MAX_PIXELS} px this reader decodes")
    flags = {"RGB": cv2.IMREAD_COLOR, "L": cv2.IMREAD_GRAYSCALE, "unchanged": cv2.IMREAD_UNCHANGED}[mode]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError("corrupt or truncated PNG (OpenCV could not decode it)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if mode == "RGB" else image
