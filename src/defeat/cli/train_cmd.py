"""``defeat train CONFIG`` and ``defeat eval CONFIG --checkpoint CKPT``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (defaults when omitted)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=0.01 (repeatable)",
    )


def add_estimate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="time a few real steps, print s/step, the schedule's wall time and peak memory, exit (writes nothing)",
    )
    parser.add_argument("--estimate-steps", type=int, default=5, metavar="N", help="timed steps (after 2 warm-up)")


def print_estimate(timing) -> int:
    if is_main_process():
        print(timing.summary())
    return 0


FORCE_HELP = "start over in an output.dir that holds a run: the old run is moved to <dir>.old-<date-time>"


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a detector (runs under torchrun too)")
    add_config_arguments(train)
    train.add_argument("--resume", action="store_true", help="continue from output.dir/checkpoint_last.pt")
    train.add_argument("--force", action="store_true", help=FORCE_HELP)
    add_estimate_arguments(train)
    train.set_defaults(func=run_train)

    ev = subparsers.add_parser("eval", help="evaluate a checkpoint on the validation split (COCO metrics)")
    add_config_arguments(ev)
    ev.add_argument(
        "--checkpoint",
        default=None,
        help="a model_final.pt / checkpoint_last.pt of train or distill "
        "(default: the config's model with its model.weights, e.g. a torchvision COCO file)",
    )
    ev.add_argument("--out", help="folder for results.json and metrics.json (default: next to the checkpoint)")
    ev.set_defaults(func=run_eval)


def is_main_process() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def run_train(args) -> int:
    from defeat import api

    cfg = api.load_config(args.config, args.overrides)
    if args.estimate:
        return print_estimate(api.estimate(cfg, steps=args.estimate_steps))
    result = api.train(cfg, resume=args.resume, force=args.force)
    if is_main_process():
        print(f"final checkpoint: {result.final_checkpoint}")
        if result.metrics:
            print(f"COCO AP {100 * result.metrics['AP']:.1f} (AP50 {100 * result.metrics['AP50']:.1f})")
    return 0


def run_eval(args) -> int:
    from defeat import api
    from defeat.engine import format_stats

    cfg = api.load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent if args.checkpoint else Path(cfg.output.dir)
    stats = api.evaluate(cfg, args.checkpoint, out)
    if is_main_process() and stats:
        print(format_stats(stats))
        width = max(len(n) for n in stats["per_class_AP"])
        for name, ap in stats["per_class_AP"].items():
            print(f"  {name:<{width}} AP {100 * ap:5.1f}")
        print(f"wrote {out / 'results.json'} and {out / 'metrics.json'}")
    return 0
