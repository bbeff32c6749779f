"""``defeat reproduce --preset quick|full|coco|tiny|PRESET.yaml --out DIR``: the supplementary's study end to end.

See :mod:`defeat.study` for the stages and docs/reproduce.md for the presets and the report.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="run the DeFeat supplementary's experiments end to end and write a report",
        description="Generate the embedded benchmark, train the teacher and the baseline student, distil the "
        "students (object, background, all, decoupled, decoupled + proposals, FGFI), evaluate them, run "
        "the channel-distance, gradient-norm and error analyses and write report.md / results.json. "
        "Each stage is cached in the run folder: rerunning skips finished stages and resumes an "
        "interrupted one. --preset coco only writes COCO configs and torchrun commands.",
    )
    p.add_argument(
        "--preset",
        required=True,
        metavar="quick|full|coco|tiny|PRESET.yaml",
        help="built-in preset (tiny: CI plumbing check; quick: <= 15 min demo; full: <= 150 min reproduction in "
        "the paper's regime; coco: configs for GPUs + COCO, not run) or a preset YAML file of the same shape",
    )
    p.add_argument("--out", required=True, help="run folder (stages, report.md, results.json, figures/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset value, e.g. --set teacher.steps=800 --set seeds.baseline=[0,1,2] "
        "--set common.device=cpu (repeatable)",
    )
    p.add_argument(
        "--dry-run",
        "--plan",
        dest="dry_run",
        action="store_true",
        help="print the plan (stages, steps, time estimate; every claim's seeds, effect / margin and power) and stop",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="run up to N independent stages at once, each in its own process with cores/N torch threads "
        "(default: the preset's jobs, else 1)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defeat.study import load_preset, run_reproduce

    preset = load_preset(args.preset, args.overrides)
    summary = run_reproduce(preset, args.out, dry_run=args.dry_run, jobs=args.jobs)
    if args.dry_run or preset.get("configs_only"):
        return 0
    for line in format_table(summary.get("table", [])):
        print(line)
    for claim in summary.get("claims", []):
        verdict = {"pass": "pass", "fail": "FAIL", "undecidable": "undecidable", None: "n/a"}[claim.get("outcome")]
        p = "" if claim.get("p_value") is None else f" (p = {claim['p_value']:.3g})"
        power = "" if claim.get("power") is None else f" (power {claim['power']:.2f})"
        print(f"  [{verdict:>11}] {claim['claim']}{p}{power}")
    return 1 if summary.get("failed") else 0


def format_table(table: list[dict]) -> list[str]:
    """The report's results table as plain text lines (AP x 100, mean +- seed std, delta, gap closed)."""

    def pct(value, std=None):
        if value is None:
            return "n/a"
        return f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")

    lines = [f"  {'model':<12}{'seeds':>6}{'AP':>14}{'dAP':>8}{'gap closed':>12}"] if table else []
    for row in table:
        gap = "" if row.get("gap_closed") is None else f"{100 * row['gap_closed']:.0f} %"
        delta = "" if row.get("dAP") is None else f"{100 * row['dAP']:+.1f}"
        lines.append(f"  {row['model']:<12}{row['seeds']:>6}{pct(row['AP'], row.get('AP_std')):>14}{delta:>8}{gap:>12}")
    return lines
