"""What every entry point shares: logging set-up and turning project errors into one line and an exit code."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from etc_core.errors import EtcError


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines as `HH:MM:SS name: message` on stderr (entry points only; modules just get a logger), without
    other libraries' chatter (etc_core.quiet)."""
    from etc_core.quiet import quiet_libraries

    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    quiet_libraries()


def _ray_up() -> bool:
    ray = sys.modules.get("ray")  # never imports Ray itself
    return ray is not None and ray.is_initialized()


def run_entry(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run main(argv); an EtcError becomes `<Class>: <message>` on stderr and its exit code (2 for config)."""
    setup_logging()
    ray_was_up = _ray_up()
    try:
        code = main(argv)
    except EtcError as e:
        if not ray_was_up and _ray_up():  # Ray that main started flushes its workers' logs when it stops: do
            sys.modules["ray"].shutdown()  # that before our line, so that the line stays the last one
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    raise SystemExit(code or 0)


def check_stores(cfg, need_shards: bool = False) -> None:
    """Before Ray starts: the shard store answers and takes the credentials (and, with need_shards, holds a
    manifest), and the MLflow store is usable. An unreachable endpoint or a refused key then costs seconds, starts
    no Ray and leaves no half-made MLflow run; each raises its one-line EtcError (StorageError, ShardError,
    TrackingError)."""
    from etc_core.data import shards
    from etc_core.errors import ShardError
    from etc_core.tracking import mlflow as tracking

    uri, endpoint, region = cfg.shards.uri, cfg.s3.endpoint_url, cfg.s3.region
    if shards.read_manifest(uri, endpoint, region) is None and need_shards:
        raise ShardError(f"{uri}/manifest.json: not found (run pipelines/precompute_flow.py first)")
    tracking.setup(cfg.mlflow, cfg.s3.access)
