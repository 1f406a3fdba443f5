"""The cluster files are valid: ray_cluster.yaml, the KubeRay RayJob, and the infra/ shell scripts."""
from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
import yaml

from etc_core.config import load_config
from tests.conftest import REPO

INFRA = REPO / "infra"
SCRIPTS = sorted(INFRA.glob("*.sh"))
CONFIG_ENV = {"CITYSCAPES_ROOT": "/data/cityscapes", "CAMVID_ROOT": "/data/camvid", "ETC_BUCKET": "etc-test-bucket"}


def _entry_and_config(command: str) -> tuple[str, str]:
    """('pipelines/x.py', 'configs/y.yaml') from `python pipelines/x.py --config configs/y.yaml ...`."""
    words = shlex.split(command)
    assert words[0] == "python", command
    return words[1], words[words.index("--config") + 1]


def _check_entry(command: str, monkeypatch) -> None:
    entry, config = _entry_and_config(command)
    assert (REPO / entry).is_file(), f"{entry} named in the cluster files does not exist"
    for name, value in CONFIG_ENV.items():
        monkeypatch.setenv(name, value)
    cfg = load_config(REPO / config)
    assert cfg.shards.uri.startswith("s3://"), "multi-node runs need shards on shared storage"


def test_ray_cluster_yaml_has_head_and_gpu_workers():
    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands",
                "file_mounts", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # the head runs the driver and controllers, not training
    gpu_workers = [name for name, t in types.items() if name != cfg["head_node_type"] and t["resources"].get("GPU")]
    assert gpu_workers and all(types[n]["min_workers"] == 0 and types[n]["max_workers"] >= 1 for n in gpu_workers)
    setup = "\n".join(cfg["setup_commands"])
    assert "torch==2.14.1 torchvision==0.29.1" in setup and "-c constraints.txt -e ." in setup
    assert setup.index("torch==2.14.1") < setup.index("-c constraints.txt")  # the Makefile's order
    assert "." in cfg["file_mounts"].values()
    start = "\n".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        assert "RAY_AUTH_MODE=token" in cmd or cmd.rstrip().endswith("ray stop")


def test_ray_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(yaml.safe_load((REPO / "ray_cluster.yaml").read_text())))


def _rayjob() -> tuple[dict, list[dict]]:
    docs = [d for d in yaml.safe_load_all((INFRA / "kuberay" / "rayjob.yaml").read_text()) if d]
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    return jobs[0], docs


def test_rayjob_manifest_has_required_keys():
    job, docs = _rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["entrypoint"].startswith("python pipelines/full.py --config ")
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    groups = cluster["workerGroupSpecs"]
    assert any(c["resources"]["limits"].get("nvidia.com/gpu") for g in groups for c in g["template"]["spec"]["containers"])
    config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d.get("kind") == "ConfigMap"}
    for container in [head] + [c for g in groups for c in g["template"]["spec"]["containers"]]:
        refs = container["envFrom"]
        secret = [r["secretRef"]["name"] for r in refs if "secretRef" in r]
        maps = [r["configMapRef"]["name"] for r in refs if "configMapRef" in r]
        assert secret, "AWS credentials come from a Secret"
        assert maps and all(m in config_maps for m in maps)
        assert "MLFLOW_TRACKING_URI" in config_maps[maps[0]]
    assert not any(d.get("kind") == "Secret" for d in docs), "no Secret values in the repo"


def test_cluster_files_name_real_entrypoints_and_configs(monkeypatch):
    job, _ = _rayjob()
    _check_entry(job["spec"]["entrypoint"], monkeypatch)
    for name in ("ray_cluster.yaml", "infra/submit.sh"):  # the usage lines name configs and scripts
        text = (REPO / name).read_text()
        for path in re.findall(r"\b((?:configs|pipelines|infra)/[\w/.-]+\.(?:yaml|py|sh|example))\b", text):
            assert (REPO / path).is_file(), f"{name} names {path}, which does not exist"
        for config in re.findall(r"--config (configs/\S+\.yaml)", text):
            load_config(REPO / config)


def test_cluster_env_example_holds_no_credentials():
    lines = [ln for ln in (INFRA / "cluster.env.example").read_text().splitlines() if ln and not ln.startswith("#")]
    names = {ln.split("=", 1)[0] for ln in lines}
    assert {"MLFLOW_TRACKING_URI", "ETC_BUCKET", "AWS_DEFAULT_REGION", "RAY_AUTH_MODE"} <= names
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_shell_scripts_parse_and_have_help(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("Usage:"), done.stderr


def _print(script: str, *args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(INFRA / script), "--print", *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, cwd=cwd)


def test_mlflow_server_defaults_to_loopback_and_absolute_sqlite():
    done = _print("mlflow_server.sh")
    words = shlex.split(done.stdout)
    assert done.returncode == 0 and done.stderr == ""
    assert words[words.index("--host") + 1] == "127.0.0.1" and words[words.index("--port") + 1] == "5000"
    assert words[words.index("--backend-store-uri") + 1].startswith("sqlite:////")
    assert "--serve-artifacts" in words


def test_mlflow_server_warns_when_binding_elsewhere_and_passes_s3_and_postgres():
    done = _print("mlflow_server.sh", "--host", "0.0.0.0", "--backend", "postgresql://mlflow@db:5432/mlflow",
                  "--artifacts-destination", "s3://bucket/prefix")
    words = shlex.split(done.stdout)
    assert done.returncode == 0 and "warning: binding 0.0.0.0" in done.stderr
    assert words[words.index("--backend-store-uri") + 1] == "postgresql://mlflow@db:5432/mlflow"
    assert words[words.index("--artifacts-destination") + 1] == "s3://bucket/prefix"


def test_submit_passes_env_and_excludes_but_not_credentials(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}
    done = _print("submit.sh", "--config", "configs/demo.yaml", "train.max_steps=2", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    words = shlex.split(done.stdout)
    assert words[1:4] == ["job", "submit", "--address"] and words[words.index("--working-dir") + 1] == "."
    runtime_env = json.loads(words[words.index("--runtime-env-json") + 1])
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    # ETC_BASE_DIR: where it was started, so that the job resolves relative config paths there (not in Ray's copy)
    assert runtime_env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "ETC_GIT_COMMIT": commit,
                                       "ETC_BASE_DIR": str(tmp_path)}
    assert {".git", ".venv", "runs", "mlruns"} <= set(runtime_env["excludes"])
    assert words[words.index("--"):] == ["--", "python", "pipelines/full.py", "--config", "configs/demo.yaml",
                                         "train.max_steps=2"]
    shown = _print("submit.sh", "--pass-credentials", env=env)
    assert "not-a-real-secret" not in shown.stdout and '"AWS_SECRET_ACCESS_KEY": "***"' in shown.stdout
