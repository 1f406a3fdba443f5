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
SCRIPTS = sorted([*INFRA.glob("*.sh"), *INFRA.glob("aws/*.sh")])  # lib/: sourced, not run
CONFIG_ENV = {"CITYSCAPES_ROOT": "/data/cityscapes", "CAMVID_ROOT": "/data/camvid", "ETC_BUCKET": "etc-test-bucket"}


IMAGE_CHECKOUT = "/home/ray/etc-pipeline/"  # where infra/kuberay/Dockerfile puts the checkout


def _entry_and_config(command: str) -> tuple[str, str]:
    """('pipelines/x.py', 'configs/y.yaml') from `python [/home/ray/etc-pipeline/]pipelines/x.py --config ...`."""
    words = shlex.split(command)
    assert words[0] == "python", command
    return words[1].removeprefix(IMAGE_CHECKOUT), words[words.index("--config") + 1].removeprefix(IMAGE_CHECKOUT)


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
    assert gpu_workers and all(types[n]["min_workers"] == 0 for n in gpu_workers)
    assert any(types[n]["max_workers"] >= 1 for n in gpu_workers)
    # every node runs in the project's image (the one the RayJob runs): no node installs a package
    job, _ = _rayjob()
    images = {c["image"] for group in [job["spec"]["rayClusterSpec"]["headGroupSpec"],
                                       *job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
              for c in group["template"]["spec"]["containers"]}
    assert {cfg["docker"]["image"]} == images
    assert not any("pip install" in c for c in cfg["setup_commands"] + cfg.get("worker_setup_commands", []))
    assert "pip check" in "\n".join(cfg["setup_commands"])
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
    assert spec["entrypoint"].startswith(f"python {IMAGE_CHECKOUT}pipelines/full.py --config ")
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
    # psycopg2 named: SQLAlchemy 2 would read a bare postgresql:// as psycopg 3, which the project does not install
    assert words[words.index("--backend-store-uri") + 1] == "postgresql+psycopg2://mlflow@db:5432/mlflow"
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


# torch 2.14.1's CUDA 13 wheels: compute capability >= 7.5 (no V100/p3, no K80/p2, no M60/g3)
SUPPORTED_GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e", "p5en"}


def test_ray_cluster_yaml_would_boot_the_pinned_gpu_torch():
    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    types = cfg["available_node_types"]
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU")}
    for name, t in types.items():
        node = t["node_config"]
        assert node.get("ImageId", "").startswith(("ami-", "resolve:ssm:")), f"{name}: ImageId is required"
    for name, t in gpu.items():
        assert t["node_config"]["InstanceType"].split(".")[0] in SUPPORTED_GPU_FAMILIES, name
        assert t["node_config"]["IamInstanceProfile"], f"{name}: workers read shards and write checkpoints"
    assert sum(t["max_workers"] > 0 for t in gpu.values()) == 1  # one GPU type per DDP group
    check = "\n".join(cfg["worker_setup_commands"])
    assert "nvidia-smi --query-gpu=driver_version" in check and "-ge 580" in check and "exit 1" in check
    assert "torch.cuda.is_available()" in check


# A hand-written subset of the KubeRay ray.io/v1 RayJob CRD and of core/v1 (the fields these manifests use, with
# their types; unknown fields refused), checked with jsonschema: a typo or a wrong type fails here, not in kubectl.
_QUANTITY = {"type": ["string", "integer"]}
_POD = {"type": "object", "additionalProperties": False, "required": ["containers"], "properties": {
    "containers": {"type": "array", "minItems": 1, "items": {
        "type": "object", "additionalProperties": False, "required": ["name", "image"], "properties": {
            "name": {"type": "string"}, "image": {"type": "string"}, "workingDir": {"type": "string"},
            "envFrom": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
                "configMapRef": {"type": "object", "required": ["name"]},
                "secretRef": {"type": "object", "required": ["name"]}}}},
            "resources": {"type": "object", "additionalProperties": False, "properties": {
                "requests": {"type": "object", "additionalProperties": _QUANTITY},
                "limits": {"type": "object", "additionalProperties": _QUANTITY}}},
            "ports": {"type": "array", "items": {"type": "object", "required": ["containerPort"], "properties": {
                "containerPort": {"type": "integer"}, "name": {"type": "string"}}}},
            "volumeMounts": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "mountPath"], "properties": {
                    "name": {"type": "string"}, "mountPath": {"type": "string"}, "readOnly": {"type": "boolean"}}}}}}},
    "volumes": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["name"], "properties": {
            "name": {"type": "string"},
            "persistentVolumeClaim": {"type": "object", "additionalProperties": False, "required": ["claimName"],
                                      "properties": {"claimName": {"type": "string"}, "readOnly": {"type": "boolean"}}},
            "emptyDir": {"type": "object", "additionalProperties": False, "properties": {
                "medium": {"enum": ["", "Memory"]}, "sizeLimit": _QUANTITY}}}}},
    "tolerations": {"type": "array", "items": {"type": "object", "properties": {
        "key": {"type": "string"}, "operator": {"enum": ["Exists", "Equal"]},
        "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]}}}}}}
_TEMPLATE = {"type": "object", "required": ["spec"], "properties": {"spec": _POD}}
_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
SCHEMAS = {
    "RayJob": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "apiVersion": {"const": "ray.io/v1"}, "spec": {
            "type": "object", "additionalProperties": False, "required": ["entrypoint", "rayClusterSpec"],
            "properties": {
                "entrypoint": {"type": "string"}, "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "shutdownAfterJobFinishes": {"type": "boolean"}, "ttlSecondsAfterFinished": {"type": "integer"},
                "rayClusterSpec": {"type": "object", "additionalProperties": False, "properties": {
                    "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
                    "authOptions": {"type": "object", "properties": {"mode": {"enum": ["disabled", "token"]}}},
                    "headGroupSpec": {"type": "object", "additionalProperties": False, "required": ["template"],
                                      "properties": {"rayStartParams": _START_PARAMS, "template": _TEMPLATE}},
                    "workerGroupSpecs": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False, "required": ["groupName", "template"],
                        "properties": {"groupName": {"type": "string"}, "replicas": {"type": "integer"},
                                       "minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"},
                                       "rayStartParams": _START_PARAMS, "template": _TEMPLATE}}}}}}}}},
    "ConfigMap": {"type": "object", "required": ["metadata", "data"], "properties": {
        "apiVersion": {"const": "v1"}, "data": {"type": "object", "additionalProperties": {"type": "string"}}}},
    "PersistentVolumeClaim": {"type": "object", "required": ["metadata", "spec"], "properties": {
        "apiVersion": {"const": "v1"}, "spec": {
            "type": "object", "additionalProperties": False, "required": ["accessModes", "resources"], "properties": {
                "accessModes": {"type": "array", "items": {
                    "enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]}},
                "storageClassName": {"type": "string"},
                "resources": {"type": "object", "properties": {"requests": {"type": "object",
                                                                            "additionalProperties": _QUANTITY}}}}}}},
}


def test_kuberay_manifests_match_their_schemas():
    import jsonschema

    _, docs = _rayjob()
    assert {d["kind"] for d in docs} == set(SCHEMAS)
    for doc in docs:
        jsonschema.validate(doc, SCHEMAS[doc["kind"]])
    broken = json.loads(json.dumps(_rayjob()[0]))
    broken["spec"]["activeDeadlineSecond"] = 3600  # a typo must not pass
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMAS["RayJob"])


def test_rayjob_would_run_on_a_cluster():
    job, docs = _rayjob()
    spec = job["spec"]
    assert spec["activeDeadlineSeconds"] > 0
    words = shlex.split(spec["entrypoint"])
    assert words[1].startswith(IMAGE_CHECKOUT) and words[words.index("--config") + 1].startswith(IMAGE_CHECKOUT)
    claims = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    cluster = spec["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"]
                                                            for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
            for mount, volume in mounts.items():
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]
                    assert claim["readOnly"] and claims[claim["claimName"]]["accessModes"] == ["ReadOnlyMany"]


def test_mlflow_server_offers_basic_auth_beyond_loopback(tmp_path):
    done = _print("mlflow_server.sh", "--host", "10.0.0.5", "--auth", "--backend", f"{tmp_path}/mlflow.db")
    assert done.returncode == 0 and done.stderr == ""  # no warning: requests need a user and password
    env_line, command = done.stdout.splitlines()
    assert env_line == f"MLFLOW_AUTH_CONFIG_PATH={tmp_path}/basic_auth.ini"
    words = shlex.split(command)
    assert words[words.index("--app-name") + 1] == "basic-auth"
    bare = _print("mlflow_server.sh", "--host", "10.0.0.5")
    assert "without --auth" in bare.stderr and "--app-name" not in bare.stdout


def test_the_head_may_launch_workers_with_their_profile():
    """Ray's default head role (ray-autoscaler-v1) has no iam:PassRole: the head gets a profile of its own whose policy
    passes exactly the workers' role, and create_roles.sh fills the account and bucket into both policies."""
    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]["node_config"]["IamInstanceProfile"]["Name"]
    workers = {t["node_config"]["IamInstanceProfile"]["Name"] for n, t in types.items() if n != cfg["head_node_type"]}
    assert len(workers) == 1 and head not in workers
    done = subprocess.run([str(INFRA / "aws" / "create_roles.sh"), "my-bucket", "--print"], capture_output=True,
                          text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "AWS_ACCOUNT_ID": "123456789012"})
    assert done.returncode == 0, done.stderr
    worker_doc, head_doc = (json.loads(part.split("\n", 1)[1]) for part in done.stdout.split("# etc-pipeline-")[1:])
    (worker,) = workers

    def allowed(doc: dict, action: str) -> list:
        return [st["Resource"] for st in doc["Statement"] if action in st["Action"] or st["Action"] == action]

    assert allowed(head_doc, "iam:PassRole") == [f"arn:aws:iam::123456789012:role/{worker}"]
    assert allowed(head_doc, "ec2:RunInstances") == ["*"] and allowed(head_doc, "ssm:GetParameters")
    for doc in (head_doc, worker_doc):
        assert allowed(doc, "s3:PutObject") == ["arn:aws:s3:::my-bucket/*"]
        assert allowed(doc, "s3:ListBucket") == ["arn:aws:s3:::my-bucket"]
    assert "BUCKET" not in done.stdout and "ACCOUNT" not in done.stdout
    assert not allowed(worker_doc, "iam:PassRole")


def test_the_mlflow_server_files_give_the_rayjob_its_address():
    """infra/kuberay/mlflow.yaml serves the URI rayjob.yaml names, from PostgreSQL, with artifacts through the server;
    infra/mlflow/compose.yaml does the same on a VM, published on 127.0.0.1 unless told otherwise."""
    from urllib.parse import urlparse

    job, docs = _rayjob()
    uri = urlparse(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["MLFLOW_TRACKING_URI"])
    name, namespace = uri.hostname.split(".")[:2]
    k8s = [d for d in yaml.safe_load_all((INFRA / "kuberay" / "mlflow.yaml").read_text()) if d]
    by = {(d["kind"], d["metadata"]["name"]): d for d in k8s}
    assert {d["metadata"]["namespace"] for d in k8s} == {namespace}
    service = by[("Service", name)]
    assert [p["port"] for p in service["spec"]["ports"]] == [uri.port]
    server = by[("Deployment", name)]
    assert server["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    (container,) = server["spec"]["template"]["spec"]["containers"]
    command = container["command"][-1]
    assert "--backend-store-uri \"postgresql+psycopg2://" in command and "--serve-artifacts" in command
    db_host = re.search(r"@([\w.-]+):5432/", command).group(1)
    assert ("Service", db_host.split(".")[0]) in by and ("StatefulSet", "postgres") in by
    assert uri.hostname in by[("ConfigMap", "etc-mlflow")]["data"]["ALLOWED_HOSTS"]
    assert container["image"] == job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "image"]
    assert not any("password" in json.dumps(d).lower().replace("postgres_password", "") for d in k8s)
    compose = yaml.safe_load((INFRA / "mlflow" / "compose.yaml").read_text())["services"]
    assert {"postgres", "minio", "mlflow"} <= set(compose)
    assert "postgresql+psycopg2://" in compose["mlflow"]["command"][-1] and "--serve-artifacts" in compose[
        "mlflow"]["command"][-1]
    assert all(p.startswith("${MLFLOW_BIND:-127.0.0.1}:") for svc in compose.values() for p in svc.get("ports", []))

