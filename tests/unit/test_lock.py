"""requirements.lock, the hashed lock that make install, ray_cluster.yaml and the KubeRay image install from, holds
every dependency of pyproject.toml at the pins of constraints.txt, each with its sha256."""
from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO

ENTRY = re.compile(r"^([A-Za-z0-9._-]+)==(\S+) \\\n    --hash=sha256:([0-9a-f]{64})$", re.M)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    text = (REPO / "requirements.lock").read_text()
    entries = ENTRY.findall(text)
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(body) == 2 * len(entries), "every entry is `name==version \\` then one `--hash=sha256:` line"
    return {_norm(name): version for name, version, _ in entries}


def test_the_lock_pins_every_dependency_and_extra_at_the_constraints():
    lock = _lock()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [d for extra in ("test", "infer", "sweep")
                                        for d in project["optional-dependencies"][extra]]
    for dep in wanted:
        name = _norm(re.split(r"[\[<>=!~ ;]", dep, maxsplit=1)[0])
        assert name in lock, f"{dep}: not in requirements.lock (make lock)"
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            assert lock.get(_norm(name)) == version.strip(), f"constraints.txt {line}: requirements.lock has " \
                                                             f"{lock.get(_norm(name))}"


def test_every_installer_installs_from_the_lock():
    make = (REPO / "Makefile").read_text()
    docker = (REPO / "infra" / "kuberay" / "Dockerfile").read_text()
    for text in (make, docker):
        assert "--require-hashes --no-deps -r requirements.lock" in text and "--no-deps -e ." in text
    assert "$(STAMP): pyproject.toml constraints.txt requirements.lock" in make  # a new lock reinstalls
    assert "requirements.lock" in docker.split("COPY", 2)[1]  # copied before the install that reads it
