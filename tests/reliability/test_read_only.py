"""`etc-pipeline predict / evaluate / export` check before they work, and a read writes nothing.

Order: the inputs and outputs first, then the MLflow store (it must exist: a read creates no store; a server is asked
with bounded retries), then the model. Each failure is one line and exit 2, and leaves no file or folder behind.
Real processes, real MLflow clients and real closed ports; nothing is mocked.
"""
from __future__ import annotations

import time

import pytest

from etc_core.cli import main
from tests.reliability._inputs import (ETC, CountingServer, assert_one_line_error, closed_port, files_under, frames_dir,
                                      run)

pytestmark = pytest.mark.integration

HINT = "set MLFLOW_TRACKING_URI or mlflow.tracking_uri=URI to use another store"
HTTP_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT")


def _cli(capsys, *argv) -> tuple[int, list[str]]:
    """Run `etc-pipeline ARGV` in this process: (exit code, the non-empty stderr lines)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_predict_against_a_dead_tracking_server_is_one_line_exit_2_and_leaves_nothing(tmp_path):
    frames = frames_dir(tmp_path / "in")
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.perf_counter()
    proc = run([*ETC, "predict", "--model", "models:/nope@champion", "--input", str(frames), "--out", "out",
                f"mlflow.tracking_uri={uri}"], cwd=tmp_path,
               drop=("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"))
    elapsed = time.perf_counter() - start
    # a read asks the server's host for a connection once, before any request MLflow would retry
    assert_one_line_error(proc, "TrackingError", f"mlflow.tracking_uri {uri}: cannot use the MLflow store: its server "
                          f"takes no connection (Connection refused); {HINT}", code=2)
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1 and proc.stdout == "", proc.stderr
    assert files_under(tmp_path) == [f"in/{t:06d}.png" for t in range(3)]  # no out/, no store, no mlruns/
    assert elapsed < 15, "imports and one refused connection, not MLflow's retries (issue 34: within 15 s)"


@pytest.mark.parametrize("command, args", [
    ("predict", ["--input", "{frames}", "--out", "out"]),
    ("evaluate", ["--input", "{frames}", "--flow-model", "dis", "--json", "out/table.json"]),
    ("export", ["--out", "out", "--format", "torchscript"]),
])
def test_reading_the_default_store_creates_none(command, args, tmp_path, monkeypatch, capsys):
    frames = frames_dir(tmp_path / "in")
    monkeypatch.chdir(tmp_path)  # the default store is runs/mlflow.db here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = [a.replace("{frames}", str(frames)) for a in args]
    code, err = _cli(capsys, command, "--model", "models:/nope@champion", *argv)
    assert code == 2
    assert err == [f"TrackingError: mlflow.tracking_uri sqlite:///{tmp_path}/runs/mlflow.db: no MLflow store there "
                   f"(no such file; a read creates none); {HINT}"]
    assert files_under(tmp_path) == [f"in/{t:06d}.png" for t in range(3)] and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command, args, line", [
    ("predict", ["--input", "{tmp}/nope.mp4", "--out", "{tmp}/out"], "InputError: {tmp}/nope.mp4: no such video"),
    ("predict", ["--input", "{tmp}/in", "--out", "{tmp}/in/000000.png"],
     "StorageError: --out {tmp}/in/000000.png: a file, not a folder"),
    ("predict", ["--input", "{tmp}/in", "--out", "{tmp}/out", "--batch-size", "0"],
     "ConfigError: --batch-size 0: must be at least 1"),
    ("evaluate", ["--shards", "{tmp}/none"], "ShardError: {tmp}/none/manifest.json: not found"),
    ("evaluate", ["--input", "{tmp}/in", "--flow-model", "dis", "--json", "{tmp}/in/000000.png/t.json"],
     "StorageError: --json {tmp}/in/000000.png/t.json: {tmp}/in/000000.png is a file, not a folder"),
    ("export", ["--out", "{tmp}/out", "--format", "onnx", "--opset", "12"], "ConfigError: --opset 12: "),
    ("export", ["--out", "{tmp}/in/000000.png/x", "--format", "torchscript"],
     "StorageError: --out {tmp}/in/000000.png/x: {tmp}/in/000000.png is a file, not a folder"),
])
def test_inputs_and_outputs_are_checked_before_the_store(command, args, line, tmp_path, capsys):
    frames_dir(tmp_path / "in")
    dead = f"mlflow.tracking_uri=http://127.0.0.1:{closed_port()}"  # reached only if the order were wrong
    code, err = _cli(capsys, command, "--model", "models:/nope@champion",
                     *[a.replace("{tmp}", str(tmp_path)) for a in args], dead)
    assert code == 2 and len(err) == 1 and err[0].startswith(line.replace("{tmp}", str(tmp_path))), err
    assert files_under(tmp_path) == [f"in/{t:06d}.png" for t in range(3)]


def test_the_model_loading_path_bounds_mlflow_retries(monkeypatch):
    from etc_core.infer import InputError
    from etc_core.infer.load import load_any

    for key in HTTP_ENV:
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)  # unset for the test, restored after it: the project's bound applies
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")  # yours wins: no sleeping here
    with CountingServer() as server:
        uri = f"http://127.0.0.1:{server.port}"
        with pytest.raises(InputError, match=rf"^models:/nope@champion: cannot resolve in the MLflow registry at "
                                             rf"{uri} .*; {HINT}$"):
            load_any("models:/nope@champion", uri)
    # open_store's one connection (the server's host answers), then one attempt and the project's 3 retries (MLflow's
    # own default: 7)
    assert server.connections == 1 + 4


def test_a_missing_or_empty_local_store_is_named_and_left_as_it_was(tmp_path):
    from etc_core.errors import TrackingError
    from etc_core.tracking.mlflow import open_store

    for uri, what in ((f"sqlite:///{tmp_path}/a/mlflow.db", "no such file"), (f"sqlite:///{tmp_path}", "not a file"),
                      (f"file://{tmp_path}/mlruns", "no such folder"), (str(tmp_path / "mlruns"), "no such folder"),
                      (f"sqlite:///{tmp_path}/empty.db", "an empty file")):
        (tmp_path / "empty.db").touch()  # what a read used to leave behind: MLflow would make its tables in it
        with pytest.raises(TrackingError, match=rf"^mlflow.tracking_uri {uri}: no MLflow store there \({what}; "):
            open_store(uri)
    assert files_under(tmp_path) == ["empty.db"] and (tmp_path / "empty.db").stat().st_size == 0
