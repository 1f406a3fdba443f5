"""Temp files named after their process: a killed one's (etc-torch-store-*, etc-shard-*.tar.tmp) are removed by the
next process that makes one, and a live process's never are."""
import os
import subprocess
import sys
import tempfile

from etc_core.storage.tmp import owned_temp, remove_stale


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_processes_go_and_live_ones_stay():
    tmp = tempfile.gettempdir()
    dead = os.path.join(tmp, f"etc-shard-{_dead_pid()}-test.tar.tmp")
    live = os.path.join(tmp, f"etc-shard-{os.getpid()}-test.tar.tmp")
    other = os.path.join(tmp, f"etc-torch-store-{_dead_pid()}-test")  # another prefix: not this call's business
    for path in (dead, live, other):
        open(path, "w").close()
    try:
        fresh = owned_temp("etc-shard-", ".tar.tmp")
        assert not os.path.exists(dead) and os.path.exists(live) and os.path.exists(other)
        assert os.path.basename(fresh).startswith(f"etc-shard-{os.getpid()}-") and fresh.endswith(".tar.tmp")
        assert other in remove_stale("etc-torch-store-")
    finally:
        for path in (dead, live, other):
            if os.path.exists(path):
                os.remove(path)
