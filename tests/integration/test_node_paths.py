"""Two Ray nodes that do not share a folder: a head and a worker node in its own mount namespace, where a tmpfs
hides one folder of this machine, with its own home, torch cache and temp dir. The per-node path check
(etc_core/cluster_check.py, check_on_nodes) finds what the worker node lacks and says so in one line naming the node
and the path; a folder both nodes see passes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration import _isolated_node as isolated_node

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHECK = """
import json, sys, time, ray
from etc_core.cluster_check import check_on_nodes
from etc_core.errors import ConfigError
ray.init(address=sys.argv[1], log_to_driver=False)
end = time.monotonic() + 120
while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < end:  # the isolated node joining
    time.sleep(0.5)
out = {"nodes": len([n for n in ray.nodes() if n["Alive"]])}
for key, path in json.loads(sys.argv[2]):
    try:
        check_on_nodes([(key, path)])
        out[key] = "ok"
    except ConfigError as e:
        out[key] = str(e)
print(json.dumps(out))
"""


@pytest.fixture
def split_nodes():
    """(GCS address, shared folder, head-only folder) of a head (ray.cluster_utils.Cluster) and a worker node in its
    own mount namespace (tests/integration/_isolated_node.py), on 127.0.0.1."""
    from ray.cluster_utils import Cluster

    root = Path(tempfile.mkdtemp(prefix="nodes", dir="/tmp"))
    shared, head_only = root / "shared", root / "head-only"
    for folder in (shared / "data", head_only / "data", head_only / "ray_results"):
        folder.mkdir(parents=True)
    cluster = Cluster()
    worker = None
    try:
        cluster.add_node(num_cpus=1, include_dashboard=False)
        worker = isolated_node.start(cluster.gcs_address, [head_only], root / "home", resources={"isolated": 1})
        yield cluster.gcs_address, shared, head_only
    finally:
        if worker is not None:
            isolated_node.stop(worker)
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def test_a_folder_one_node_lacks_is_one_line_naming_node_and_path(split_nodes):
    import json

    address, shared, head_only = split_nodes
    paths = [("data.root", str(shared / "data")), ("shards.uri", str(head_only / "data")),
             ("train.storage_path", str(head_only / "ray_results" / "new"))]  # not made yet: its folder is looked for
    proc = subprocess.run([sys.executable, "-c", CHECK, address, json.dumps(paths)], cwd=REPO, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["nodes"] == 2, out
    assert out["data.root"] == "ok"  # the same folder on both nodes passes
    assert out["shards.uri"].startswith(f"shards.uri: {head_only / 'data'} is missing on node isolated (")
    assert "mount it at the same path on every node, or use s3://" in out["shards.uri"]
    assert "\n" not in out["shards.uri"]
    assert out["train.storage_path"].startswith(
        f"train.storage_path: {head_only / 'ray_results' / 'new'} (its folder {head_only / 'ray_results'}) is missing "
        "on node isolated (")
