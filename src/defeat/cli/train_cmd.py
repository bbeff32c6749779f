"""``defeat train CONFIG`` and ``defeat eval CONFIG --checkpoint CKPT``."""

from __future__ import annotations

import argparse
from pathlib import Path

from defeat.config import load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (defaults when omitted)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=0.01 (repeatable)")


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a detector (runs under torchrun too)")
    add_config_arguments(train)
    train.add_argument("--resume", action="store_true", help="continue from output.dir/checkpoint_last.pt")
    train.set_defaults(func=run_train)

    ev = subparsers.add_parser("eval", help="evaluate a checkpoint on the validation split (COCO metrics)")
    add_config_arguments(ev)
    ev.add_argument("--checkpoint", required=True, help="a model_final.pt / checkpoint_last.pt of train or distill")
    ev.add_argument("--out", help="folder for results.json and metrics.json (default: next to the checkpoint)")
    ev.set_defaults(func=run_eval)


def run_train(args) -> int:
    from defeat.engine import build_for_dataset, cleanup, init_distributed, load_datasets, train

    cfg = load_config(args.config, args.overrides)
    info = init_distributed(cfg.device)
    try:
        train_set, val_set = load_datasets(cfg)
        model = build_for_dataset(cfg.model, train_set.categories, cfg.seed)
        result = train(cfg, model, model, train_set, val_set, info, kind="detector", resume=args.resume)
        if info.is_main:
            print(f"final checkpoint: {result.final_checkpoint}")
            if result.metrics:
                print(f"COCO AP {100 * result.metrics['AP']:.1f} (AP50 {100 * result.metrics['AP50']:.1f})")
    finally:
        cleanup(info)
    return 0


def run_eval(args) -> int:
    from defeat.engine import cleanup, evaluate, format_stats, init_distributed, load_datasets, load_detector
    from defeat.utils import atomic_write_json

    cfg = load_config(args.config, args.overrides)
    info = init_distributed(cfg.device)
    try:
        _, val_set = load_datasets(cfg, train=False)
        model, _ = load_detector(args.checkpoint, val_set.categories, cfg.data.val_annotations)
        model.to(info.device)
        out = Path(args.out) if args.out else Path(args.checkpoint).parent
        stats = evaluate(model, val_set, info, batch_size=cfg.eval.batch_size, max_images=cfg.data.val_max_images,
                         score_thresh=cfg.eval.score_thresh, results_file=out / "results.json")
        if info.is_main:
            atomic_write_json(out / "metrics.json", stats)
            print(format_stats(stats))
            width = max(len(n) for n in stats["per_class_AP"])
            for name, ap in stats["per_class_AP"].items():
                print(f"  {name:<{width}} AP {100 * ap:5.1f}")
            print(f"wrote {out / 'results.json'} and {out / 'metrics.json'}")
    finally:
        cleanup(info)
    return 0
