"""``defeat analyze``: analyses that explain a distilled detector (the DeFeat supplementary's figures).

The group holds one subcommand per analysis. To add one, write ``register_<name>(sub)`` that adds a parser to
``sub`` and sets ``func`` to a handler returning an exit code, then append it to :data:`SUBCOMMANDS`.

``defeat analyze errors`` -- COCO error analysis with PR curves (C75, C50, Loc, Sim, Oth, BG, FN) for one or more
models on the same ground truth (:func:`defeat.api.analyze_errors`): an index, tables of
every curve's value and of the deltas between models, per model the overall figure and a grid of all categories,
a comparison figure (rows = models, columns = areas), per-category figures on request.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from defeat.cli.analyze_features import register_channel_distance, register_grad_norm


def _parse_dets(items: list[str]) -> dict[str, Path]:
    """``NAME=RESULTS.json`` pairs -> ordered {name: path}; one-line ValueError on a bad or duplicate name."""
    from defeat.analysis.error_report import check_model_names

    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--dets expects NAME=RESULTS.json, got {item!r}")
        check_model_names([name])
        if name in out:
            raise ValueError(f"--dets: model name {name!r} is given twice; names must be unique")
        out[name] = Path(path)
    return out


def run_errors(args: argparse.Namespace) -> int:
    from defeat import api

    summary = api.analyze_errors(
        args.gt,
        _parse_dets(args.dets),
        args.out,
        categories=args.categories,
        areas=args.areas,
        semantics=args.semantics,
        engine=args.engine,
        workers=args.workers,
        score_thr=args.score_thr,
        formats=args.formats,
        per_category=args.per_category,
        quiet=args.quiet,
    )
    if not args.quiet:
        for name, vals in summary["overall"].items():
            print(f"{name}: " + "  ".join(f"{b}={v:.3f}" for b, v in vals.items()) + "  (overall, all areas)")
        if summary["skipped_line"]:
            print(summary["skipped_line"])
        t = summary["timings"]
        print(
            f"wrote {len(summary['files'])} files to {summary['out']} (index.md) in {t['total_s']:.1f} s "
            f"(figures {t['figures_s']:.1f} s)"
        )
    return 0


def register_errors(sub: argparse._SubParsersAction) -> None:
    from defeat.analysis.coco_errors import DEFAULT_AREAS, ENGINES, SEMANTICS

    p = sub.add_parser(
        "errors",
        help="COCO error analysis (PR curves by error type), several models compared",
        description="COCO error analysis with PR curves (C75, C50, Loc, Sim, Oth, BG, FN), "
        "as mmdetection's coco_error_analysis.py, for several models at once. Writes "
        "index.md (links to everything), tables, per model the overall figure and a "
        "one-page grid of all categories per area, and (two or more models) a comparison "
        "figure; per-category figures with --per-category or --categories.",
    )
    p.add_argument("--gt", required=True, help="COCO ground-truth JSON")
    p.add_argument(
        "--dets",
        required=True,
        nargs="+",
        metavar="NAME=RESULTS.json",
        help="one COCO results JSON per model, with a unique name (rows of the comparison figure)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--categories",
        default=None,
        help="comma-separated category names or ids that get their own figures (per model and, with "
        "two or more models, a comparison figure); tables and grids always cover all",
    )
    p.add_argument(
        "--per-category",
        action="store_true",
        help="a figure per category and area for every non-empty category (as mmdetection's script)",
    )
    p.add_argument(
        "--areas",
        nargs=3,
        type=float,
        default=list(DEFAULT_AREAS),
        metavar=("SMALL", "MEDIUM", "ALL"),
        help="upper area bounds of small, medium and all (default 32^2 96^2 1e5^2)",
    )
    p.add_argument(
        "--semantics",
        choices=SEMANTICS,
        default="mmdet",
        help="mmdet: forgiven ground truth is crowd (mmdetection's script, default); "
        "matlab: only ignored (cocoapi MATLAB analyze())",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes for the per-category passes and the figures (default: the CPU count)",
    )
    p.add_argument(
        "--score-thresh",
        "--score-thr",  # the old spelling (mmdetection's); predict's is --score-thresh
        dest="score_thr",
        type=float,
        default=None,
        help="drop detections scoring below this",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="faster",
        help="COCOeval implementation (faster-coco-eval, default; or pycocotools)",
    )
    p.add_argument(
        "--formats", default="png", help="figure formats: png,pdf,svg, or none for no figures at all (default png)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run_errors)


#: register functions of the ``analyze`` subcommands; append new analyses here
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    register_errors,
    register_channel_distance,
    register_grad_norm,
]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``analyze`` command group and its subcommands."""
    parser = subparsers.add_parser(
        "analyze",
        help="analyses of detectors and distillation (error analysis, ...)",
        description=__doc__.splitlines()[0],
    )
    sub = parser.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for add in SUBCOMMANDS:
        add(sub)


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="defeat")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    sys.exit(ns.func(ns))
