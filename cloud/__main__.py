"""`python -m cloud --config FILE`: run the cloud service (see `cloud.server`).

Exit status: 0 after a clean stop, 1 on a runtime failure, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cloud.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cloud", description="Run the homeedge cloud service."
    )
    parser.add_argument("--config", type=Path, help="TOML config file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"homeedge cloud: {exc}", file=sys.stderr)
        return 2
    # Imported only now: the server pulls in the web and database stacks, and a config error
    # should answer at once.
    from cloud.server import run_single, run_workers, setup_logging

    setup_logging(config)
    if config.workers > 1:
        try:
            return run_workers(config)
        except ConfigError as exc:
            print(f"homeedge cloud: {exc}", file=sys.stderr)
            return 2
    return run_single(config)


if __name__ == "__main__":
    raise SystemExit(main())
