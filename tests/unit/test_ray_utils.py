"""init_ray keeps a local Ray on 127.0.0.1: a caller that imported Ray before the loopback setting gets one line,
and the entry points import nothing that loads Ray before they call init_ray."""
from __future__ import annotations

import ast
import os
import subprocess
import sys


from etc_core.ray_utils import LOOPBACK_VAR
from tests.conftest import REPO


def test_ray_imported_before_the_loopback_setting_is_one_line():
    # in a fresh interpreter: this test process may already hold the suite's session Ray (tests/conftest.py)
    code = ("import ray, sys\n"  # as a caller that imported Ray first would have
            "from etc_core.config import RayConfig\n"
            "from etc_core.ray_utils import init_ray\n"
            "assert not ray.is_initialized()\n"
            "try:\n"
            "    init_ray(RayConfig(num_cpus=1))\n"
            "except RuntimeError as err:\n"
            "    print(err)\n"
            "    sys.exit(0 if not ray.is_initialized() else 3)\n"
            "sys.exit(4)\n")
    env = {k: v for k, v in os.environ.items() if k not in (LOOPBACK_VAR, "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    message = proc.stdout.strip()
    assert "\n" not in message and f"{LOOPBACK_VAR}=0" in message and "before Ray is imported" in message


def _imports_before_init_ray(path) -> list[str]:
    """The modules main() of an entry point imports before its init_ray(...) call, in order."""
    main = next(node for node in ast.parse(path.read_text()).body
                if isinstance(node, ast.FunctionDef) and node.name == "main")
    modules = []
    for statement in main.body:
        if any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "init_ray" for n in ast.walk(statement)):
            return modules
        modules += [n.module for n in ast.walk(statement) if isinstance(n, ast.ImportFrom)]
        modules += [a.name for n in ast.walk(statement) if isinstance(n, ast.Import) for a in n.names]
    raise AssertionError(f"{path}: main() never calls init_ray")


def test_entry_points_load_ray_only_after_init_ray():
    entries = [p for p in sorted((REPO / "pipelines").glob("*.py")) if "init_ray(" in p.read_text()]
    assert {p.name for p in entries} >= {"full.py", "precompute_flow.py", "sweep.py", "train_teacher.py"}
    # the pipeline modules themselves, what main() imports before init_ray, and the checks it runs there (the
    # preflight module's function-level imports); all in one fresh interpreter without the loopback setting
    modules = [f"pipelines.{p.stem}" for p in entries]
    modules += [m for p in entries for m in _imports_before_init_ray(p)]
    preflight = ast.parse((REPO / "etc_core" / "preflight.py").read_text())
    modules += [n.module for n in ast.walk(preflight) if isinstance(n, ast.ImportFrom)]
    code = ("import importlib, sys\n"
            f"for m in {sorted(set(modules))!r}:\n"
            "    importlib.import_module(m)\n"
            "    assert 'ray' not in sys.modules, m\n")
    env = {k: v for k, v in os.environ.items() if k != LOOPBACK_VAR}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
