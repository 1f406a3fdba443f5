"""The base of the config sections, and the one implementation of what works on any of them: the stable hash,
the flattener to dotted keys, and the dotted-key setter.

Each section lives beside the code it configures (etc_core/data/config.py, etc_core/tracking/config.py, ...);
etc_core/config.py gathers them into EtcConfig and loads it. This module sits below all of them: it imports
pydantic and etc_core.errors only.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from etc_core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """A config section: unknown keys refused, values frozen, defaults validated too."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def digest(payload: Any, length: int, default: Callable[[Any], Any] | None = None) -> str:
    """The hash of config data, used for every cache key and dataset digest: the first `length` hex characters
    of the SHA-256 of its JSON with sorted keys (json.dumps' `default` for values JSON has no type for)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=default).encode()).hexdigest()[:length]


def config_hash(*sections: BaseModel) -> str:
    """A short stable hash of config sections (12 hex chars), for caching stage outputs and naming runs.

    A section's HASH_OMIT_AT_DEFAULT fields count only when they differ from their default, so a field added
    later leaves the hashes of existing configs (and the stages cached under them) as they were; its HASH_OMIT
    fields never count (how something is stored, not what it is)."""
    return digest([type(s).__name__ for s in sections] + [hash_dump(s) for s in sections], 12)


def hash_dump(section: BaseModel) -> dict:
    """section.model_dump without its HASH_OMIT fields, nor its HASH_OMIT_AT_DEFAULT ones while they hold their
    defaults, at every depth (a section's own models, such as a stage's `loss`, alike): a key added later, left unset,
    leaves the hashes (and so the cached stages) of existing configs as they were."""
    dump = section.model_dump(mode="json")
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            dump[name] = hash_dump(value)
    for name in getattr(section, "HASH_OMIT_AT_DEFAULT", ()):
        if getattr(section, name) == type(section).model_fields[name].get_default(call_default_factory=True):
            dump.pop(name, None)
    for name in getattr(section, "HASH_OMIT", ()):
        dump.pop(name, None)
    return dump


def flatten(cfg: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """A config (or a tree of dicts, such as a dumped one) as {"section.key": value} (MLflow params, diffs)."""
    out: dict[str, Any] = {}
    for key, value in (cfg.model_dump() if isinstance(cfg, BaseModel) else cfg).items():
        _flatten_into(out, f"{prefix}{key}", value)
    return out


def _flatten_into(out: dict, key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten_into(out, f"{key}.{k}", v)
    else:
        out[key] = value


def first_difference(old: dict, new: dict) -> tuple[str, Any, Any]:
    """(dotted key, old value, new value) of the first key, in sorted order, where two config trees differ."""
    old, new = flatten(old), flatten(new)
    key = next((k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)), "?")
    return key, old.get(key), new.get(key)


def set_dotted(tree: dict, dotted: str, value: Any, where: str, create: bool = True) -> None:
    """tree[a][b][c] = value for dotted `a.b.c`; ConfigError starting with `where` when a step is not a section.

    create=True makes missing sections (a YAML tree being overridden); create=False wants every key to be there
    already (a dumped config) and names an unknown one with its closest match."""
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {}) if create else node.get(key)
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(keys[: i + 1])} is not a config section")
        node = child
    if not create and keys[-1] not in node:
        close = difflib.get_close_matches(keys[-1], list(node), n=1)
        raise ConfigError(f"{where}: unknown key" + (f" (did you mean {close[0]}?)" if close else ""))
    node[keys[-1]] = value


def with_values(base: M, values: dict[str, Any]) -> M:
    """A copy of `base` with each dotted key (`student.loss.tc_weight`) set to its value, validated; ConfigError
    names the key. The one way to edit a loaded config (etc_core.sweep.space.apply_values is this function)."""
    tree = base.model_dump(mode="json")
    for dotted, value in values.items():
        set_dotted(tree, dotted, value, dotted, create=False)
    try:
        return type(base).model_validate(tree)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}, got {err.get('input')!r}") from None
