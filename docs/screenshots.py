"""Retake the MLflow UI screenshots in docs/figures/ from a store the demo wrote (headless Chromium, Playwright).

    .venv/bin/pip install -e '.[docs]'          # Playwright (its own browser downloads are not needed)
    apt-get install chromium                    # the browser it drives (or --browser PATH)
    .venv/bin/python docs/screenshots.py        # after `make demo`: reads runs/mlflow.db

Starts `mlflow ui` on 127.0.0.1 (a free port) over the store, opens the champion student's training run, its
registered version and the run's validation picture grid, saves mlflow_run.png, mlflow_model.png and
mlflow_pictures.png under --out, and stops the UI by its pid.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1440, "height": 900}
SETTLE_MS = 8000
# the UI's assistant panel opens on first load and hides a third of the page
CLOSED_ASSISTANT = ("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow ui did not answer at {url} within {timeout:.0f} s")


def find_targets(tracking_uri: str, experiment: str) -> dict:
    """Ids the pages need: the experiment, the champion student's version and the run that trained it."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"{tracking_uri}: no experiment {experiment!r} (run `make demo` first)")
    students = [m.name for m in client.search_registered_models() if m.name.startswith("etc-student-")]
    if not students:
        raise SystemExit(f"{tracking_uri}: no registered etc-student-* model (run `make demo` first)")
    version = client.get_model_version_by_alias(students[0], "champion")
    return {"experiment_id": exp.experiment_id, "model": students[0], "version": version.version,
            "run_id": version.tags.get("etc.run_id") or version.run_id}


def shoot(base: str, targets: dict, out: Path, browser: str) -> list[Path]:
    """Save the three pages as PNGs under out; returns their paths."""
    from playwright.sync_api import sync_playwright

    exp, run, ml = targets["experiment_id"], targets["run_id"], "?workflowType=machine_learning"
    pages = [("mlflow_run.png", f"{base}/#/experiments/{exp}/runs/{run}{ml}", None),
             ("mlflow_model.png", f"{base}/#/models/{targets['model']}/versions/{targets['version']}{ml}", None),
             ("mlflow_pictures.png", f"{base}/#/experiments/{exp}/runs/{run}/artifacts{ml}", _open_last_picture)]
    saved = []
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=browser, headless=True, args=["--no-sandbox"])
        page = chromium.new_page(viewport=VIEWPORT)
        page.add_init_script(CLOSED_ASSISTANT)
        for name, url, action in pages:
            page.goto(url)
            page.wait_for_load_state("load")
            page.wait_for_timeout(SETTLE_MS)  # the UI keeps polling: wait for charts and lists instead
            if action is not None:
                action(page)
            path = out / name
            page.screenshot(path=str(path))
            saved.append(path)
        chromium.close()
    return saved


def _open_last_picture(page) -> None:
    """In the run's artifact browser: open images/, then the last full-size validation grid."""
    page.get_by_text("images", exact=True).first.click()
    page.wait_for_timeout(1500)
    grids = page.get_by_text(".png", exact=False)  # the full-size PNGs; the .webp beside them are thumbnails
    grids.nth(grids.count() - 1).click()
    page.wait_for_timeout(SETTLE_MS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{REPO / 'runs' / 'mlflow.db'}")
    parser.add_argument("--experiment", default="etc-pipeline")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    parser.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args(argv)
    if not args.browser:
        raise SystemExit("no chromium on PATH: apt-get install chromium, or pass --browser PATH")
    targets = find_targets(args.tracking_uri, args.experiment)
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri,
                           "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_up(f"http://127.0.0.1:{port}/health")
        args.out.mkdir(parents=True, exist_ok=True)
        for path in shoot(f"http://127.0.0.1:{port}", targets, args.out, args.browser):
            print(path)
    finally:
        os.killpg(ui.pid, 15)  # the UI and the server workers it started, by the group of the pid we started
        ui.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
