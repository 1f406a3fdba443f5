"""Config paths: `${ENV}` and `~` expanded, local paths made absolute, URIs passed through."""
from __future__ import annotations

import os
import re
from pathlib import Path

ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_path(value: str) -> str:
    """Expand `${ENV}` and `~`, and make a local path absolute (S3 and other URIs pass through)."""
    def env(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise ValueError(f"environment variable {m.group(1)} is not set")
        return os.environ[m.group(1)]

    value = ENV_RE.sub(env, value)
    if "://" in value and not value.startswith("file://"):
        return value
    value = value.removeprefix("file://")
    return str(Path(value).expanduser().resolve())
