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


def check_pretrained(cfg, stages: tuple[str, ...]) -> None:
    """Before Ray starts and before any store is touched: the backbone weights that `stages` start from
    (teacher.pretrained, student.pretrained) can be had (ImageNet: in the torch hub cache or reachable) and fit
    their networks, by building each network once here. PretrainedWeightsError (exit 2) names the URL or file."""
    from etc_core.models import create_model

    sections = {"teacher": cfg.teacher, "student": cfg.student, "baseline": cfg.student}
    for spec in {id(sections[s]): sections[s] for s in stages}.values():
        if spec.pretrained != "none":
            create_model(spec.arch, num_classes=1, pretrained=spec.pretrained, s3=cfg.s3.access)


def check_shared_tracking(cfg) -> None:
    """Once Ray is up, before any work: a Ray cluster of several nodes needs an MLflow store that every node reaches
    (a server); a sqlite: or file store is node-local, so each node would log to its own. ConfigError (exit 2)."""
    import ray

    uri = cfg.mlflow.tracking_uri
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if nodes > 1 and (uri.startswith(("sqlite:", "file:")) or "://" not in uri):
        from etc_core.errors import ConfigError
        from etc_core.tracking.mlflow import redact

        raise ConfigError(f"mlflow.tracking_uri {redact(uri)}: a node-local store, but Ray spans {nodes} nodes; run "
                          f"an MLflow server (infra/mlflow_server.sh) and set mlflow.tracking_uri=http://HOST:5000")


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
    tracking.setup(cfg.mlflow)
