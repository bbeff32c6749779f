"""Entry point of the ``defeat`` console script.

Each command lives in its own module exposing ``register(subparsers)``; the parser it adds sets
``func`` to the function that runs it. Expected user errors (bad files, bad configs) are raised as
``ValueError``/``FileNotFoundError`` and printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from defeat.cli import analyze_cmd, data_cmd, distill_cmd, export_cmd, init_cmd, predict_cmd, reproduce_cmd, train_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defeat", description="Distil object detectors with DeFeat (decoupled features and proposals)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (data_cmd, init_cmd, train_cmd, analyze_cmd, distill_cmd, export_cmd, predict_cmd, reproduce_cmd):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"defeat: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
