"""``defeat analyze channel-distance`` and ``defeat analyze grad-norm``: teacher-student feature analyses.

Both commands read a COCO split given as ``--images-dir DIR --annotations JSON`` and pick ``--images N``
images of it at random (seeded by ``--seed``); they call :func:`defeat.api.channel_distance` and
:func:`defeat.api.grad_norm`.
"""

from __future__ import annotations

import argparse
import re

from defeat.config import FEATURE_MODES

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
LOSSES = ("detection", "distillation", "sum")


def _add_data_arguments(p: argparse.ArgumentParser, split: str, default_images: int) -> None:
    p.add_argument("--images-dir", required=True, help=f"image folder of the {split} split")
    p.add_argument("--annotations", required=True, help=f"COCO instances JSON of the {split} split")
    p.add_argument(
        "--images",
        type=int,
        default=default_images,
        help=f"how many images to pick at random (default {default_images})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the image choice (default 0)")
    p.add_argument(
        "--mask",
        choices=("all", "assigned"),
        default="all",
        help="object region on a level: 'all' = every GT box projected to the level (default); "
        "'assigned' = only the boxes DeFeat's level rule assigns to it (the distiller's mask)",
    )
    p.add_argument("--level-k0", type=int, default=4, help="k0 of the level rule for --mask assigned (default 4)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _parse_students(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--student expects NAME=CHECKPOINT, got {item!r}")
        if not _NAME.match(name):
            raise ValueError(f"--student: name {name!r} may only use letters, digits, '_', '-' and '.'")
        if name in out:
            raise ValueError(f"--student: name {name!r} is given twice; names must be unique")
        out[name] = path
    return out


def _data_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        images=args.images, seed=args.seed, mask=args.mask, level_k0=args.level_k0, device=args.device, quiet=args.quiet
    )


# ------------------------------------------------------------------------------------------ channel-distance
def run_channel_distance(args: argparse.Namespace) -> int:
    from defeat import api

    summary = api.channel_distance(
        args.teacher,
        _parse_students(args.student),
        args.images_dir,
        args.annotations,
        args.out,
        level=args.level,
        student_feature=args.student_feature,
        baseline=args.baseline,
        **_data_kwargs(args),
    )
    for warning in summary["warnings"]:
        print(f"warning: {warning}")
    if not args.quiet:
        baseline = summary["meta"]["baseline"]
        for row in summary["rows"]:
            ratio = "" if row["ratio_to_baseline"] is None else f"  x{row['ratio_to_baseline']:.3f} of {baseline}"
            print(
                f"{row['student']:>16} [{row['mode']}, {row['feature']}] {row['region']:>10}: "
                f"{row['mean_distance']:.4f}{ratio}"
            )
        print(f"wrote {args.out}")
    return 0


def register_channel_distance(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "channel-distance",
        help="per-channel teacher-student distance in object vs background regions",
        description="Per-channel mean |teacher - student| of one FPN level over object and background pixels of "
        "N random images (DeFeat supplementary, Fig. 1): one panel per student and a summary table.",
    )
    p.add_argument("--teacher", required=True, help="teacher checkpoint (kind 'detector')")
    p.add_argument(
        "--student",
        required=True,
        nargs="+",
        metavar="NAME=CHECKPOINT",
        help="students: 'detector' (no KD) or 'distill' checkpoints, with unique names",
    )
    p.add_argument("--level", default="P2", help="FPN level to compare (default P2, the first FPN level)")
    p.add_argument(
        "--student-feature",
        choices=("auto", "raw", "adapter", "probe"),
        default="auto",
        help="student map compared with the teacher's: raw FPN output, the distillation adapter's output, probe = "
        "the raw output through its least-squares linear map to the teacher's channels (for FPNs of different "
        "widths), or auto = adapter when the checkpoint has adapters, else raw, or probe when the widths differ "
        "(default)",
    )
    p.add_argument(
        "--baseline", default=None, help="student the ratios refer to (default: the first student without feature KD)"
    )
    _add_data_arguments(p, "validation", 20)
    p.set_defaults(func=run_channel_distance)


# ------------------------------------------------------------------------------------------ grad-norm
def run_grad_norm(args: argparse.Namespace) -> int:
    from defeat import api

    levels = [x.strip() for x in args.levels.split(",") if x.strip()] if args.levels else None
    summary = api.grad_norm(
        args.student,
        args.images_dir,
        args.annotations,
        args.out,
        teacher=args.teacher,
        mode=args.mode,
        proposal_mode=args.proposal_mode,
        loss=args.loss,
        levels=levels,
        train_steps=args.train_steps,
        **_data_kwargs(args),
    )
    if not args.quiet:
        print(
            "object/background mean gradient norm, all images: "
            + "  ".join(f"{r['level']}={r['ratio']:.3f}" for r in summary["rows"])
        )
        print(f"wrote {args.out}")
    return 0


def register_grad_norm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grad-norm",
        help="gradient-norm maps of the FPN outputs, object vs background",
        description="Back-propagate the detection loss, the DeFeat distillation loss or their sum for N random "
        "images and record the per-pixel L2 norm of the gradient at every FPN level (DeFeat "
        "supplementary, Fig. 2-3): overlaid heatmaps and the object/background mean-norm ratio.",
    )
    p.add_argument("--student", required=True, help="student checkpoint ('detector' or 'distill')")
    p.add_argument(
        "--teacher",
        default=None,
        help="teacher checkpoint (kind 'detector'); needed for the distillation loss and --train-steps",
    )
    p.add_argument(
        "--mode",
        default="all",
        help=f"feature_mode of the distiller whose loss is back-propagated: {', '.join(FEATURE_MODES)} (default all)",
    )
    p.add_argument(
        "--proposal-mode",
        default="none",
        help="proposal_mode of that distiller: none (default: only the feature term), positive, negative, "
        "all or decoupled",
    )
    p.add_argument(
        "--loss",
        choices=LOSSES,
        default=None,
        help="loss to back-propagate (default: sum with --teacher, else detection)",
    )
    p.add_argument("--levels", default=None, help="comma-separated FPN levels to draw (default: all)")
    p.add_argument(
        "--train-steps",
        type=int,
        default=0,
        help="first distil the student for K steps, all regions (the supplementary's setting; default 0)",
    )
    _add_data_arguments(p, "training", 8)
    p.set_defaults(func=run_grad_norm)
