"""``defeat distill CONFIG``: train a student detector from a frozen teacher with DeFeat (see docs/distill.md)."""

from __future__ import annotations

from pathlib import Path

from defeat.cli.train_cmd import add_config_arguments, is_main_process


def register(subparsers) -> None:
    distill = subparsers.add_parser("distill", help="distil a teacher into a student with DeFeat (runs under torchrun)")
    add_config_arguments(distill)
    distill.add_argument("--resume", action="store_true", help="continue from output.dir/checkpoint_last.pt")
    distill.add_argument("--force", action="store_true",
                         help="start even when the teacher fails its sanity check (same as distill.force=true)")
    distill.set_defaults(func=run_distill)


def run_distill(args) -> int:
    from defeat import api

    overrides = list(args.overrides) + (["distill.force=true"] if args.force else [])
    result = api.distill(api.load_config(args.config, overrides), resume=args.resume)
    if is_main_process():
        print(f"final checkpoint: {result.final_checkpoint}")
        if result.metrics:
            side = (f" | teacher AP {100 * result.teacher_metrics['teacher_AP']:.1f}"
                    if result.teacher_metrics else "")
            print(f"student COCO AP {100 * result.metrics['AP']:.1f} (AP50 {100 * result.metrics['AP50']:.1f}){side}")
        print(f"export the student with: defeat export {Path(result.final_checkpoint)} --out student.pt")
    return 0
