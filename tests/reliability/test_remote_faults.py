"""Remote stores that fail: an unreachable S3 endpoint, refused S3 credentials, an unreachable MLflow server.

Each gives one line naming the endpoint (the last stderr line, `<ErrorClass>: <message>`), exit code 2 (found before
any work starts), and leaves nothing behind: no shards, no dataset, no MLflow store or run. Transient faults are retried a bounded number of
times with backoff. Real boto3 against a real moto_server process (with its IAM auth switched on) and real MLflow
clients; nothing is mocked.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TINY_DATA
from tests.reliability._inputs import (ETC, CountingServer, assert_one_line_error, closed_port, outputs_under, run,
                                       write_checkpoint, write_shard_set)

pytestmark = pytest.mark.integration

AWS = {"AWS_ACCESS_KEY_ID": "AKIAETCTESTKEY000001", "AWS_SECRET_ACCESS_KEY": "etc-test-secret",
       "AWS_DEFAULT_REGION": "us-east-1"}


def _precompute(tmp_path: Path, *extra: str) -> list[str]:
    """pipelines/precompute_flow.py with every output of the run inside tmp_path/out."""
    out = tmp_path / "out"
    return [sys.executable, "pipelines/precompute_flow.py", f"data.root={out}/data", *TINY_DATA,
            f"mlflow.tracking_uri=sqlite:///{out}/mlflow.db", f"mlflow.artifact_root={out}/artifacts",
            f"shards.uri={out}/shards", *extra]


# ------------------------------------------------------------------------------------------------------ S3

def test_s3_transient_faults_are_retried_a_bounded_number_of_times(monkeypatch):
    from etc_core.storage import uri as storage

    for key, value in AWS.items():
        monkeypatch.setenv(key, value)
    with CountingServer() as server:  # accepts, then drops every connection: a flaky endpoint
        endpoint = f"http://127.0.0.1:{server.port}"
        start = time.perf_counter()
        with pytest.raises(storage.UriError) as err:
            storage.size("s3://etc-flaky/shards/manifest.json", endpoint)
        elapsed = time.perf_counter() - start
    assert server.connections == 4, "boto3 standard mode: the first attempt and max_attempts=3 retries"
    assert elapsed < 30
    assert "s3://etc-flaky/shards/manifest.json: head failed" in str(err.value) and endpoint in str(err.value)


def test_unreachable_s3_endpoint_is_one_line_before_anything_starts(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    start = time.perf_counter()
    proc = run(_precompute(tmp_path, "shards.uri=s3://etc-unreachable/shards", f"s3.endpoint_url={endpoint}"),
               env=AWS, drop=("AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"))
    line = assert_one_line_error(proc, "StorageError", "s3://etc-unreachable/shards/manifest.json",
                                 f'Could not connect to the endpoint URL: "{endpoint}/', code=2)
    assert time.perf_counter() - start < 60, line
    assert outputs_under(tmp_path / "out") == []  # no dataset, no MLflow store, no run: it failed before them


@pytest.fixture(scope="module")
def moto_auth(tmp_path_factory):
    """A moto_server process on 127.0.0.1 that checks signatures: an IAM user `etc` (allowed s3:*) with a key, a
    bucket `etc-auth` holding a shard set; then auth is switched on for every later request. Its own process: the
    switch is a module global of moto and must not reach the session's shared moto server."""
    import boto3

    port = closed_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        setup = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "setup",
                 "aws_secret_access_key": "setup", "aws_session_token": None}
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="etc")
        iam.put_user_policy(UserName="etc", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="etc")["AccessKey"]
        boto3.client("s3", **setup).create_bucket(Bucket="etc-auth")
        with pytest.MonkeyPatch.context() as env:  # the project's S3 client reads credentials from the environment
            env.setenv("AWS_ACCESS_KEY_ID", "setup")
            env.setenv("AWS_SECRET_ACCESS_KEY", "setup")
            env.delenv("AWS_SESSION_TOKEN", raising=False)
            write_shard_set("s3://etc-auth/shards", endpoint_url=endpoint)
        request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).close()  # from now on every request is authenticated
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _objects(endpoint: str, key_id: str, secret: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key_id,
                      aws_secret_access_key=secret, aws_session_token=None)
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="etc-auth").get("Contents", []))


def test_wrong_secret_key_is_refused_in_one_line_and_writes_nothing(moto_auth, tmp_path):
    endpoint, key_id, secret = moto_auth
    before = _objects(endpoint, key_id, secret)  # the right key reads the bucket: the store itself is fine
    assert "shards/manifest.json" in before
    env = {**AWS, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret + "-wrong"}
    proc = run(_precompute(tmp_path, "shards.uri=s3://etc-auth/shards-new", f"s3.endpoint_url={endpoint}"),
               env=env, drop=("AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"))
    assert_one_line_error(proc, "StorageError", "s3://etc-auth/shards-new/manifest.json",
                          "403: check the AWS credentials", code=2)
    assert secret not in proc.stdout + proc.stderr
    assert _objects(endpoint, key_id, secret) == before  # nothing written to the bucket
    assert outputs_under(tmp_path / "out") == []


def test_unknown_access_key_is_refused_when_reading_shards(moto_auth, tmp_path):
    endpoint, key_id, secret = moto_auth
    ckpt = write_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "eval.json"
    env = {**AWS, "AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000", "AWS_ENDPOINT_URL": endpoint}
    proc = run([*ETC, "evaluate", "--model", str(ckpt), "--shards", "s3://etc-auth/shards", "--json", str(out)],
               env=env, drop=("AWS_SESSION_TOKEN",))
    assert_one_line_error(proc, "StorageError", "s3://etc-auth/shards/manifest.json", "403: check the AWS credentials",
                          code=2)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------ MLflow

def test_mlflow_server_faults_are_retried_a_bounded_number_of_times(monkeypatch):
    from etc_core.config import MlflowConfig
    from etc_core.errors import TrackingError
    from etc_core.tracking import mlflow as tracking

    for key in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)  # the project's defaults apply (and are undone after the test)
    with CountingServer() as server:
        uri = f"http://127.0.0.1:{server.port}"
        start = time.perf_counter()
        with pytest.raises(TrackingError) as err:
            tracking.setup(MlflowConfig(tracking_uri=uri))
        elapsed = time.perf_counter() - start
    assert server.connections == 4, "one attempt and MLFLOW_HTTP_REQUEST_MAX_RETRIES=3 retries"
    assert 2 <= elapsed < 30, "retried with backoff (0, 2, 4 s), not at once and not for minutes"
    assert str(err.value).startswith(f"mlflow.tracking_uri {uri}: cannot use the MLflow store after 3 retries")


def test_mlflow_retry_settings_of_the_user_win(monkeypatch):
    from etc_core.config import MlflowConfig
    from etc_core.errors import TrackingError
    from etc_core.tracking import mlflow as tracking

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with CountingServer() as server:
        with pytest.raises(TrackingError, match="after 0 retries"):
            tracking.setup(MlflowConfig(tracking_uri=f"http://127.0.0.1:{server.port}"))
    assert server.connections == 1


@pytest.mark.slow
def test_unreachable_mlflow_server_is_one_line_naming_it_without_its_password(tmp_path):
    port = closed_port()
    uri = f"http://etc:mlflow-pass-0042@127.0.0.1:{port}"
    start = time.perf_counter()
    proc = run(_precompute(tmp_path, f"mlflow.tracking_uri={uri}"),
               drop=tuple(f"MLFLOW_HTTP_REQUEST_{k}" for k in ("MAX_RETRIES", "BACKOFF_FACTOR", "TIMEOUT")))
    assert_one_line_error(proc, "TrackingError", f"mlflow.tracking_uri http://etc:***@127.0.0.1:{port}",
                          "after 3 retries", "Connection refused", code=2)
    assert time.perf_counter() - start < 90
    assert "mlflow-pass-0042" not in proc.stdout + proc.stderr
    assert outputs_under(tmp_path / "out") == []  # no dataset, no shards: it failed before Ray and the flow stage
