"""Named things other than models (dataset kinds, flow sources): one dict each, in the style of the model registry.

An entry is registered as the object itself or as "package.module:attr", imported on first use: listing and
validating names (the config does, for data.kind and flow.source) imports nothing heavy. Names keep their
registration order, the default first. Imports nothing from the project.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any


class Registry:
    """Entries of one kind by name: register, get, names; `check` is the config's validator of a name."""

    def __init__(self, what: str):
        self.what = what  # "dataset kind", "flow source": how errors name an entry
        self._entries: dict[str, Any] = {}

    def register(self, name: str, entry: Any) -> Any:
        """Add `entry` (an object, or "module:attr" imported on first get) as `name`; a duplicate name raises."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered ({self._entries[name]!r})")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget `name` (tests that register an entry of their own take it out again)."""
        del self._entries[name]

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check(self, name: str) -> str:
        """`name` if registered, else ValueError: one line with a did-you-mean and the known names."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(f"unknown {self.what} {name!r} ({hint}known: {', '.join(self.names())})")
        return name

    def get(self, name: str) -> Any:
        """The entry registered as `name` (imported now when registered by reference); unknown: ValueError."""
        entry = self._entries[self.check(name)]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry
