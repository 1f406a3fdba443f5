"""What every benchmark shares: the machine description, the bench config, result files, Ray and timing."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIG = REPO / "configs" / "reproduce.yaml"
# Everything a benchmark writes besides its result file. ETC_BENCH_ROOT points another checkout at the same runs
# (the paths are part of every stage's cache key, so trained models are reused only under the same root).
ROOT = Path(os.environ.get("ETC_BENCH_ROOT", REPO / "runs" / "bench"))

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def machine() -> dict:
    """CPU model, cores, memory, GPU (if any) and the versions that matter for the figures."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        info = dict(line.split(":", 1) for line in open("/proc/cpuinfo").read().split("\n\n")[0].splitlines()
                    if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        # the model name alone ("AMD EPYC") does not tell two generations apart, and their speeds differ
        cpu = f"{info['model name']} (family {info['cpu family']}, model {info['model']})"
    except (OSError, KeyError):
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    versions = {}
    for name in ("torch", "torchvision", "ray", "mlflow", "webdataset", "ptlflow", "timm"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "os": platform.platform(), "versions": versions,
            "torch_threads": torch.get_num_threads(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def save(name: str, result: dict, started: float) -> Path:
    """Write benchmarks/results/<name>.json with the machine, the date and the run's wall time."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"name": name, "date": time.strftime("%Y-%m-%d %H:%M"), "wall_s": round(time.time() - started, 1),
               "machine": machine(), **result}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float))
    tmp.replace(path)
    print(f"wrote {path.relative_to(REPO)} ({payload['wall_s']} s)", flush=True)
    return path


QUICK = ["train.max_steps=4", "train.steps_per_epoch=2", "data.num_videos=4", "data.height=32", "data.width=48",
         "train.crop=[32, 48]", "train.batch_size=2"]


def bench_root(config: str | os.PathLike = CONFIG) -> Path:
    """Where a bench config's runs go: runs/bench/ for configs/reproduce.yaml, runs/bench/<name>/ for another."""
    name = Path(config).stem
    return ROOT if name == CONFIG.stem else ROOT / name


def suffix(config: str | os.PathLike = CONFIG) -> str:
    """What a result file's name adds for a bench config other than configs/reproduce.yaml: `_motion` for
    configs/reproduce_motion.yaml."""
    name = Path(config).stem
    return "" if name == CONFIG.stem else "_" + name.removeprefix(CONFIG.stem + "_")


def bench_config(*overrides: str, quick: bool = False, config: str | os.PathLike = CONFIG):
    """A bench config (configs/reproduce.yaml unless named) with the bench's own data, shards, MLflow store and Ray
    storage under bench_root(config) (its quick/ folder and tiny sizes for --quick)."""
    from etc_core.config import load_config

    root = bench_root(config) / "quick" if quick else bench_root(config)
    paths = [f"data.root={root}/data", f"shards.uri={root}/shards", f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db",
             f"mlflow.artifact_root={root}/mlartifacts", f"train.storage_path={root}/ray_results"]
    return load_config(str(config), [*paths, *(QUICK if quick else []), *overrides])


def start_ray(cfg) -> None:
    from etc_core.ray_utils import init_ray

    init_ray(cfg.ray)


def ensure_shards(cfg) -> dict:
    """The bench dataset and its ground-truth-flow shards (made once, reused after); returns the manifest."""
    from etc_core.data.registry import open_dataset
    from etc_core.flow.stage import run_flow_stage

    return run_flow_stage(cfg, open_dataset(cfg.data, generate=True), progress=False).manifest


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of fn."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def spread(values: list[float]) -> dict:
    """mean, sample standard deviation, min, max and n of a list of numbers."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def parser(description: str, config: bool = False) -> argparse.ArgumentParser:
    """The arguments every benchmark takes; config=True: also --config, the bench config it runs on."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes: check the script runs (numbers meaningless)")
    if config:
        p.add_argument("--config", default=str(CONFIG.relative_to(REPO)), help="the bench config (default: %(default)s; "
                       "another one runs under runs/bench/<its name>/ and names its results with its suffix)")
    return p


def train_or_reuse(cfg, stage: str):
    """(registered model of this exact config, training seconds): trained now unless a previous run registered it
    (then 0 s). The stage's driver, the same as the pipelines': etc_core/stages.py, train_stage."""
    from etc_core.stages import train_stage

    trained = train_stage(cfg, stage)
    return trained.registered, trained.seconds


def score(cfg, registered, split: str = "test") -> list[dict]:
    """The evaluation rows (the model's, then the reference rows) of a registered model on a split of cfg's shards."""
    import torch

    from etc_core.infer.evaluate import evaluate_models
    from etc_core.tracking.registry import load_model

    model, meta = load_model(registered.model_uri)
    rows = evaluate_models([(registered.name, model, meta)], shards=cfg.shards.uri, split=split, s3=cfg.s3.access,
                           device=torch.device("cpu"), batch_size=cfg.pipeline.eval_batch_size)["rows"]
    rows[0]["model_uri"] = registered.model_uri
    return rows


def _training_run(cfg, registered):
    """(MLflow client, id of the run that trained `registered`, or None)."""
    import mlflow

    from etc_core.tracking import mlflow as tracking

    tracking.setup(cfg.mlflow, cfg.s3.access)
    client = mlflow.MlflowClient()
    return client, client.get_model_version(registered.name, registered.version).tags.get("etc.run_id")


def val_curve(cfg, registered) -> list[tuple[int, float]]:
    """(step, val mIoU) of every validation of the run that trained `registered` (from MLflow)."""
    client, run_id = _training_run(cfg, registered)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val/miou")) if run_id else []


def training_seconds(cfg, registered) -> float:
    """Wall seconds of the MLflow run that trained `registered` (for a model reused from the store), 0 if unknown."""
    client, run_id = _training_run(cfg, registered)
    info = client.get_run(run_id).info if run_id else None
    return (info.end_time - info.start_time) / 1000 if info and info.end_time else 0.0


# The fields of a stage's key that name places, not content: the bench root, the checkout, the stores' URIs.
PLACES = {"data": ("root",), "shards": ("uri",), "train": ("storage_path",)}


def bench_key(cfg, stage: str, refs: dict | None = None) -> str:
    """A trained model's key in the ledger: what its stage's cache key covers (etc_core/train/run.py, stage_hash:
    data, shards, training and the stage's section) and the flow source, without the places (PLACES), and with the
    models it starts from or distils from (`init_from`, `teacher_uri`: registry URIs, which depend on the store)
    replaced by their own keys in `refs`. Equal keys in two checkouts or sessions: the same training."""
    from etc_core.section import digest, hash_dump
    from etc_core.train.config import stage_config, stage_spec

    cfg = stage_config(cfg, stage)
    parts = {name: hash_dump(getattr(cfg, name)) for name in ("data", "shards", "train", "flow")}
    for name, fields in PLACES.items():
        for field in fields:
            parts[name].pop(field, None)
    spec = hash_dump(stage_spec(cfg, stage))
    for field in ("init_from", "teacher_uri"):
        spec.pop(field, None)
    return digest([stage, parts, spec, refs or {}], 12)


def commit() -> str:
    """The checkout's commit (with `+dirty` when the working tree differs from it), or `unknown`."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", "etc_core", "benchmarks", "configs", ":!benchmarks/results")
        return git("rev-parse", "--short=12", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Ledger:
    """Scored rows kept across runs and sessions in a committed JSON file (benchmarks/results/<name>.json), one per
    bench_key: a long benchmark killed or stopped keeps what it finished, and a rerun trains only what has no row.
    Each row records the commit, date and CPU it was measured at; a row measured again under the same key is compared
    (CPU training is deterministic on one CPU model, not across models: a difference is reported, and the first
    measurement kept beside it). Rows set aside on purpose (supersede) stay in the file, with the reason."""

    def __init__(self, name: str):
        self.path = RESULTS / f"{name}.json"
        kept = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.rows: dict[str, dict] = kept.get("rows", {})
        self.superseded: list[dict] = kept.get("superseded", [])
        self.commit = commit()  # the code this run loaded (later commits to the checkout do not change it)
        self.cpu = machine()["cpu"]

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put(self, key: str, row: dict, compare: tuple[str, ...] = ()) -> dict:
        """Keep `row` under `key` (written at once, atomically); an existing row stays, with the differences of
        `compare` fields noted in its `remeasured` list."""
        old = self.rows.get(key)
        if old is not None:
            diff = {k: row[k] - old[k] for k in compare if k in row and k in old}
            if any(abs(v) > 1e-6 for v in diff.values()):
                print(f"ledger {key}: measured again with different results: {diff}", flush=True)
            old.setdefault("remeasured", []).append({"commit": self.commit, "date": time.strftime("%Y-%m-%d %H:%M"),
                                                     "diff": diff})
        else:
            self.rows[key] = {**row, "commit": self.commit, "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": self.cpu}
        self._write()
        return self.rows[key]

    def supersede(self, keys: list[str], reason: str) -> None:
        """Set the rows of `keys` aside (kept in the file's `superseded` list with `reason`): a rerun trains them
        again and puts new rows in their place."""
        date = time.strftime("%Y-%m-%d %H:%M")
        self.superseded += [{"key": k, "reason": reason, "date": date, "row": self.rows.pop(k)}
                            for k in keys if k in self.rows]
        self._write()

    def _write(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"rows": self.rows, **({"superseded": self.superseded} if self.superseded else {})},
                                  indent=1, default=float))
        tmp.replace(self.path)


def begin(p: argparse.ArgumentParser):
    """Parse a benchmark's arguments (which end with dotted overrides), then make its config, start Ray and
    ensure the shards: returns (args, config, shards manifest, start time)."""
    import logging

    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    base = bench_config(*args.overrides, quick=args.quick, config=REPO / getattr(args, "config", CONFIG))
    if getattr(args, "from_ledger", False):  # only reads results: no Ray, no shards
        return args, base, None, started
    start_ray(base)
    return args, base, ensure_shards(base), started
