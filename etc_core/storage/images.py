"""The one reader of an image file (dataset frames and labels, frames given to `etc-pipeline predict`): every
failure is one line naming the file, raised as the caller's error class."""
from __future__ import annotations

import os

from PIL import Image

from etc_core.errors import DatasetError, first_line


def open_image(path: str | os.PathLike, error: type[Exception] = DatasetError, *, decode: bool = True) -> Image.Image:
    """The PIL image at `path` with its pixels decoded (decode=False: the header only, e.g. for its size).

    Raises error("<path>: missing") when there is no file, error("<path>: unreadable image (<reason>)") when it is
    not a readable image.
    """
    im = None
    try:
        im = Image.open(path)
        if decode:
            im.load()
    except FileNotFoundError:
        raise error(f"{path}: missing") from None
    except OSError as e:
        if im is not None:
            im.close()
        raise error(f"{path}: unreadable image ({first_line(e)})") from None
    return im
