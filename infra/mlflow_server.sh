#!/usr/bin/env bash
# Run the MLflow tracking server that a cluster's jobs share (docs/cluster.md): one writer for the backend store,
# artifacts proxied to S3 (--serve-artifacts), so clients need only MLFLOW_TRACKING_URI=http://HOST:PORT.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="$REPO/runs/mlflow-server"

usage() {
    cat <<EOF
Usage: infra/mlflow_server.sh [--backend URI] [--artifacts-destination URI] [--host HOST] [--port PORT]
                              [--allowed-hosts LIST] [--auth] [--print] [-- MLFLOW_SERVER_ARGS...]

Runs \`mlflow server --serve-artifacts\`: runs, metrics and the model registry in the backend store, artifacts
(models, pictures) written by the server to the artifacts destination.

  --backend URI                 backend store (default: sqlite:///$DATA_DIR/mlflow.db, absolute)
                                  sqlite:////abs/path/mlflow.db or a plain path: SQLite (made absolute)
                                  postgresql://USER@HOST:5432/DB: PostgreSQL (needs psycopg2-binary; put the
                                  password in PGPASSWORD or ~/.pgpass, not in the URI)
  --artifacts-destination URI   where the server stores artifacts (default: s3://\$ETC_BUCKET/etc/mlflow-artifacts
                                  when ETC_BUCKET is set, else $DATA_DIR/artifacts)
  --host HOST                   interface to bind (default: 127.0.0.1; anything else is reachable from the
                                  network and warns unless --auth is given)
  --auth                        MLflow's basic-auth app (--app-name basic-auth): every request needs a user and
                                  password. Its user store and settings go beside the backend
                                  (basic_auth.db, basic_auth.ini) unless MLFLOW_AUTH_CONFIG_PATH names an ini;
                                  the first start needs MLFLOW_AUTH_ADMIN_PASSWORD in the environment (the admin
                                  user's password, never written by this script). Clients set
                                  MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
  --port PORT                   port (default: 5000)
  --allowed-hosts LIST          Host headers the server accepts, comma-separated (for access by a DNS name)
  --print                       print the mlflow command and exit
  -h, --help                    this help

Environment (read, never written to disk): AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or an
instance profile, AWS_DEFAULT_REGION, and for an S3-compatible store (MinIO) MLFLOW_S3_ENDPOINT_URL (set from
AWS_ENDPOINT_URL when only that is set). MLFLOW (default: $REPO/.venv/bin/mlflow, else mlflow on PATH).

Examples:
  infra/mlflow_server.sh                                              # SQLite + local artifacts, 127.0.0.1:5000
  MLFLOW_AUTH_ADMIN_PASSWORD=... infra/mlflow_server.sh --auth --host 10.0.0.5      # a cluster's server
  infra/mlflow_server.sh --artifacts-destination s3://my-bucket/mlflow
  infra/mlflow_server.sh --backend postgresql://mlflow@db.internal:5432/mlflow \\
      --artifacts-destination s3://my-bucket/mlflow --host 10.0.0.5 --allowed-hosts mlflow.internal:5000
EOF
}

# shellcheck source=infra/lib/common.sh
source "$REPO/infra/lib/common.sh"

backend="sqlite:///$DATA_DIR/mlflow.db"
artifacts=""
host="127.0.0.1"
port="5000"
allowed_hosts=""
auth=0
print_only=0
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --backend) [[ $# -ge 2 ]] || die "--backend needs a URI"; backend="$2"; shift 2 ;;
        --artifacts-destination) [[ $# -ge 2 ]] || die "--artifacts-destination needs a URI"; artifacts="$2"; shift 2 ;;
        --host) [[ $# -ge 2 ]] || die "--host needs a value"; host="$2"; shift 2 ;;
        --port) [[ $# -ge 2 ]] || die "--port needs a value"; port="$2"; shift 2 ;;
        --allowed-hosts) [[ $# -ge 2 ]] || die "--allowed-hosts needs a value"; allowed_hosts="$2"; shift 2 ;;
        --auth) auth=1; shift ;;
        --print) print_only=1; shift ;;
        --) shift; extra=("$@"); break ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

[[ "$port" =~ ^[0-9]+$ ]] || die "--port: not a number: $port"

# The backend: SQLite paths become absolute (four slashes), PostgreSQL URIs pass through (psycopg2 named).
case "$backend" in
    postgresql://*|postgresql+*://*)
        [[ "$backend" != *:*:*@* ]] || echo "mlflow_server.sh: warning: the --backend URI holds a password;" \
            "it shows in ps and shell history (use PGPASSWORD or ~/.pgpass)" >&2
        # SQLAlchemy 2 reads a bare postgresql:// as psycopg 3; the driver the project installs (the `server`
        # extra) is psycopg2
        [[ "$backend" != postgresql://* ]] || backend="postgresql+psycopg2://${backend#postgresql://}" ;;
    sqlite:///*) path="${backend#sqlite:///}" ;;
    *://*) die "--backend: expected sqlite:///PATH, a plain path or postgresql://..., got $backend" ;;
    *) path="$backend" ;;
esac
if [[ -n "${path:-}" ]]; then
    [[ "$path" = /* ]] || path="$PWD/$path"
    backend="sqlite:///$path"
fi

if [[ -z "$artifacts" ]]; then
    if [[ -n "${ETC_BUCKET:-}" ]]; then artifacts="s3://$ETC_BUCKET/etc/mlflow-artifacts"; else artifacts="$DATA_DIR/artifacts"; fi
fi
if [[ "$artifacts" != *://* ]]; then
    [[ "$artifacts" = /* ]] || artifacts="$PWD/$artifacts"
fi

case "$host" in
    127.0.0.1|localhost|::1) ;;
    *) [[ "$auth" -eq 1 ]] || echo "mlflow_server.sh: warning: binding $host without --auth: anyone who can" \
            "reach it can read and write runs and models; add --auth (MLflow basic-auth) or keep it behind an" \
            "authenticating proxy" >&2 ;;
esac
auth_ini=""
if [[ "$auth" -eq 1 && -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]]; then
    auth_dir="$DATA_DIR"
    [[ "$backend" != sqlite:///* ]] || auth_dir="$(dirname "${backend#sqlite:///}")"
    auth_ini="$auth_dir/basic_auth.ini"
fi

mlflow_bin="${MLFLOW:-$REPO/.venv/bin/mlflow}"
[[ -x "$mlflow_bin" ]] || mlflow_bin="mlflow"

cmd=("$mlflow_bin" server --backend-store-uri "$backend" --serve-artifacts --artifacts-destination "$artifacts"
     --host "$host" --port "$port")
[[ -z "$allowed_hosts" ]] || cmd+=(--allowed-hosts "$allowed_hosts")
[[ "$auth" -eq 0 ]] || cmd+=(--app-name basic-auth)
cmd+=("${extra[@]}")

if [[ "$print_only" -eq 1 ]]; then
    [[ -z "$auth_ini" ]] || echo "MLFLOW_AUTH_CONFIG_PATH=$auth_ini"
    show "${cmd[@]}"
    exit 0
fi

export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
if [[ -z "${MLFLOW_S3_ENDPOINT_URL:-}" && -n "${AWS_ENDPOINT_URL:-}" ]]; then
    export MLFLOW_S3_ENDPOINT_URL="$AWS_ENDPOINT_URL"  # MLflow reads its own variable, not boto3's
fi
command -v "$mlflow_bin" >/dev/null || die "mlflow not found: run make install, or set MLFLOW=/path/to/mlflow"
if [[ "$backend" = sqlite:///* ]]; then
    mkdir -p "$(dirname "${backend#sqlite:///}")"
elif ! "$(dirname "$(command -v "$mlflow_bin")")/python" -c "import psycopg2" 2>/dev/null; then
    die "the PostgreSQL backend needs psycopg2: pip install psycopg2-binary into the venv that runs mlflow"
fi
[[ "$artifacts" = *://* ]] || mkdir -p "$artifacts"
if [[ -n "$auth_ini" ]]; then  # settings only: the admin password stays in MLFLOW_AUTH_ADMIN_PASSWORD
    mkdir -p "$(dirname "$auth_ini")"
    [[ -f "$auth_ini" ]] || printf '%s\n' "[mlflow]" "default_permission = READ" \
        "database_uri = sqlite:///$(dirname "$auth_ini")/basic_auth.db" "admin_username = admin" \
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" > "$auth_ini"
    export MLFLOW_AUTH_CONFIG_PATH="$auth_ini"
    [[ -f "$(dirname "$auth_ini")/basic_auth.db" || -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]] ||
        die "--auth: the first start needs MLFLOW_AUTH_ADMIN_PASSWORD (the admin user's password) in the environment"
fi
echo "MLflow server on http://$host:$port (backend ${backend%%://*}, artifacts $artifacts)" >&2
exec "${cmd[@]}"
