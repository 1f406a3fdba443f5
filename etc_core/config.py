"""Typed configuration: pydantic models, loaded from one YAML file plus dotted `section.key=value` overrides.

Defaults live in the model classes only; `configs/*.yaml` state what a scenario changes. Every entry point
calls `parse_args`, which turns any config problem into one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from etc_core.errors import ConfigError

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_path(value: str) -> str:
    """Expand `${ENV}` and `~`, and make a local path absolute (S3 and other URIs pass through)."""
    def env(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise ValueError(f"environment variable {m.group(1)} is not set")
        return os.environ[m.group(1)]

    value = _ENV_RE.sub(env, value)
    if "://" in value and not value.startswith("file://"):
        return value
    value = value.removeprefix("file://")
    return str(Path(value).expanduser().resolve())


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """The video dataset. `synthetic` is generated on the fly (see etc_core/data/synthetic.py)."""

    kind: Literal["synthetic"] = "synthetic"
    root: str = "runs/demo/data"
    seed: int = 0
    num_videos: int = Field(10, ge=2)  # clips in all; val_fraction of them (at least 1) form the val split
    val_fraction: float = Field(0.2, gt=0, lt=1)
    num_frames: int = Field(12, ge=2)
    height: int = Field(96, ge=16)
    width: int = Field(160, ge=16)
    num_classes: int = Field(6, ge=2, le=32)
    label_every: int = Field(1, ge=1)  # keep only every n-th frame's label (Cityscapes keeps 1 in 30)
    label_offset: int = Field(0, ge=0)  # index of the first labelled frame inside a clip
    noise: float = Field(0.02, ge=0, le=1)  # per-frame lighting/sensor noise that makes per-frame models flicker

    @property
    def split_sizes(self) -> dict[str, int]:
        """Clips per split: {"train": n, "val": m}, both at least 1."""
        val = min(max(1, round(self.num_videos * self.val_fraction)), self.num_videos - 1)
        return {"train": self.num_videos - val, "val": val}

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, value: str) -> str:
        return _expand_path(value)


class RayConfig(_Section):
    """How to reach Ray: `address=None` joins RAY_ADDRESS when set (ray job submit), else starts a local one."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)


class MlflowConfig(_Section):
    """Where runs, pictures and models go. tracking_uri: None = $MLFLOW_TRACKING_URI, else SQLite under runs/."""

    tracking_uri: str | None = Field(None, validate_default=True)
    experiment: str = "etc-pipeline"
    artifact_root: str = "runs/mlartifacts"  # artifact location of an experiment created on a local store

    @field_validator("tracking_uri")
    @classmethod
    def _resolve_uri(cls, value: str | None) -> str:
        value = value or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///runs/mlflow.db"
        if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
            return "sqlite:///" + _expand_path(value[len("sqlite:///"):])  # four slashes: absolute
        return _ENV_RE.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value)

    @field_validator("artifact_root")
    @classmethod
    def _absolute_artifacts(cls, value: str) -> str:
        return _expand_path(value)


class EtcConfig(_Section):
    """The whole configuration; each stage reads its own section."""

    data: DataConfig = Field(default_factory=DataConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)


def _set_dotted(tree: dict, dotted: str, value: Any, item: str) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item}: {'.'.join(keys[: i + 1])} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _describe(err: dict, model: type[BaseModel]) -> tuple[str, str]:
    """Return (dotted key, one-line reason) for the first pydantic error."""
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        section: type[BaseModel] | None = model
        for part in loc[:-1]:
            field = section.model_fields.get(part) if section else None
            section = field.annotation if field and isinstance(field.annotation, type) else None
        known = sorted(section.model_fields) if section else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})" if known else ""
        return key, f"unknown key{hint}"
    msg = err["msg"]
    if "input" in err and not isinstance(err["input"], dict):
        msg += f", got {err['input']!r}"
    return key, msg


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> EtcConfig:
    """Load `path` (YAML; None = all defaults) and apply `section.key=value` overrides; raise ConfigError."""
    tree: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{source}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
    from_override: dict[str, str] = {}
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted or any(not k for k in dotted.split(".")):
            raise ConfigError(f"override {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, dotted, value, item)
        from_override[dotted] = item
    try:
        return EtcConfig.model_validate(tree)
    except ValidationError as e:
        key, reason = _describe(e.errors()[0], EtcConfig)
        where = f"override {from_override[key]}" if key in from_override else source
        raise ConfigError(f"{where}: {key}: {reason}") from None


def flatten(cfg: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten a config to {"section.key": value} (for MLflow params and hashing)."""
    out: dict[str, Any] = {}
    for key, value in cfg.model_dump().items():
        _flatten_into(out, f"{prefix}{key}", value)
    return out


def _flatten_into(out: dict, key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten_into(out, f"{key}.{k}", v)
    else:
        out[key] = value


def parse_args(description: str, argv: list[str] | None = None,
               add_arguments=None) -> tuple[EtcConfig, argparse.Namespace]:
    """Parse `--config PATH [section.key=value ...]`; on a config error print one line and exit 2."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return cfg, args
