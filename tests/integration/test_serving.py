"""The registered model as users pick it up: trained through Ray Train, then loaded with `mlflow.pyfunc` in a
fresh process (pickle deserialisation off) and served by `mlflow models serve --env-manager local` on 127.0.0.1."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from etc_core.config import load_config
from etc_core.data import shards
from etc_core.train.run import run_training
from tests.conftest import answers, end_processes, run_dirs, wait_for
from tests.integration.test_training import FAST

pytestmark = pytest.mark.integration

URI = "models:/etc-teacher@champion"

FRESH = """
import importlib.metadata as md, json, sys
import numpy as np, mlflow, mlflow.pyfunc
local = mlflow.artifacts.download_artifacts(sys.argv[1])  # resolving models:/ imports the store's packages
before = {m.split(".")[0] for m in sys.modules}
model = mlflow.pyfunc.load_model(local)
out = model.predict(np.load(sys.argv[2]))
modules = {m.split(".")[0] for m in sys.modules} - before - set(sys.stdlib_module_names)
dists = md.packages_distributions()
import etc_core
print(json.dumps({"masks": out.tolist(), "dtype": str(out.dtype), "etc_core": etc_core.__file__,
                  "imported": sorted({d for m in modules for d in dists.get(m, [])}),
                  "requirements": open(mlflow.pyfunc.get_model_dependencies(local)).read().split(),
                  "reloaded": mlflow.pyfunc.load_model(sys.argv[1]).predict(np.load(sys.argv[2])).tolist()}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _closure(requirements: list[str]) -> set[str]:
    """The canonical names of the pinned packages and of everything they depend on (what pip would install)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo, seen = [Requirement(r).name for r in requirements], set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for text in _requires(name):
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _requires(name: str) -> list[str]:
    import importlib.metadata as md

    try:
        return md.requires(name) or []
    except md.PackageNotFoundError:
        return []


def _post(port: int, frames: np.ndarray) -> np.ndarray:
    import urllib.request

    body = json.dumps({"inputs": frames.tolist()}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return np.asarray(json.loads(response.read())["predictions"])


@pytest.mark.slow
def test_trained_version_loads_as_pyfunc_in_a_fresh_process_and_serves(tiny_shards, tmp_path):
    import mlflow
    import psutil
    from packaging.utils import canonicalize_name

    cfg = load_config(None, [*tiny_shards, *run_dirs(tmp_path), *FAST, "train.max_steps=2",
                             "train.steps_per_epoch=2", "train.workers=1"])
    run_training(cfg, "teacher")
    val = shards.iter_samples(cfg.shards.uri, "val")
    frames = np.stack([next(val)["img0"] for _ in range(2)])  # uint8 [2,32,48,3], what a client has
    np.save(tmp_path / "frames.npy", frames)
    env = {**os.environ, "MLFLOW_TRACKING_URI": cfg.mlflow.tracking_uri, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    port = _free_port()
    ping = f"http://127.0.0.1:{port}/ping"
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", URI, "--env-manager",
                                   "local", "-h", "127.0.0.1", "-p", str(port)], cwd=tmp_path, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        fresh = subprocess.run([sys.executable, "-c", FRESH, URI, str(tmp_path / "frames.npy")], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
        assert fresh.returncode == 0, fresh.stderr[-3000:]
        got = json.loads(fresh.stdout.strip().splitlines()[-1])
        masks = np.asarray(got["masks"])
        np.testing.assert_array_equal(np.asarray(got["reloaded"]), masks)  # by its models:/...@champion URI too
        assert masks.shape == (2, 32, 48) and got["dtype"] == "uint8"
        assert masks.min() >= 0 and masks.max() < 6  # data.num_classes defaults to 6
        assert "/code/etc_core/" in got["etc_core"]  # the project code came with the model, not from this checkout
        pinned = {canonicalize_name(r.split("==")[0]) for r in got["requirements"] if "==" in r}
        assert pinned == {canonicalize_name(r.split("==")[0]) for r in got["requirements"]}  # every one pinned
        missing = {canonicalize_name(d) for d in got["imported"]} - _closure(got["requirements"]) - {"etc-pipeline"}
        assert not missing, f"the served model imports packages its requirements do not bring: {missing}"

        wait_for(lambda: answers(ping) or server.poll() is not None, 240, "mlflow models serve", poll_s=1)
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        served = _post(port, frames)
        assert served.shape == (2, 32, 48)
        np.testing.assert_array_equal(served, masks)  # the same model, the same CPU: the same class ids
        listening = [c.laddr for p in [psutil.Process(server.pid), *psutil.Process(server.pid).children(True)]
                     for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    finally:
        procs = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)] \
            if server.poll() is None else []
        end_processes(procs, timeout=20)
    assert not answers(ping)
    champion = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_model_version_by_alias("etc-teacher", "champion")
    assert "mlflow.pyfunc.load_model" in champion.description and "pspnet18_slim" in champion.description
