#!/usr/bin/env bash
# Submit a pipeline entry point to a running Ray cluster with `ray job submit --working-dir .` (docs/cluster.md).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Passed to the job when set in this shell (so every Ray process of the job sees them).
PASS_VARS=(MLFLOW_TRACKING_URI MLFLOW_S3_ENDPOINT_URL AWS_ENDPOINT_URL AWS_DEFAULT_REGION ETC_BUCKET
           CITYSCAPES_ROOT CAMVID_ROOT MLFLOW_DISABLE_TELEMETRY ETC_GIT_COMMIT ETC_BASE_DIR)
SECRET_VARS=(AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN)
EXCLUDES='[".git", ".venv", "runs", "mlruns", "**/__pycache__", "*.egg-info"]'

usage() {
    cat <<EOF
Usage: infra/submit.sh [--entry SCRIPT] [--address URL] [--pass-credentials] [--no-wait] [--print] [ARGS...]

Uploads this checkout (without ${EXCLUDES//\"/};
.gitignore is honoured too; Ray caps the upload at 100 MiB) and runs \`python SCRIPT ARGS...\` there, e.g.

  RAY_ADDRESS=http://127.0.0.1:8265 infra/submit.sh --config configs/cityscapes.yaml
  infra/submit.sh --entry pipelines/precompute_flow.py --config configs/camvid.yaml flow.batch_size=1

  --entry SCRIPT        the entry point (default: pipelines/full.py)
  --address URL         the cluster's job server (default: \$RAY_ADDRESS, else http://127.0.0.1:8265, where
                        \`ray dashboard ray_cluster.yaml\` forwards it)
  --pass-credentials    also pass ${SECRET_VARS[*]}
                        from this shell (they then show in the job's runtime environment on the dashboard;
                        prefer credentials on the nodes or an instance profile)
  --no-wait             submit and return; follow with \`ray job logs -f ID\`
  --print               print the ray job submit command and exit
  -h, --help            this help

Passed to the job when set here: ${PASS_VARS[*]:0:4}
    ${PASS_VARS[*]:4}
    (ETC_GIT_COMMIT defaults to this checkout's commit: the job's MLflow runs are tagged with it;
    ETC_BASE_DIR to the directory you run this from: the job resolves relative config paths against it, as a
    local run would, instead of inside Ray's unpacked copy; a cluster of several nodes, or with an autoscaler,
    refuses relative paths instead: give absolute shared paths or s3://. --config is read in the uploaded copy).
RAY_AUTH_MODE defaults to token (the client reads ~/.ray/auth_token or RAY_AUTH_TOKEN).
EOF
}

# shellcheck source=infra/lib/common.sh
source "$REPO/infra/lib/common.sh"

entry="pipelines/full.py"
address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
pass_credentials=0
no_wait=()
print_only=0
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --entry) [[ $# -ge 2 ]] || die "--entry needs a script"; entry="$2"; shift 2 ;;
        --address) [[ $# -ge 2 ]] || die "--address needs a URL"; address="$2"; shift 2 ;;
        --pass-credentials) pass_credentials=1; shift ;;
        --no-wait) no_wait=(--no-wait); shift ;;
        --print) print_only=1; shift ;;
        --) shift; args+=("$@"); break ;;
        *) args+=("$1"); shift ;;
    esac
done

# relative config paths mean the same as in a local run: against where this command was started (etc_core/storage/paths.py)
ETC_BASE_DIR="${ETC_BASE_DIR:-$PWD}"
export ETC_BASE_DIR
cd "$REPO"
[[ -f "$entry" ]] || die "--entry: $entry not found in $REPO"
# the job gets no .git (excluded above): it tags its MLflow runs with the commit this checkout is at
ETC_GIT_COMMIT="${ETC_GIT_COMMIT:-$(git -C "$REPO" rev-parse HEAD 2>/dev/null || true)}"
export ETC_GIT_COMMIT

python_bin="${PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$python_bin" ]] || python_bin="python3"
ray_bin="${RAY:-$REPO/.venv/bin/ray}"
[[ -x "$ray_bin" ]] || ray_bin="ray"

names=("${PASS_VARS[@]}")
[[ "$pass_credentials" -eq 0 ]] || names+=("${SECRET_VARS[@]}")
# --print shows credentials as *** (the command line would otherwise leak them to the terminal and logs)
runtime_env="$(EXCLUDES="$EXCLUDES" MASK="${print_only}:${SECRET_VARS[*]}" "$python_bin" -c '
import json, os, sys
masked = os.environ["MASK"].split(":")[1].split() if os.environ["MASK"].startswith("1:") else []
env = {n: "***" if n in masked else os.environ[n] for n in sys.argv[1:] if os.environ.get(n)}
print(json.dumps({"env_vars": env, "excludes": json.loads(os.environ["EXCLUDES"])}))
' "${names[@]}")"

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
cmd=("$ray_bin" job submit --address "$address" --working-dir . --runtime-env-json "$runtime_env" "${no_wait[@]}"
     -- python "$entry" "${args[@]}")
if [[ "$print_only" -eq 1 ]]; then
    show "${cmd[@]}"
    exit 0
fi
exec "${cmd[@]}"
