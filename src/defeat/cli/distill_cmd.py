"""``defeat distill CONFIG``: train a student detector from a frozen teacher with DeFeat (see docs/distill.md)."""

from __future__ import annotations

from pathlib import Path

from defeat.cli.train_cmd import (
    FORCE_HELP,
    add_config_arguments,
    add_estimate_arguments,
    is_main_process,
    print_estimate,
)

YOLO_STUDENT = "student.pt"  # what a YOLO run leaves (defeat.engine.yolo.STUDENT_FILE; not imported: no ultralytics)


def register(subparsers) -> None:
    distill = subparsers.add_parser("distill", help="distil a teacher into a student with DeFeat (runs under torchrun)")
    add_config_arguments(distill)
    distill.add_argument("--resume", action="store_true", help="continue from output.dir/checkpoint_last.pt")
    distill.add_argument("--force", action="store_true", help=FORCE_HELP)
    distill.add_argument(
        "--ignore-teacher-check",
        action="store_true",
        help="start even when the teacher fails its checks (AP below distill.teacher_min_ap, weight keys that do not "
        "fit): the same as --set distill.force=true",
    )
    add_estimate_arguments(distill)
    distill.set_defaults(func=run_distill)


def run_distill(args) -> int:
    from defeat import api

    overrides = list(args.overrides) + (["distill.force=true"] if args.ignore_teacher_check else [])
    cfg = api.load_config(args.config, overrides)
    if args.estimate:
        return print_estimate(api.estimate(cfg, distill=True, steps=args.estimate_steps))
    result = api.distill(cfg, resume=args.resume, force=args.force)
    if is_main_process():
        print(f"final checkpoint: {result.final_checkpoint}")
        if result.metrics:
            print(summary_line(result.metrics, result.teacher_metrics))
        for note in result.notes:
            if note.startswith("warning:"):
                print(note)
        final = Path(result.final_checkpoint)
        if final.name == YOLO_STUDENT:
            print(f"{final} is a plain Ultralytics checkpoint: YOLO(path) loads it, its own export converts it")
        else:
            print(f"export the student with: defeat export --checkpoint {final} --out student.pt")
    return 0


def summary_line(student: dict, reference: dict) -> str:
    """Teacher, baseline (when known) and distilled student side by side, on the same validation images."""
    parts = []
    if "teacher_AP" in reference:
        parts.append(f"teacher AP {100 * reference['teacher_AP']:.1f} (AP50 {100 * reference['teacher_AP50']:.1f})")
    if "baseline_AP" in reference:
        parts.append(f"baseline AP {100 * reference['baseline_AP']:.1f} (AP50 {100 * reference['baseline_AP50']:.1f})")
    line = f"distilled student COCO AP {100 * student['AP']:.1f} (AP50 {100 * student['AP50']:.1f})"
    if "baseline_AP" in reference:
        line += f", {100 * (student['AP'] - reference['baseline_AP']):+.1f} AP vs baseline"
    return " | ".join(parts + [line])
