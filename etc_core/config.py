"""Typed configuration: pydantic models, loaded from one YAML file plus dotted `section.key=value` overrides.

Defaults live in the model classes only; `configs/*.yaml` state what a scenario changes. Every entry point
calls `parse_args`, which turns any config problem into one line on stderr and exit code 2.

Each section is defined beside the code it configures (docs/config.md names the module of each); this module only
gathers them into EtcConfig and loads it, so it sits at the top of the library: nothing in etc_core below the
stage drivers imports it (tests/unit/test_layers.py). The stable hash, the flattener and the dotted-key setter
are in etc_core/section.py.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from etc_core.data.config import DataConfig
from etc_core.errors import ConfigError
from etc_core.flow.config import FlowConfig, ShardsConfig
from etc_core.losses.etc import LossConfig, StudentLossConfig
from etc_core.pipeline_config import PipelineConfig
from etc_core.ray_utils import RayConfig
from etc_core.section import (Section, config_hash, flatten, hash_dump as _hash_dump,  # noqa: F401 (re-exported)
                              set_dotted, with_values)
from etc_core.storage.config import S3Config
from etc_core.storage.paths import is_relative
from etc_core.sweep.config import ParamSpace, SweepConfig, _default_space  # noqa: F401
from etc_core.tracking.config import DEFAULT_TRACKING_URI, MlflowConfig, RegistryConfig, node_local_store
from etc_core.train.config import StageTrain, StudentConfig, TeacherConfig, TrainConfig

# Each section is defined beside the code it configures; these names are re-exported for callers outside the library
# (tests, benchmarks, pipelines). Inside etc_core, a module imports its section from the section's own module.
__all__ = ["ConfigError", "DEFAULT_TRACKING_URI", "DataConfig", "EtcConfig", "FlowConfig", "LossConfig", "MlflowConfig",
           "ParamSpace", "PipelineConfig", "RayConfig", "RegistryConfig", "S3Config", "ShardsConfig", "StageTrain",
           "StudentConfig", "StudentLossConfig", "SweepConfig", "TeacherConfig", "TrainConfig", "apply_values",
           "config_hash", "flatten", "load_config", "node_local_store", "parse_args"]

apply_values = with_values  # `cfg` with dotted keys set: the one config editor (etc_core/section.py)


class EtcConfig(Section):
    """The whole configuration; each stage reads its own section."""

    data: DataConfig = Field(default_factory=DataConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    s3: S3Config = Field(default_factory=S3Config)
    train: TrainConfig = Field(default_factory=TrainConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    # (key, value as written) of the paths given relative: resolved against where the command started, they
    # name another folder on another node (etc_core/cluster_check.py). Not a field: not hashed, not dumped.
    _relative: tuple[tuple[str, str], ...] = PrivateAttr(default=())


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
    """Load `path` (YAML; None = all defaults) and apply `section.key=value` overrides; raise ConfigError naming the
    override at fault, or the file and the line."""
    tree: dict = {}
    source, text = "<defaults>", None
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        text = p.read_text()
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{source}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
    applied: list[tuple[str, str, object]] = []  # (dotted key, the override as given, its value)
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted or any(not k for k in dotted.split(".")):
            raise ConfigError(f"override {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(tree, dotted, value, f"override {item}")
        applied.append((dotted, item, value))
    try:
        cfg = EtcConfig.model_validate(tree)
    except ValidationError as e:
        key, reason = _describe(e.errors()[0], EtcConfig)
        raise ConfigError(f"{_blame(key, source, text, applied)}: {key}: {reason}") from None
    cfg._relative = _relative_paths(tree)
    return cfg


def _blame(key: str, source: str, text: str | None, applied: list[tuple[str, str, object]]) -> str:
    """Where the error at dotted `key` comes from: `override ...` when an override set that key or brought the error
    in (`dta.height=72` makes a section `dta`; `student.train.max_stps=1` a bad key under student.train), else
    `<file>: line N` of the key in the file."""
    for dotted, item, _ in reversed(applied):
        if dotted == key:
            return f"override {item}"
    if applied:  # the error path only: validate the file alone, then with each override in turn
        tree = (yaml.safe_load(text) or {}) if text else {}
        if not _fails_at(tree, key):
            for dotted, item, value in applied:
                set_dotted(tree, dotted, value, f"override {item}")
                if _fails_at(tree, key):
                    return f"override {item}"
    line = _line_of(text, key)
    return f"{source}: line {line}" if line else source


def _fails_at(tree: dict, key: str) -> bool:
    try:
        EtcConfig.model_validate(tree)
    except ValidationError as e:
        return any(".".join(str(p) for p in err["loc"]) == key for err in e.errors())
    return False


def _line_of(text: str | None, key: str) -> int | None:
    """The line (1-based) where the YAML text writes the deepest part of dotted `key` it has; None if not even the
    first."""
    node, line = (yaml.compose(text) if text else None), None
    for part in key.split("."):
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and str(k.value) == part),
                         None)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line


PATH_KEYS = ("data.root", "shards.uri", "train.storage_path", "mlflow.artifact_root")


def _relative_paths(tree: dict) -> tuple[tuple[str, str], ...]:
    """(key, value as written) of every local path in the config tree (or its default) that is relative."""
    uri = (tree.get("mlflow") or {}).get("tracking_uri") if isinstance(tree.get("mlflow"), dict) else None
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    server = not node_local_store(uri)  # artifacts go where the server keeps them
    found = []
    for key in PATH_KEYS:
        if server and key == "mlflow.artifact_root":
            continue
        section, name = key.split(".")
        given = tree.get(section) if isinstance(tree.get(section), dict) else {}
        default = EtcConfig.model_fields[section].annotation.model_fields[name].default
        found.append((key, str(given.get(name, default))))
    for stage in ("teacher", "student"):
        given = (tree.get(stage) or {}).get("train") if isinstance(tree.get(stage), dict) else None
        if isinstance(given, dict) and "storage_path" in given:
            found.append((f"{stage}.train.storage_path", str(given["storage_path"])))
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        found.append(("mlflow.tracking_uri", uri))
    return tuple((key, value) for key, value in found if key == "mlflow.tracking_uri" or is_relative(value))


class _OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (`ConfigError: ...`) instead of the usage block and the error."""

    def error(self, message: str):
        print(f"ConfigError: {self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def parse_args(description: str, argv: list[str] | None = None, add_arguments=None,
               prog: str | None = None) -> tuple[EtcConfig, argparse.Namespace]:
    """Parse `--config PATH [section.key=value ...]`; on a config or argument error print one line and exit 2.
    prog: the command as usage lines show it (default: the script's name)."""
    parser = _OneLineParser(prog=prog, description=description)
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
