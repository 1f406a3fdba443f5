"""Write requirements.lock, the hashed lock of the whole environment, from pip's resolution (`make lock`).

    python -m pip install --dry-run --ignore-installed --report report.json -c constraints.txt \
        torch==2.14.1 torchvision==0.29.1 -e '.[test,infer,sweep,server]'
    python infra/lock.py report.json requirements.lock

Every package pip would install, at the version and with the sha256 of the file it chose (the project itself
left out); `make install`, ray_cluster.yaml and infra/kuberay/Dockerfile install it with
`pip install --require-hashes --no-deps -r requirements.lock`, so a file that differs from the tested one is
refused. The files are those for CPython 3.11 on Linux x86_64 (the machines those three set up).
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

HEADER = """\
# The hashed lock of the whole environment (the core dependencies, the test, infer, sweep and server extras) for CPython
# 3.11 on Linux x86_64: regenerate with `make lock` after changing pyproject.toml or constraints.txt
# (infra/lock.py). Install: pip install --require-hashes --no-deps -r requirements.lock, then the project with
# pip install --no-deps -e .
"""


def lock_lines(report: dict) -> list[str]:
    """`name==version --hash=sha256:...` for each package of a pip install report, sorted by name."""
    lines = []
    for item in report["install"]:
        info, meta = item["download_info"], item["metadata"]
        if info.get("dir_info") is not None:  # the project itself (editable), installed on top
            continue
        hashes = info.get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise SystemExit(f"lock: {meta['name']} {meta['version']} ({info.get('url')}) has no sha256 in the report")
        lines.append(f"{meta['name']}=={meta['version']} \\\n    --hash=sha256:{hashes['sha256']}")
    return sorted(lines, key=str.lower)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    if platform.system() != "Linux" or platform.machine() != "x86_64" or sys.version_info[:2] != (3, 11):
        print(f"lock: run on CPython 3.11, Linux x86_64 (this is {platform.python_version()}, {platform.system()} "
              f"{platform.machine()}): the lock names that platform's files", file=sys.stderr)
        return 2
    report, out = Path(argv[0]), Path(argv[1])
    lines = lock_lines(json.loads(report.read_text()))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(HEADER + "\n".join(lines) + "\n")
    tmp.replace(out)
    print(f"lock: {len(lines)} packages in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
