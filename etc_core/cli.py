"""The `etc-pipeline` console script: small tools beside the Ray pipelines in pipelines/.

    etc-pipeline make-dataset --config configs/demo.yaml data.root=/tmp/data data.num_videos=24
"""
from __future__ import annotations

import sys

from etc_core.config import parse_args
from etc_core.entry import run_entry


def make_dataset(argv: list[str] | None = None) -> int:
    """Write the generated video dataset of the config's `data` section and print its summary."""
    from etc_core.data.generated import write_dataset

    cfg, _ = parse_args("Write the generated video dataset (frames, labels, flow) to data.root.", argv)
    print(write_dataset(cfg.data).summary())
    return 0


COMMANDS = {"make-dataset": make_dataset}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: etc-pipeline {{{','.join(COMMANDS)}}} [--config PATH] [section.key=value ...]",
              file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    run_entry(COMMANDS[argv[0]], argv[1:])


if __name__ == "__main__":
    main()
