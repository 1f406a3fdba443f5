"""Optional dependencies: the packages of pyproject's extras, imported where a feature needs them.

`infer` (av, onnxscript, onnxruntime): reading and writing video files, ONNX export and its parity check.
`sweep` (optuna): the sweep's default search (sweep.search=optuna). `make install` installs both; a core install
(`pip install etc-pipeline`) gets a one-line ConfigError naming the extra instead of an ImportError deep inside.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from etc_core.errors import ConfigError

EXTRAS = {"av": "infer", "onnxscript": "infer", "onnxruntime": "infer", "optuna": "sweep"}


def require(module: str, what: str) -> ModuleType:
    """Import `module` (one of EXTRAS) for `what` (the feature, named as the user asked for it)."""
    extra = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs {module}, from the [{extra}] extra: pip install "
                          f"'etc-pipeline[{extra}]' (make install has it)") from None
