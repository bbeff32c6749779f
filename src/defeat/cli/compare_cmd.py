"""``defeat compare CONFIG --methods baseline,decoupled,all --seeds 3 --out DIR``: which distillation helps on your
data, by how much, at what cost. See :mod:`defeat.study.compare` and docs/commands.md."""

from __future__ import annotations

from defeat.cli.train_cmd import add_config_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train the baseline and distillation methods over seeds on your data and report which helps",
        description="Train the student alone (baseline) and with each distillation method, with the same seeds, "
        "data order and schedule; evaluate each on the config's val split; report AP +- sd per method, the "
        "difference to the baseline (Welch 90 % CI, one-sided p raw and Holm-adjusted over the methods), the best "
        "method and whether it is distinguishable "
        "from the runner-up, the cost per method and the inference latency. Resumable: rerun the same command "
        "to continue. CONFIG is a distillation config (the student plus distill.teacher_checkpoint or "
        "distill.teacher_model/teacher_weights).",
    )
    add_config_arguments(p)
    p.add_argument(
        "--methods",
        default="baseline,decoupled",
        help="comma-separated: baseline (always trained), a distill.feature_mode (object, background, all, "
        "decoupled, fgfi, ...), decoupled_proposals (decoupled + proposal_mode decoupled) or decoupled_auto "
        "(decoupled + distill.weights auto); default %(default)s",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (config seed, +1, ...); default 3")
    p.add_argument("--out", required=True, help="folder for the runs, report.md/html and results.json")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time (times a few steps)")
    p.add_argument("--estimate-steps", type=int, default=3, metavar="N", help="timed steps per estimate (dry run)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoint_last.pt")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train up to N runs at once, each in its own process with cores/N torch threads; default 1",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from defeat import api
    from defeat.study.compare import run_compare

    cfg = api.load_config(args.config, args.overrides)
    summary = run_compare(
        cfg,
        args.out,
        methods=args.methods,
        seeds=args.seeds,
        source=args.config or "config",
        dry_run=args.dry_run,
        estimate_steps=args.estimate_steps,
        keep_checkpoints=args.keep_checkpoints,
        jobs=args.jobs,
    )
    if args.dry_run:
        return 0
    for line in format_summary(summary):
        print(line)
    return 1 if summary.get("failed") else 0


def format_summary(summary: dict) -> list[str]:
    """The AP table (× 100: mean ± sd, Δ vs baseline with Welch's 90 % CI, raw and Holm-adjusted one-sided p, the
    decision on the adjusted p) and the verdict as text lines."""

    def pct(v, sign=False):
        return "n/a" if v is None else (f"{100 * v:+.1f}" if sign else f"{100 * v:.1f}")

    def p_text(v):
        return "" if v is None else f"{v:.3g}"

    level = next((round(100 * r["dAP_ci_level"]) for r in summary["methods"] if r.get("dAP_ci_level")), 90)
    header = f"dAP [{level} % CI]"
    lines = [f"  {'method':<22}{'seeds':>6}{'AP':>14}{header:>24}{'p':>8}{'p Holm':>8}  beats baseline"]
    for row in summary["methods"]:
        ap = pct(row["AP"]) + (f" ± {pct(row['AP_sd'])}" if row.get("AP_sd") is not None else "")
        ci = row.get("dAP_ci")
        delta = f"{pct(row.get('dAP'), True)} [{pct(ci[0], True)}, {pct(ci[1], True)}]" if ci else ""
        decision = {True: "yes", False: "undecided", None: ""}[row.get("beats_baseline")]
        lines.append(
            f"  {row['method']:<22}{row['seeds']:>6}{ap:>14}{delta:>24}{p_text(row.get('p_vs_baseline')):>8}"
            f"{p_text(row.get('p_vs_baseline_holm')):>8}  {decision}"
        )
    lines.append(f"  [{summary['verdict']['outcome']}] {summary['verdict']['sentence']}")
    return lines + [f"  {w}" for w in summary.get("warnings", [])]
