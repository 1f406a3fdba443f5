"""What every entry point shares: logging set-up and turning project errors into one line and an exit code."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from etc_core.errors import EtcError


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines as `HH:MM:SS name: message` on stderr (entry points only; modules just get a logger)."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


def run_entry(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run main(argv); an EtcError becomes `<Class>: <message>` on stderr and its exit code (2 for config)."""
    setup_logging()
    try:
        code = main(argv)
    except EtcError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    raise SystemExit(code or 0)
