"""Two runs on one shard prefix and one SQLite MLflow store: the second waits or refuses with one line, nothing breaks.

etc_core/locks.py on its own (a local flock and an S3 lock object on moto, each held by a real second process); three
real pipelines/full.py runs against one store at once (two `ray job submit` jobs and one that refuses to wait):
tests/integration/test_job_submit.py.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from etc_core import locks
from etc_core.config import load_config
from etc_core.data.generated import write_dataset
from etc_core.flow.stage import run_flow_stage
from tests.conftest import REPO, TINY_DATA

pytestmark = pytest.mark.integration

HOLDER = ("import sys, time; from etc_core import locks\n"
          "with locks.hold(sys.argv[1], 0, sys.argv[2] if len(sys.argv) > 2 else None):\n"
          "    print('held', flush=True); time.sleep(300)")


def _hold_in_subprocess(lock: str, *endpoint: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, lock, *endpoint], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_local_lock_waits_names_its_holder_and_is_freed_by_sigkill(tmp_path, caplog):
    lock = locks.shards_lock(str(tmp_path / "shards"))
    assert lock == f"{tmp_path}/shards.lock"
    assert locks.store_lock(f"sqlite:///{tmp_path}/mlflow.db") == f"{tmp_path}/mlflow.db.lock"
    assert locks.store_lock("http://127.0.0.1:5000") is None
    holder = _hold_in_subprocess(lock)
    try:
        with caplog.at_level(logging.INFO, logger="etc_core.locks"), pytest.raises(locks.LockError) as err:
            with locks.hold(lock, wait_s=1.0):
                pass
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"lock {lock} is held by pid {holder.pid} on host ")
        assert "after waiting 1 s (pipeline.lock_wait_s)" in message and err.value.exit_code == 75
        waiting = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for lock")]
        assert len(waiting) == 1 and f"held by pid {holder.pid} on host " in waiting[0]  # logged once, not per poll
        cfg = load_config(None, [f"data.root={tmp_path}/data", f"shards.uri={tmp_path}/shards", *TINY_DATA,
                                 "pipeline.lock_wait_s=0"])
        write_dataset(cfg.data, progress=False)
        with pytest.raises(locks.LockError, match=rf"^lock {lock} is held by .*\(pipeline.lock_wait_s=0\)$"):
            run_flow_stage(cfg, progress=False)  # the flow stage refuses before it writes anything
        assert not (tmp_path / "shards").exists()
    finally:
        _kill(holder)
    start = time.monotonic()
    with locks.hold(lock, wait_s=0):  # the kernel dropped the killed holder's flock: no stale lock
        with locks.hold(lock, wait_s=0):  # reentrant within a process
            assert json.loads(open(lock).read())["pid"] == os.getpid()
    assert time.monotonic() - start < 1 and open(lock).read() == ""


def test_s3_lock_is_exclusive_and_a_dead_or_silent_holder_is_stale(moto_s3, monkeypatch, caplog):
    from etc_core.storage import uri as storage

    client = storage.s3_client(moto_s3)
    client.create_bucket(Bucket="etc-locks")
    lock = locks.shards_lock("s3://etc-locks/run/shards")
    assert lock == "s3://etc-locks/run/shards.lock"
    holder = _hold_in_subprocess(lock, moto_s3)
    try:
        owner = json.loads(client.get_object(Bucket="etc-locks", Key="run/shards.lock")["Body"].read())
        assert owner["pid"] == holder.pid and owner["host"] and owner["since"]
        with pytest.raises(locks.LockError, match=rf"^lock {lock} is held by pid {holder.pid} on host .* after"):
            with locks.hold(lock, 1.0, moto_s3):
                pass
    finally:
        _kill(holder)  # its lock object stays behind
    assert storage.exists(lock, moto_s3)
    with caplog.at_level(logging.INFO, logger="etc_core.locks"):
        with locks.hold(lock, 0, moto_s3):  # same host, dead pid: stale at once
            assert json.loads(storage.read_bytes(lock, moto_s3))["pid"] == os.getpid()
    assert any("removing stale lock" in r.getMessage() and "its process is gone" in r.getMessage()
               for r in caplog.records)
    assert not storage.exists(lock, moto_s3)  # released

    # a holder on another host that stopped renewing: stale once its object is older than STALE_S (server clock)
    client.put_object(Bucket="etc-locks", Key="run/shards.lock",
                      Body=json.dumps({"host": "elsewhere", "pid": 1, "since": "then"}).encode())
    with pytest.raises(locks.LockError, match="held by pid 1 on host elsewhere since then"):
        with locks.hold(lock, 0, moto_s3):
            pass
    monkeypatch.setattr(locks, "STALE_S", 1.0)
    time.sleep(2.1)
    with locks.hold(lock, 0, moto_s3):
        assert json.loads(storage.read_bytes(lock, moto_s3))["host"] != "elsewhere"
