"""Entry point of the ``defeat`` console script.

Each command lives in its own module exposing ``register(subparsers)``; the parser it adds sets
``func`` to the function that runs it. Expected user errors (bad files, bad configs) are raised as
``ValueError``/``FileNotFoundError`` and printed as one line, without a traceback (exit code 2; a full or
read-only disk is a ``WriteError``, a ``ValueError`` too). A training stopped by SIGTERM / SIGINT prints the
command that resumes it and exits with 128 + the signal number (143 / 130), as the shell does.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from defeat.cli import (
    analyze_cmd,
    compare_cmd,
    data_cmd,
    distill_cmd,
    export_cmd,
    init_cmd,
    predict_cmd,
    reproduce_cmd,
    train_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defeat", description="Distil object detectors with DeFeat (decoupled features and proposals)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (
        data_cmd,
        init_cmd,
        train_cmd,
        analyze_cmd,
        distill_cmd,
        export_cmd,
        predict_cmd,
        reproduce_cmd,
        compare_cmd,
    ):
        module.register(subparsers)
    return parser


def resume_command(argv: list[str]) -> str:
    """The command line that continues a stopped run: ``train``/``distill`` with ``--resume``; ``reproduce`` as it
    was (it resumes by itself), as ``compare``; under torchrun inside the same launcher."""
    args = list(argv)
    if args and args[0] in ("train", "distill") and "--resume" not in args:
        args.append("--resume")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        nproc = os.environ.get("LOCAL_WORLD_SIZE", "N")
        return f"torchrun --nproc_per_node={nproc} [your other torchrun options] -m defeat.cli.main {shlex.join(args)}"
    return f"defeat {shlex.join(args)}"


def main(argv: list[str] | None = None) -> int:
    from defeat.engine.stop import TrainingStopped

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrainingStopped as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"defeat: {stop}; resume with: {resume_command(argv)}", file=sys.stderr, flush=True)
        return stop.code
    except (ValueError, FileNotFoundError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"defeat: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
