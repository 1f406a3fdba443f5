"""Exclusive locks: one run at a time writes a shard prefix, and one pipeline at a time uses a SQLite MLflow store.

    with locks.hold(locks.shards_lock(cfg.shards.uri), cfg.pipeline.lock_wait_s, cfg.s3.endpoint_url, cfg.s3.region):
        ...  # write shards, then the manifest

Where a lock lives: `<shards.uri>.lock` beside the prefix (a file, or an S3 object next to the prefix, so shard
listings never see it) and `<store>.db.lock` beside a SQLite MLflow store (`store_lock`; None for a server).

- Local: `filelock.FileLock`, an `flock` on the lock file. The kernel drops the lock when its holder dies, SIGKILL
  included, so a local lock is never stale. The file is never deleted (`preserve_lock_file`: deleting a flock file
  races with the next opener); it holds the owner as JSON while held. flock works on local disks and NFSv4 (Linux
  emulates it with POSIX locks there).
- S3: the first `put_object(IfNoneMatch="*")` wins. The object holds the owner and the holder rewrites it every
  HEARTBEAT_S (conditional on its ETag). A lock is stale, and is deleted (conditional on its ETag) so the waiter can
  take it, when its holder is a dead process on this host or its last write is older than STALE_S by the S3
  server's own clock (no clock skew between hosts).

A run that finds the lock held logs `waiting for lock <lock> held by pid N on host H since T` and polls for up to
`wait_s` seconds, then raises LockError naming the lock and its holder (exit code 75, "try again later"); wait_s=0
refuses at once. An S3 endpoint that fails is a StorageError naming the lock. Locks are reentrant within a process.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from etc_core.errors import EtcError, StorageError
from etc_core.storage import uri as storage

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a waiting run tries again
HEARTBEAT_S = 30.0  # an S3 lock's holder rewrites it this often
STALE_S = 120.0  # an S3 lock not rewritten for this long belongs to a dead or cut-off run

_held: dict[str, int] = {}  # lock -> depth, in this process
_held_guard = threading.Lock()


class LockError(EtcError):
    """Another run holds the lock (exit code 75: try again later, or wait longer with pipeline.lock_wait_s)."""

    exit_code = 75


def shards_lock(uri: str) -> str:
    """The lock of a shard prefix: `<uri>.lock` beside it (file or S3 object)."""
    return uri.rstrip("/") + ".lock"


def store_lock(tracking_uri: str | None) -> str | None:
    """The lock of a SQLite MLflow store (`<db>.lock`); None for any other store (a server does its own locking)."""
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        path = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
        if path and path != ":memory:":
            return path + ".lock"
    return None


@contextlib.contextmanager
def hold(lock: str | None, wait_s: float, endpoint_url: str | None = None, region: str | None = None) -> Iterator[None]:
    """Hold `lock` (a path or s3:// URI; None = no lock) for the block; wait up to wait_s s for another holder."""
    with _held_guard:
        reentrant = lock is None or lock in _held
        if lock is not None and reentrant:
            _held[lock] += 1
    if reentrant:
        try:
            yield
        finally:
            if lock is not None:
                with _held_guard:
                    _held[lock] -= 1
        return
    backend = _S3Lock(lock, endpoint_url, region) if storage.is_s3(lock) else _FileLock(lock)
    _acquire(backend, lock, wait_s)
    with _held_guard:
        _held[lock] = 1
    try:
        yield
    finally:
        with _held_guard:
            del _held[lock]
        backend.release()


def _acquire(backend, lock: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    announced, holder, retries = False, None, 0
    while True:
        owner = backend.try_acquire()
        if owner is None:
            if announced:
                log.info("got lock %s", lock)
            return
        if owner.get("retry") and retries < 3:  # released or removed as stale a moment ago: try again at once
            retries += 1
            continue
        retries = 0
        if time.monotonic() >= deadline:
            waited = f"after waiting {wait_s:g} s (pipeline.lock_wait_s)" if wait_s else "(pipeline.lock_wait_s=0)"
            raise LockError(f"lock {lock} is held by {describe(owner)}; another run is writing there {waited}")
        if not announced or owner.get("token") != holder:  # once per holder
            log.warning("waiting for lock %s held by %s (up to %g s)", lock, describe(owner), wait_s)
            announced, holder = True, owner.get("token")
        time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0.01)))


def describe(owner: dict) -> str:
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} since {owner.get('since', '?')}"


def _owner() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": _start_ticks(pid), "token": uuid.uuid4().hex,
            "since": dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from its first owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _dead_here(owner: dict) -> bool:
    """True when the owner ran on this host and its process is gone (or the pid now belongs to another process)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    started = owner.get("started")
    return started is not None and _start_ticks(owner["pid"]) not in (None, started)


class _FileLock:
    """filelock's flock on the lock file; the file stays (preserve_lock_file) and holds the owner while held."""

    def __init__(self, path: str):
        from filelock import FileLock

        self.path = path
        self.lock = FileLock(path, blocking=False, preserve_lock_file=True, on_acquired=self._write_owner)

    @staticmethod
    def _write_owner(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner()).encode(), 0)

    def try_acquire(self) -> dict | None:
        from filelock import Timeout

        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            try:
                return _parse(Path(self.path).read_bytes())
            except FileNotFoundError:  # removed by hand in between
                return {"retry": True}
        return None

    def release(self) -> None:
        if self.lock.is_locked:
            os.truncate(self.path, 0)  # still held: a waiter never reads a released lock's old owner
            self.lock.release()


def _parse(data: bytes) -> dict:
    try:
        owner = json.loads(data)
        return owner if isinstance(owner, dict) else {}
    except ValueError:  # being written, or emptied by a release a moment ago
        return {}


class _S3Lock:
    def __init__(self, uri: str, endpoint_url: str | None, region: str | None):
        self.uri = uri
        self.bucket, self.key = storage._split(uri)
        self.client = storage.s3_client(endpoint_url, region)
        self.etag: str | None = None
        self.owner: dict = {}
        self.stop = threading.Event()
        self.beat: threading.Thread | None = None

    def _call(self, what: str, fn, **kwargs):
        """fn(**kwargs); None on a failed precondition (someone else won) or a missing object."""
        from botocore.exceptions import ClientError

        try:
            return fn(Bucket=self.bucket, Key=self.key, **kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "?")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "412", "409"):
                return None
            raise StorageError(f"lock {self.uri}: {what} failed ({code})") from None
        except Exception as e:  # noqa: BLE001 - endpoint unreachable etc.: one line naming the lock
            raise StorageError(f"lock {self.uri}: {what} failed ({type(e).__name__}: {e})") from None

    def try_acquire(self) -> dict | None:
        self.owner = _owner()
        body = json.dumps(self.owner).encode()
        put = self._call("create", self.client.put_object, Body=body, IfNoneMatch="*")
        if put is not None:
            self.etag = put["ETag"]
            self.beat = threading.Thread(target=self._heartbeat, name=f"lock {self.uri}", daemon=True)
            self.beat.start()
            return None
        got = self._call("read", self.client.get_object)
        if got is None:  # released in between
            return {"retry": True}
        owner = _parse(got["Body"].read())
        server_now = got["ResponseMetadata"]["HTTPHeaders"].get("date")
        age = None
        if server_now:
            from email.utils import parsedate_to_datetime

            age = (parsedate_to_datetime(server_now) - got["LastModified"]).total_seconds()
        if _dead_here(owner) or (age is not None and age > STALE_S):
            why = "its process is gone" if _dead_here(owner) else f"not renewed for {age:.0f} s"
            log.warning("removing stale lock %s held by %s (%s)", self.uri, describe(owner), why)
            self._call("delete stale", self.client.delete_object, IfMatch=got["ETag"])
            return {**owner, "retry": True}
        return owner

    def _heartbeat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            body = json.dumps({**self.owner, "renewed": time.time()}).encode()
            try:
                put = self._call("renew", self.client.put_object, Body=body, IfMatch=self.etag)
            except StorageError as e:
                log.warning("%s", e)
                continue
            if put is None:
                log.error("lock %s was taken over by another run (this run was presumed dead); stop this run", self.uri)
                return
            self.etag = put["ETag"]

    def release(self) -> None:
        self.stop.set()
        if self.beat is not None:
            self.beat.join(timeout=10)
        try:
            self._call("release", self.client.delete_object, IfMatch=self.etag)
        except StorageError as e:  # left behind: the next run removes it as stale (same host at once, else STALE_S)
            log.warning("%s", e)
