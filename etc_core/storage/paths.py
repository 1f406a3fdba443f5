"""Config paths: `${ENV}` and `~` expanded, local paths made absolute, URIs passed through.

A relative path resolves against the directory the command was started from: the working directory, or
$ETC_BASE_DIR when set (infra/submit.sh sets it to the directory it was run from, since under `ray job submit` the
entry point runs inside Ray's unpacked copy of the checkout, where anything written vanishes with the job).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

BASE_ENV = "ETC_BASE_DIR"
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
    return str((Path(base_dir()) / Path(value).expanduser()).resolve())


def base_dir() -> str:
    """The directory relative config paths resolve against: $ETC_BASE_DIR, else the working directory."""
    return os.environ.get(BASE_ENV) or os.getcwd()


def is_relative(value: str) -> bool:
    """True for a local path that is not absolute once `${ENV}` and `~` are expanded (its meaning depends on where
    the command runs)."""
    value = ENV_RE.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value)
    if "://" in value and not value.startswith("file://"):
        return False
    return not Path(value.removeprefix("file://")).expanduser().is_absolute()
