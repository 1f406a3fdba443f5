"""Local temporary files named after the process that owns them, so that a later process can remove those a killed
one left (a SIGKILL runs no cleanup): `<tempdir>/<prefix><pid>-<random><suffix>`."""
from __future__ import annotations

import glob
import os
import tempfile
import uuid


def owned_temp(prefix: str, suffix: str = "") -> str:
    """A fresh path in the temp dir naming this process; stale ones of dead processes are removed first."""
    remove_stale(prefix, suffix)
    return os.path.join(tempfile.gettempdir(), f"{prefix}{os.getpid()}-{uuid.uuid4().hex}{suffix}")


def remove_stale(prefix: str, suffix: str = "") -> list[str]:
    """Remove `<prefix><pid>-*<suffix>` files in the temp dir whose process is gone; returns their paths."""
    removed = []
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{glob.escape(prefix)}*{glob.escape(suffix)}")):
        pid = os.path.basename(path)[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
