"""Small real inputs for the reliability tests: a hand-written shard set, a checkpoint, a closed port, and readers
of what a failed run left behind (stderr's last line, files, MLflow runs and registered models)."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import REPO

H, W, CLASSES = 32, 48, 3
ETC = [sys.executable, "-m", "etc_core.cli"]  # the `etc-pipeline` console script, with this interpreter


def write_shard_set(root: str, *, train: int = 4, val: int = 3, endpoint_url: str | None = None) -> str:
    """A valid one-shard-per-split set at root (local folder or s3://): random frames, zero flow, labels < CLASSES."""
    from etc_core.data import shards
    from etc_core.storage import uri as storage

    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", train), ("val", val)):
        samples = []
        for t in range(n):
            frames = rng.integers(0, 256, (2, H, W, 3), dtype=np.uint8)
            label = rng.integers(0, CLASSES, (H, W), dtype=np.uint8)
            meta = {"video": "clip_000000", "t": t, "k": 1, "split": split}
            samples.append(shards.encode_sample(shards.sample_key("clip_000000", t, 1), frames[0], frames[1],
                                                np.zeros((2, H, W), np.float32), label, meta))
        path = shards.shard_name(split, 0)
        nbytes = shards.write_shard(samples, storage.join(root, path), endpoint_url)
        splits[split] = {"samples": n, "shards": [{"path": path, "samples": n, "bytes": nbytes}]}
    manifest = {"format": shards.FORMAT, "config_hash": "hand-made", "num_classes": CLASSES,
                "class_names": [f"c{i}" for i in range(CLASSES)], "versions": {}, "splits": splits,
                "config": {"data": {"height": H, "width": W}}}
    shards.write_manifest(root, manifest, endpoint_url)
    return root


def write_checkpoint(directory: Path, arch: str = "pspnet18_slim") -> Path:
    """A plain training checkpoint state.pt (model, arch, num_classes) as etc-pipeline predict/evaluate load it."""
    import torch

    from etc_core.models import create_model

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "state.pt"
    torch.save({"model": create_model(arch, num_classes=CLASSES).state_dict(), "arch": arch,
                "num_classes": CLASSES}, path)
    return path


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed): connections are refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO, timeout: int = 240,
        drop: tuple[str, ...] = ()):
    """Run a command with PYTHONPATH at the repo, env added and `drop` removed; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    for key in drop:
        full_env.pop(key, None)
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def last_line(proc) -> str:
    """The last non-empty stderr line: where entry points put `<ErrorClass>: <message>`."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_one_line_error(proc, cls: str, *fragments: str, code: int = 1) -> str:
    """Exit code `code`, last stderr line `cls: ...` holding every fragment, and no traceback of the entry point
    itself on stderr (Ray forwards its workers' logs, tracebacks included, prefixed `(Name pid=N)`)."""
    line = last_line(proc)
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert line.startswith(f"{cls}: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    own = [ln for ln in proc.stderr.splitlines() if ln.startswith("Traceback")]  # not Ray's `(Worker pid=N) ...`
    assert not own, proc.stderr[-3000:]
    return line


def files_under(root: Path) -> list[str]:
    """Every file below root, relative and sorted ([] when root does not exist)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def outputs_under(root: Path) -> list[str]:
    """files_under without lock files: etc_core/locks.py never deletes a flock file (by design), it is no output."""
    return [f for f in files_under(root) if not f.endswith(".lock")]


def mlflow_rows(db: Path, sql: str) -> list[tuple]:
    """Rows of a query on a SQLite MLflow store ([] when the store was never created)."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # the store exists but its tables were never made
            return []


class CountingServer:
    """A TCP server on 127.0.0.1 that accepts each connection and closes it at once, counting them: how many
    times a client tried (its first attempt plus its retries) before it gave up."""

    def __init__(self):
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.connections += 1
            conn.close()

    def __enter__(self) -> "CountingServer":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()


def frames_dir(root: Path) -> Path:
    """A folder of three small PNG frames: a valid --input for predict / evaluate."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True)
    for t in range(3):
        Image.fromarray(np.full((16, 24, 3), 40 * t, np.uint8)).save(root / f"{t:06d}.png")
    return root
