"""The report of ``defeat compare``: the statistics (pure functions of AP lists), ``results.json``, ``report.md`` /
``report.html`` and their figures.

Every number is a COCO AP (fraction; shown × 100). Tests over seeds (:mod:`defeat.study.stats`), alpha = 0.05:

* **each method against the baseline** (:func:`method_rows`): the one-sided Welch test of "the method beats the
  baseline" (:func:`~defeat.study.stats.beats`, raw p). The m methods tested form one family: the decision
  (``beats_baseline``) is made on the Holm–Bonferroni adjusted p (:func:`holm`), so that the chance of calling
  any method better when none is stays <= alpha. The CI beside it is Welch's two-sided 90 % CI
  (``1 - 2 alpha``) of ``mean(method) - mean(baseline)``: its lower end is the one-sided 95 % lower bound, which
  is above 0 exactly when the raw one-sided p < alpha. A CI above 0 with an adjusted p >= alpha is "undecided".
* **the best arm against the runner-up** (:func:`decide`; highest mean AP, the baseline included): one more
  one-sided Welch test at alpha, outside that family, with the same 90 % CI; ``decided`` when p < alpha, else
  ``undecided`` -- the ranking of the two is not shown as a result then. The two arms are chosen by their means,
  after the fact; a "decided" is read with that in mind.

Holm (1979), with the m raw p-values sorted ascending, p_(1) <= ... <= p_(m)::

    p_adj_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j))

and H_(i) rejected when p_adj_(i) < alpha (equivalently: reject while p_(j) < alpha / (m - j + 1), stop at the
first that is not). statsmodels' ``multipletests(method="holm")`` computes the same; it is not a dependency here.
Methods without a p (fewer than 2 seeds on a side) are not in the family.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from defeat.study import stats
from defeat.study.render import markdown_to_html

#: what each method name means, for the report (distill.feature_mode / proposal_mode)
BASELINE = "baseline"


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def ci_level(alpha: float = stats.ALPHA) -> float:
    """The level of the two-sided CI that matches a one-sided test at ``alpha``: ``1 - 2 alpha`` (0.90)."""
    return 1 - 2 * alpha


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm–Bonferroni adjusted p-values of a family of tests (name -> raw p; None: no test, not in the family).

    Sorted ascending, ``p_adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``; a hypothesis is rejected at level
    alpha when its adjusted p < alpha. Ties are ordered by name (the adjusted values do not depend on it)."""
    ranked = sorted((p, name) for name, p in p_values.items() if p is not None)
    adjusted: dict[str, float | None] = {name: None for name in p_values}
    running = 0.0
    for i, (p, name) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - i) * p))
        adjusted[name] = running
    return adjusted


def _one_sided(a: Sequence[float], b: Sequence[float], alpha: float) -> dict:
    """:func:`stats.beats` with the CI that matches it: Welch's two-sided ``1 - 2 alpha`` CI (90 %)."""
    test = stats.beats(a, b, alpha)
    if test["decided"]:
        w = stats.welch(a, b, ci_level(alpha))
        test.update(ci=w["ci"], ci_level=w["ci_level"])
    return test


def statistics_note(alpha: float = stats.ALPHA) -> dict:
    """How the report's tests are made (``results.json`` → ``statistics``)."""
    level = round(100 * ci_level(alpha))
    return {
        "alpha": alpha,
        "ci_level": ci_level(alpha),
        "vs_baseline": (
            "one-sided Welch t-test per method (H1: the method's mean AP > the baseline's); the methods tested form "
            f"one family, decided on Holm-Bonferroni adjusted p < {alpha}"
        ),
        "best_vs_runner_up": (
            f"one-sided Welch t-test best > runner-up at {alpha}, a single test outside the Holm family; the two "
            "arms are chosen by their means"
        ),
        "ci": (
            f"Welch's two-sided {level} % CI of the difference; its lower end is the one-sided "
            f"{round(100 * (1 - alpha))} % lower bound, above 0 exactly when the raw one-sided p < {alpha}"
        ),
        "holm": "p_adj_(i) = max_{j<=i} min(1, (m - j + 1) p_(j)), raw p sorted ascending, m = methods tested",
    }


def decide(aps: Mapping[str, Sequence[float]], alpha: float = stats.ALPHA) -> dict:
    """The best arm of ``aps`` (arm -> one AP per seed; the baseline is an arm like the others) and whether it is
    distinguishable from the runner-up: a one-sided Welch test "best > runner-up" at ``alpha``.

    Returns ``{ranking, best, runner_up, outcome ("decided" | "undecided" | "single arm"), test (stats.beats's
    dict or None), sentence}``. Arms without values are left out of the ranking; equal means keep the given order
    (and are undecided: the test cannot pass)."""
    means = {name: _mean_sd(values)[0] for name, values in aps.items()}
    ranking = sorted((n for n, m in means.items() if m is not None), key=lambda n: -means[n])
    out: dict[str, Any] = {
        "ranking": ranking,
        "best": ranking[0] if ranking else None,
        "runner_up": ranking[1] if len(ranking) > 1 else None,
        "alpha": alpha,
        "test": None,
    }
    if len(ranking) < 2:
        out.update(outcome="single arm", sentence="fewer than two arms with results: nothing to compare")
        return out
    best, second = ranking[0], ranking[1]
    test = _one_sided(aps[best], aps[second], alpha)
    out["test"] = test
    gap = f"{100 * test['diff']:+.2f} AP" if test["diff"] is not None else "n/a"
    if test["pass"]:
        out["outcome"] = "decided"
        out["sentence"] = (
            f"{best} is ahead of the runner-up {second} ({gap}, one-sided Welch p = {test['p_value']:.3g} < {alpha})"
        )
    else:
        why = test["note"] or f"one-sided Welch p = {test['p_value']:.3g} >= {alpha}"
        out["outcome"] = "undecided"
        out["sentence"] = (
            f"{best} and {second} are not distinguishable ({gap}, {why}); their order here is not a "
            "result -- add seeds or train longer"
        )
    return out


def method_rows(aps: Mapping[str, Sequence[float]], alpha: float = stats.ALPHA) -> list[dict]:
    """One row per arm: seeds, per-seed AP, mean ± sd, and against the baseline the difference with Welch's
    two-sided 90 % CI (``dAP_ci``, level ``dAP_ci_level``), the raw one-sided p of "beats the baseline"
    (``p_vs_baseline``), its Holm-adjusted p over the methods tested (``p_vs_baseline_holm``, family size
    ``holm_family``) and the decision on the adjusted p (``beats_baseline``). None for the baseline itself; p and
    decision None with < 2 seeds on a side (``note``)."""
    base = list(aps.get(BASELINE, []))
    rows = []
    for name, values in aps.items():
        mean, sd = _mean_sd(values)
        row = {"method": name, "seeds": len(values), "AP": mean, "AP_sd": sd, "AP_per_seed": list(values)}
        if name != BASELINE and base:
            test = _one_sided(values, base, alpha)
            row.update(
                dAP=test["diff"],
                dAP_ci=test["ci"],
                dAP_ci_level=test["ci_level"],
                p_vs_baseline=test["p_value"],
                note=test["note"],
            )
        rows.append(row)
    adjusted = holm({row["method"]: row["p_vs_baseline"] for row in rows if "p_vs_baseline" in row})
    family = sum(p is not None for p in adjusted.values())
    for row in rows:
        if row["method"] in adjusted:
            p_adj = adjusted[row["method"]]
            row.update(
                p_vs_baseline_holm=p_adj,
                holm_family=family,
                beats_baseline=None if p_adj is None else p_adj < alpha,
            )
    return rows


def _pct(value: float | None, sign: bool = False, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:+.{digits}f}" if sign else f"{100 * value:.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "–"
    return f"{value / base:.2f}×"


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _figure(results: Mapping[str, Any], name: str, alt: str) -> list[str]:
    return [f"![{alt}](figures/{name})", ""] if name in results.get("figures", ()) else []


def _level(results: Mapping[str, Any]) -> int:
    """The CI level of the rows, in percent (older results.json files: 95)."""
    levels = {row.get("dAP_ci_level") for row in results["methods"] if row.get("dAP_ci")}
    level = levels.pop() if len(levels) == 1 else ci_level(results.get("alpha", stats.ALPHA))
    return round(100 * (level or 0.95))


def render_markdown(results: Mapping[str, Any]) -> str:
    """``report.md`` from the content of ``results.json``."""
    r = results
    lines = [
        f"# defeat compare: {r['config']}",
        "",
        f"Student `{r['student']}`, teacher `{r['teacher']}`; {len(r['seeds'])} seed(s) {r['seeds']}, "
        f"{r['steps']} steps each, the same data order per seed; AP on `{r['val_annotations']}`"
        + (f" (first {r['val_max_images']} images)" if r.get("val_max_images") else "")
        + f". Device: {r['device']}.",
        "",
        "## Verdict",
        "",
    ]
    verdict = r["verdict"]
    lines.append(f"- **{verdict['outcome']}**: {verdict['sentence']}")
    best = next((row for row in r["methods"] if row["method"] == verdict.get("best")), None)
    level = _level(r)
    if best and best["method"] != BASELINE and best.get("dAP") is not None:
        ci = best.get("dAP_ci") or [None, None]
        ok = "beats" if best.get("beats_baseline") else "is not shown to beat"
        lines.append(
            f"- {best['method']} {ok} the baseline: {_pct(best['dAP'], True, 2)} AP "
            f"[{level} % CI {_pct(ci[0], True, 2)}, {_pct(ci[1], True, 2)}], one-sided p = "
            f"{_num(best.get('p_vs_baseline'), '.3g')}, Holm-adjusted over {best.get('holm_family', '–')} "
            f"methods {_num(best.get('p_vs_baseline_holm'), '.3g')}"
        )
    tested = [row for row in r["methods"] if row.get("beats_baseline") is not None]
    if tested:
        ahead = [row["method"] for row in tested if row["beats_baseline"]]
        open_ = [row["method"] for row in tested if not row["beats_baseline"]]
        lines.append(
            f"- against the baseline (Holm over {len(tested)} methods, alpha {r['alpha']}): "
            f"beat it: {', '.join(ahead) or 'none'}; undecided: {', '.join(open_) or 'none'}"
        )
    if best and best["method"] == BASELINE:
        lines.append("- no method has a higher mean AP than the baseline on these seeds")
    cost = {c["method"]: c for c in r["cost"]}
    if best and best["method"] in cost and best["method"] != BASELINE:
        c = cost[best["method"]]
        lines.append(
            f"- its cost: {_ratio(c.get('sec_per_step'), cost.get(BASELINE, {}).get('sec_per_step'))} the "
            "baseline's training time per step; inference is the student's (the teacher is not needed to deploy)"
        )
    for warning in r.get("warnings", []):
        lines.append(f"- {warning}")
    lines += [
        "",
        "## AP per method",
        "",
        f"COCO AP × 100, mean ± sample sd over seeds. Δ: method − baseline with Welch's two-sided {level} % CI "
        f"(its lower end is the one-sided {round(100 * (1 - r['alpha']))} % lower bound). p: one-sided Welch test "
        "of 'the method beats the baseline', raw and Holm–Bonferroni adjusted over the methods tested "
        "(adjusted p_(i) = max_{j≤i} min(1, (m − j + 1) p_(j)), raw p sorted ascending); a method beats the "
        f"baseline when its adjusted p < {r['alpha']}, so a CI above 0 can still be undecided. The best-vs-runner-up "
        "test of the verdict is a single test outside this family.",
        "",
        f"| method | what | seeds | AP | per seed | Δ AP vs baseline [{level} % CI] | p | p Holm | beats baseline |",
        "|---|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for row in r["methods"]:
        ci = row.get("dAP_ci")
        delta = (
            f"{_pct(row['dAP'], True, 2)} [{_pct(ci[0], True, 2)}, {_pct(ci[1], True, 2)}]"
            if ci
            else (_pct(row.get("dAP"), True, 2) + (f" ({row['note']})" if row.get("note") else ""))
        )
        if row["method"] == BASELINE:
            delta = "(reference)"
        per_seed = ", ".join(_pct(v) for v in row["AP_per_seed"]) or "–"
        ap = _pct(row["AP"]) + (f" ± {_pct(row['AP_sd'])}" if row.get("AP_sd") is not None else "")
        name = f"**{row['method']}**" if row["method"] == verdict.get("best") else row["method"]
        decision = {True: "yes", False: "undecided", None: "–"}[row.get("beats_baseline")]
        lines.append(
            f"| {name} | {r['what'].get(row['method'], '')} | {row['seeds']} | {ap} | {per_seed} | {delta} | "
            f"{_num(row.get('p_vs_baseline'), '.3g')} | {_num(row.get('p_vs_baseline_holm'), '.3g')} | {decision} |"
        )
    lines += ["", *_figure(r, "ap.png", "AP per method")]
    base_cost = cost.get(BASELINE, {})
    lines += [
        "## Cost",
        "",
        "Training time per step (mean of the runs' logged windows after the first) and peak memory "
        f"({r.get('memory_kind') or 'n/a'}), relative to the baseline. Measured on this machine "
        "while the runs trained; a busy machine inflates them alike.",
        "",
        "| method | s/step | × baseline | peak memory GiB | × baseline |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in r["cost"]:
        lines.append(
            f"| {c['method']} | {_num(c.get('sec_per_step'), '.3f')} | "
            f"{_ratio(c.get('sec_per_step'), base_cost.get('sec_per_step'))} | "
            f"{_num(c.get('peak_memory_gib'), '.2f')} | "
            f"{_ratio(c.get('peak_memory_gib'), base_cost.get('peak_memory_gib'))} |"
        )
    lat = r.get("latency") or {}
    lines += ["", "## AP against latency", ""]
    if lat:
        lines += [
            f"Inference on this machine ({lat.get('device')}, {lat.get('threads')} threads, fp32, one image at a "
            f"time): median of {lat.get('timed')} timed forward passes over {lat.get('images')} val images after "
            "a warm-up. Every distilled student has the baseline's architecture, hence its latency.",
            "",
            "| model | AP | eager ms | ONNX Runtime ms |",
            "|---|---:|---:|---:|",
            f"| teacher | {_pct(r.get('teacher_AP'))} | {_num(lat.get('teacher_ms'), '.1f')} | – |",
        ]
        for row in r["methods"]:
            lines.append(
                f"| {row['method']} | {_pct(row['AP'])} | {_num(lat.get('student_ms'), '.1f')} | "
                f"{_num(lat.get('student_onnx_ms'), '.1f')} |"
            )
        if lat.get("onnx_note"):
            lines.append(f"\nONNX Runtime: {lat['onnx_note']}")
        lines += ["", *_figure(r, "ap_latency.png", "AP against latency")]
    else:
        lines += ["(not measured: the latency stage did not run)", ""]
    curves = r.get("curves") or {}
    lines += ["## AP against steps", ""]
    if any(len(points) > 1 for points in curves.values()):
        steps = sorted({p["step"] for points in curves.values() for p in points})
        lines += [
            "Mean AP over seeds at each evaluation during training (`eval.every_steps`).",
            "",
            "| method | " + " | ".join(str(s) for s in steps) + " |",
            "|---|" + "---:|" * len(steps),
        ]
        for name, points in curves.items():
            at = {p["step"]: p["AP"] for p in points}
            lines.append(f"| {name} | " + " | ".join(_pct(at.get(s)) for s in steps) + " |")
        lines += ["", *_figure(r, "ap_steps.png", "AP against steps")]
    else:
        lines += ["(the runs evaluated only at the end: set `--set eval.every_steps=N` for a curve)", ""]
    lines += _errors_section(r)
    lines += [
        "## Teacher",
        "",
        f"Teacher AP {_pct(r.get('teacher_AP'))} on the same images; the first baseline seed "
        f"{_pct(r.get('baseline_first_AP'))}: lead {_pct(r.get('teacher_lead'), True)} AP "
        f"(warning below distill.teacher_min_lead = {_pct(r.get('teacher_min_lead'))}).",
        "",
        "## Runs",
        "",
        "Each stage and the `defeat` command that redoes it by hand.",
        "",
        "| stage | status | seconds | command |",
        "|---|---|---:|---|",
    ]
    for s in r["stages"]:
        note = f" ({s['note']})" if s.get("note") else ""
        lines.append(f"| {s['name']} | {s['status']}{note} | {_num(s.get('seconds'), '.1f')} | `{s['command']}` |")
    lines.append("")
    return "\n".join(lines)


def _errors_section(r: Mapping[str, Any]) -> list[str]:
    """Where the baseline's and the best method's errors are: the COCO error analysis's curves, one row each."""
    errors = r.get("errors") or {}
    curves = errors.get("curves") or {}
    lines = ["## Where the errors are", ""]
    if not curves:
        return lines + ["(not analysed: the error-analysis stages did not run)", ""]
    names = list(next(iter(curves.values())))
    lines += [
        f"The baseline and the best distilled method by mean AP, seed {errors.get('seed')} of each: the COCO error "
        "analysis (mmdetection's `coco_error_analysis.py`, docs/error_analysis.md) over all categories. Each column "
        "is the mean precision once the errors of its type and of the columns left of it are forgiven (C75, C50: "
        "AP at IoU 0.75 / 0.5; Loc: IoU 0.1; Sim / Oth: confusions within the supercategory / with any class; BG: "
        "no background false positives; FN: nothing missed). The gap between two neighbouring columns is what "
        f"that error type costs. All analysis files: `{errors.get('folder')}`.",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for model, values in curves.items():
        lines.append(f"| {model} | " + " | ".join(f"{values[k]:.3f}" for k in names) + " |")
    return lines + ["", *_figure(r, "errors_overall.png", "error bands, baseline and best method")]


def write_figures(results: Mapping[str, Any], folder: Path) -> list[str]:
    """``figures/ap.png`` (AP ± sd per method), ``ap_latency.png`` and ``ap_steps.png`` where there is data;
    returns the names written."""
    from defeat.analysis.plotting import plt, save_figure

    written = []

    rows = [row for row in results["methods"] if row["AP"] is not None]
    if rows:
        fig, ax = plt.subplots(figsize=(1.0 * len(rows) + 2, 3.0))
        x = list(range(len(rows)))
        ax.bar(
            x,
            [100 * row["AP"] for row in rows],
            yerr=[100 * (row["AP_sd"] or 0) for row in rows],
            capsize=3,
            color=["tab:gray" if row["method"] == BASELINE else "tab:blue" for row in rows],
        )
        for i, row in enumerate(rows):
            ax.scatter([i] * len(row["AP_per_seed"]), [100 * v for v in row["AP_per_seed"]], color="k", s=8, zorder=3)
        if results.get("teacher_AP") is not None:
            ax.axhline(100 * results["teacher_AP"], color="tab:red", ls="--", lw=1, label="teacher")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(x, [row["method"] for row in rows], rotation=20, fontsize=8)
        ax.set_ylabel("COCO AP × 100")
        ax.set_title("AP per method (mean ± sd; dots: seeds)", fontsize=9)
        fig.tight_layout()
        save_figure(fig, folder / "ap.png", dpi=110)
        written.append("ap.png")
    lat = results.get("latency") or {}
    if rows and lat.get("student_ms") is not None:
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        for row in rows:
            ax.errorbar(
                lat["student_ms"],
                100 * row["AP"],
                yerr=100 * (row["AP_sd"] or 0),
                fmt="o",
                capsize=3,
                label=row["method"],
            )
        if lat.get("student_onnx_ms") is not None:
            best = max(rows, key=lambda row: row["AP"])
            ax.scatter(lat["student_onnx_ms"], 100 * best["AP"], marker="s", facecolors="none", edgecolors="k")
            ax.annotate("ONNX Runtime", (lat["student_onnx_ms"], 100 * best["AP"]), fontsize=7)
        if lat.get("teacher_ms") is not None and results.get("teacher_AP") is not None:
            ax.scatter(
                lat["teacher_ms"], 100 * results["teacher_AP"], marker="*", s=80, color="tab:red", label="teacher"
            )
        ax.set_xlabel("inference latency per image, ms (this machine)")
        ax.set_ylabel("COCO AP × 100")
        ax.set_title("AP against latency", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, folder / "ap_latency.png", dpi=110)
        written.append("ap_latency.png")
    curves = results.get("curves") or {}
    if any(len(points) > 1 for points in curves.values()):
        fig, ax = plt.subplots(figsize=(4.8, 3.2))
        for name, points in curves.items():
            ax.plot([p["step"] for p in points], [100 * p["AP"] for p in points], marker="o", ms=3, label=name)
        ax.set_xlabel("training step")
        ax.set_ylabel("COCO AP × 100 (mean over seeds)")
        ax.set_title("AP against steps", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, folder / "ap_steps.png", dpi=110)
        written.append("ap_steps.png")
    source = (results.get("errors") or {}).get("figure_source")
    if source and Path(source).is_file():  # the error analysis's own comparison figure
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / "errors_overall.png")
    if results.get("errors") and (folder / "errors_overall.png").is_file():  # also a re-render of a copied report
        written.append("errors_overall.png")
    return written


def write_report_files(results: Mapping[str, Any], out: Path) -> dict:
    """The figures, ``results.json`` (with the names of the figures written), ``report.md`` and ``report.html``;
    returns the results as written."""
    from defeat.study.report import _json_safe
    from defeat.utils import atomic_write_json, atomic_write_text

    results = _json_safe(dict(results, figures=write_figures(results, out / "figures")))
    atomic_write_json(out / "results.json", results)
    markdown = render_markdown(results)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", markdown_to_html(markdown, f"defeat compare: {results['config']}"))
    return results


RERENDER_COMMAND = "python benchmarks/compare_rerender.py"


def rerender(folder: str | Path) -> dict:
    """Recompute the statistics of ``folder/results.json`` from its stored per-seed APs (``methods`` →
    ``AP_per_seed``) with this version's tests and rewrite the report files; nothing is trained. Every other field
    (cost, latency, curves, stages, ...) is kept as stored. A ``command`` field, where the file has one, gets the
    re-rendering appended once, and ``rendered`` says what was recomputed."""
    from defeat.utils import read_json

    folder = Path(folder)
    results = dict(read_json(folder / "results.json"))
    alpha = results.get("alpha", stats.ALPHA)
    aps = {row["method"]: list(row["AP_per_seed"]) for row in results["methods"]}
    by = f"{RERENDER_COMMAND} {folder.as_posix()}"
    results.update(methods=method_rows(aps, alpha), verdict=decide(aps, alpha), statistics=statistics_note(alpha))
    results["rendered"] = (
        f"{by}: statistics recomputed from the stored per-seed APs (Holm over the methods vs the baseline, "
        f"{round(100 * ci_level(alpha))} % CIs); nothing retrained, every other field as recorded"
    )
    if isinstance(results.get("command"), str) and RERENDER_COMMAND not in results["command"]:
        results["command"] += f"; report re-rendered from the stored per-seed APs, nothing retrained: {by}"
    return write_report_files(results, folder)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog=RERENDER_COMMAND,
        description="Re-render a defeat compare report (results.json, report.md, report.html, figures/) from the "
        "per-seed APs its results.json stores, with the current statistics; trains nothing.",
    )
    parser.add_argument("folder", help="the compare's output folder (holds results.json)")
    args = parser.parse_args(argv)
    results = rerender(args.folder)
    print(f"{Path(args.folder) / 'report.md'}: {results['verdict']['outcome']}: {results['verdict']['sentence']}")
    return 0
