"""Child processes for the reliability tests: start a real entry point, read its output while it runs, SIGKILL it."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil

from tests.conftest import REPO, TINY_DATA


class Output:
    """A child's merged stdout/stderr, read by a thread: wait for a line while the child runs, read all of it later."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self._thread.start()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> tuple[int, re.Match]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for i in range(start, len(self.lines)):
                if match := re.search(pattern, self.lines[i]):
                    return i, match
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s; output ends:\n{self.text()[-3000:]}")

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


def popen(args: list[str], **env: str) -> subprocess.Popen:
    # os.environ now, not at import: starting the session's Ray sets what a joining driver needs (its auth mode)
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def our_processes() -> list[psutil.Process]:
    """This test session's descendants (its Ray included), never another session's processes on the machine."""
    mine = {child.pid for child in psutil.Process().children(recursive=True)}
    return [p for p in psutil.process_iter(["cmdline"]) if p.pid in mine]


def sigkill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def full_args(root, address: str, *extra: str) -> list[str]:
    """pipelines/full.py at the smallest size that runs every stage (no baseline, no ptlflow timing), joining Ray."""
    return ["pipelines/full.py", f"data.root={root}/data", f"shards.uri={root}/shards",
            f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db", f"mlflow.artifact_root={root}/artifacts",
            f"train.storage_path={root}/ray_results", *TINY_DATA, "teacher.arch=pspnet18_slim",
            "student.arch=lraspp_mobilenetv3", "train.max_steps=2", "train.steps_per_epoch=2", "train.batch_size=2",
            "train.crop=null", "pipeline.ptlflow_timing_pairs=0", "pipeline.baseline=false", f"ray.address={address}",
            *extra]
