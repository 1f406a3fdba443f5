"""Keep the console to our own lines: other libraries' chatter goes to debug level or is silenced at its source.

`quiet_libraries()` runs in every entry point (etc_core.entry.setup_logging) and, through Ray's
`worker_process_setup_hook` (`quiet_worker`), in every worker of this project's Ray jobs (etc_core.ray_utils). What it
quiets, and why each is noise rather than news:

- timm's FutureWarning "Importing from timm.models.layers is deprecated" (ptlflow's imports, not ours);
- ptlflow's "xFormers not available" (logger `dinov2`, four times) and "[!!alt_cuda_corr is not compiled!!]"
  (a print at import): both say a CUDA extension is absent, which only changes speed;
- Ray Train's "Reporting training result ... TrainingReport(...)" per report (a logger named by its file's path)
  and its INFO lines on worker groups and checkpoints (`ray.train`, see etc_core.train.run: LoggingConfig);
- MLflow's INFO lines on creating tables and starting system metrics, and its progress bar per artifact
  download (MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR, unless set);
- urllib3's "Retrying (Retry(total=2, ...)) after connection broken" per retry of an MLflow request: the bounded
  retries' last failure is one line naming the tracking URI and the retries (etc_core.tracking.mlflow).
They stay available: set ETC_VERBOSE=1 to see everything.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import io
import logging
import os
import sys
import warnings

QUIET_LOGGERS = {"dinov2": logging.ERROR, "mlflow.store.db.utils": logging.WARNING,
                 "mlflow.system_metrics": logging.WARNING, "mlflow.pyfunc": logging.WARNING,
                 "urllib3.connectionpool": logging.ERROR}
RAY_TRAIN_REPORT_MODULE = "ray.train.v2._internal.execution.context"  # logs with getLogger(__file__)
PRINTING_IMPORTS = ("ptlflow",)  # packages that print at import time


def quiet_libraries() -> None:
    """Apply the filters above in this process (idempotent); a no-op when ETC_VERBOSE=1."""
    if os.environ.get("ETC_VERBOSE") == "1":
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per model download
    warnings.filterwarnings("ignore", message=r"Importing from timm\.models\.layers is deprecated",
                            category=FutureWarning)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    spec = importlib.util.find_spec(RAY_TRAIN_REPORT_MODULE.split(".")[0])
    if spec is not None and spec.origin:  # the report logger's name is the module's file path
        path = os.path.join(os.path.dirname(spec.origin), *RAY_TRAIN_REPORT_MODULE.split(".")[1:]) + ".py"
        logging.getLogger(path).setLevel(logging.WARNING)
    if not any(isinstance(f, _SilentImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _SilentImport())


def quiet_worker() -> None:
    """Ray's worker_process_setup_hook: quiet_libraries(), and the worker's own Ray named in RAY_ADDRESS.

    With several Rays on one machine (tests, a second pipeline), Ray Train's PlacementGroupCleaner asks the state
    API for "the" local Ray, cannot choose, and prints a traceback per training run (its clean-up then stops).
    """
    quiet_libraries()
    import ray

    if ray.is_initialized():  # the hook runs once the worker is connected
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


class _SilentImport(importlib.abc.MetaPathFinder):
    """Runs the first import of a PRINTING_IMPORTS package with stdout captured (then sent to debug level)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in PRINTING_IMPORTS:
            return None
        sys.meta_path.remove(self)  # find the real spec, once: later imports are plain
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _SilentLoader(spec.loader)
        return spec


class _SilentLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            self.loader.exec_module(module)
        for line in captured.getvalue().splitlines():
            logging.getLogger(module.__name__).debug("at import: %s", line)
