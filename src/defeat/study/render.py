"""The report of ``defeat reproduce`` as Markdown and HTML: pure functions of ``results.json``'s content."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from defeat.study.claims import STATS


# ------------------------------------------------------------------------------------------ rendering
def _pct(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:+.{digits}f}" if sign else f"{100 * value:.{digits}f}"


def _pm(mean: float | None, std: float | None) -> str:
    return _pct(mean) + (f" ± {_pct(std)}" if std is not None else "")


def render_results_table(rows: Sequence[Mapping]) -> str:
    """Markdown table: model, seeds, AP (± std), AP50, AP75, APs, APm, APl, Δ AP, gap closed (COCO AP × 100)."""
    lines = [
        "| model | what | seeds | AP | AP50 | AP75 | APs | APm | APl | Δ AP vs baseline | gap closed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        closed = "–" if r.get("gap_closed") is None else f"{100 * r['gap_closed']:.0f} %"
        cells = [
            f"**{r['model']}**" if r["model"] in ("teacher", "baseline") else r["model"],
            r.get("label", ""),
            str(r.get("seeds", 1)),
            _pm(r.get("AP"), r.get("AP_std")),
        ]
        cells += [_pm(r.get(s), r.get(f"{s}_std")) for s in STATS[1:]]
        cells += [_pct(r.get("dAP"), sign=True), closed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: keys of claim values that are AP differences (fractions; shown as AP points × 100) or fractions (shown in %)
_AP_KEYS = ("dAP", "dAP_vs_baseline", "dAP_vs_object", "margin")


def _format_value(value: Any, key: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, Mapping):
        return ", ".join(
            f"{k}=({_format_value(v, k)})" if isinstance(v, Mapping) else f"{k}={_format_value(v, k)}"
            for k, v in value.items()
        )
    if key in _AP_KEYS and isinstance(value, (int, float)):
        return f"{100 * value:+.2f} AP"
    if key == "gap_closed" and isinstance(value, (int, float)):
        return f"{100 * value:.0f} %"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _num(value: float | None, unit: str, sign: bool = False) -> str:
    """An AP (fraction, shown × 100) or a plain number (distances)."""
    if value is None:
        return "–"
    if unit == "AP":
        return f"{100 * value:+.2f}" if sign else f"{100 * value:.2f}"
    return f"{value:+.4g}" if sign else f"{value:.4g}"


def format_test(t: Mapping) -> str:
    """One statistical test of a claim: means (n), difference, its CI, p-value, power and outcome, on one line."""
    unit = t.get("unit", "AP")
    scale = " AP" if unit == "AP" else ""
    text = (
        f"{t.get('label', '')}: {_num(t.get('mean_a'), unit)} (n={t.get('n_a')}) vs {_num(t.get('mean_b'), unit)} "
        f"(n={t.get('n_b')}), Δ {_num(t.get('diff'), unit, sign=True)}{scale}"
    )
    if t.get("ci"):
        lo, hi = t["ci"]
        text += f", {100 * t['ci_level']:.0f} % CI [{_num(lo, unit, True)}, {_num(hi, unit, True)}]"
    if t.get("margin") is not None:
        text += f", margin ±{_num(t['margin'], unit)}{scale}"
    if t.get("p_value") is not None:
        text += f", p = {t['p_value']:.3g}"
    if t.get("power") is not None:
        text += f", power {t['power']:.2f}"
    if t.get("outcome"):
        verdict = t["outcome"]
    else:
        verdict = "pass" if t.get("pass") else "fail" if t.get("decided") else "undecidable"
    return f"{text} → {verdict}"


def verdict_of(claim: Mapping) -> str:
    """A claim's outcome as the report words it: pass, fail, "undecidable at this budget (power P)" or n/a."""
    outcome = claim.get("outcome")
    if outcome is None and claim.get("pass") is not None:  # a results.json from before the three outcomes
        outcome = "pass" if claim["pass"] else "fail" if claim.get("decided", True) else "undecidable"
    if outcome is None:
        return "n/a"
    if outcome == "undecidable":
        if claim.get("undecidable_because") == "regime":
            return "undecidable: out of the paper's regime"
        power = claim.get("power")
        return "undecidable at this budget" + (f" (power {power:.2f})" if power is not None else "")
    return outcome


def _design(claim: Mapping) -> str:
    """Seeds per arm, the effect / margin the tests are powered for and the claim's power, in one cell."""
    parts = []
    if claim.get("seeds"):
        parts.append(", ".join(f"{k} {v}" for k, v in claim["seeds"].items()))
    unit = claim.get("unit", "AP")
    if claim.get("effect") is not None:
        parts.append(f"effect {_num(claim['effect'], unit, sign=True)}{' AP' if unit == 'AP' else ''}")
    if claim.get("margin") is not None:
        parts.append(f"margin ±{_num(claim['margin'], unit)}{' AP' if unit == 'AP' else ''}")
    if claim.get("power") is not None:
        parts.append(f"power {claim['power']:.2f} (target {claim.get('power_target', 0.8):g})")
    return "<br>".join(parts) or "–"


def _grad_numbers(value: Mapping) -> str:
    """Fig. 2-3's numbers: the tested loss's ratio and CI per level, the control's beside it."""

    def ci(entry: Mapping) -> str:
        ratio = "–" if entry.get("ratio") is None else f"{entry['ratio']:.2f}"
        return ratio + ("" if not entry.get("ci") else f" [{entry['ci'][0]:.2f}, {entry['ci'][1]:.2f}]")

    level = value.get("ci_level", 0.9)
    text = f"{value.get('tested')} loss, ratio and {100 * level:.0f} % bootstrap CI over {value.get('images')} images: "
    text += "; ".join(f"{lv} {ci(e)}" for lv, e in value.get("levels", {}).items())
    for loss, levels in (value.get("control") or {}).items():
        text += f"<br>control, {loss} loss: " + "; ".join(f"{lv} {ci(e)}" for lv, e in levels.items())
    return text


def render_claims_table(claims: Sequence[Mapping]) -> str:
    """Markdown table of the claims: the claim and its check, the test, the design (seeds, effect / margin, power
    at the pre-registered sd), the numbers (every test: means, Δ, CI, p-value, power), the claim's p-value (largest
    of its tests) and the outcome (pass / fail / undecidable at this budget / n/a)."""
    lines = [
        "| claim | check | test | seeds, effect / margin, power | numbers | p | outcome |",
        "|---|---|---|---|---|---:|:---:|",
    ]
    for c in claims:
        verdict = verdict_of(c)
        verdict = verdict if verdict == "n/a" else f"**{verdict}**"
        if c.get("indicative") and c.get("outcome") is not None:
            verdict += " (indicative)"
        tests = c.get("tests") or []
        value = c.get("value") or {}
        if tests:
            numbers = "<br>".join(format_test(t) for t in tests)
        elif isinstance(value, Mapping) and "levels" in value:
            numbers = _grad_numbers(value)
        else:
            numbers = _format_value(c["value"])
        if tests and "gap_closed" in value:
            numbers += f"<br>gap closed {_format_value(value['gap_closed'], 'gap_closed')}"
        adapter = value.get("adapter_output") if isinstance(value, Mapping) else None
        if adapter and adapter.get("tests"):
            numbers += "<br>adapter output (secondary, decides nothing): " + "; ".join(
                format_test(t) for t in adapter["tests"]
            )
        if c.get("note"):
            numbers += f" — {c['note']}"
        p = "–" if c.get("p_value") is None else f"{c['p_value']:.3g}"
        lines.append(
            f"| {c['claim']} | {c['check']} | {c.get('test', '')} | {_design(c)} | {numbers} | {p} | {verdict} |"
        )
    return "\n".join(lines)


def render_power_plan(rows: Sequence[Mapping]) -> str:
    """The pre-registered power of every claim test (:func:`defeat.study.claims.power_plan`) as a Markdown table."""
    if not rows:
        return "(no claim test)"
    lines = [
        "| claim | test | seeds per arm | effect / margin | assumed sd | power | seeds per arm for the target |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        unit = r.get("unit", "AP")
        size = (
            f"±{_num(r['margin'], unit)} (true Δ 0)"
            if r.get("margin") is not None
            else _num(r.get("effect"), unit, sign=True)
        )
        power = "–" if r.get("power") is None else f"{r['power']:.2f}"
        needed = r.get("seeds_for_target")
        target = r.get("power_target", 0.8)
        needed = (
            "–"
            if r.get("power") is None
            else f"> 1000 for {target:g}"
            if needed is None
            else f"{needed} for {target:g}"
        )
        lines.append(
            f"| {r['id']} | {r['test']} | {' vs '.join(map(str, r['seeds']))} | {size} | "
            f"{_num(r.get('assumed_sd'), unit)} | {power} | {needed} |"
        )
    return "\n".join(lines)


def render_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """A plain Markdown table of dict rows (floats with 4 significant digits)."""
    if not rows:
        return "(empty)"
    columns = list(columns or rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_format_value(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def markdown_to_html(markdown: str, title: str) -> str:
    """A minimal, dependency-free HTML page of the report: headings, pipe tables, images, code blocks, paragraphs."""
    import html
    import re

    def inline(text: str) -> str:
        text = html.escape(text).replace("&lt;br&gt;", "<br>")
        text = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r'<img alt="\1" src="\2" style="max-width:100%">', text)
        text = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', text)
        text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)

    out, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            block = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(html.escape(lines[i]))
                i += 1
            out.append("<pre>" + "\n".join(block) + "</pre>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            i -= 1
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            body = [r for k, r in enumerate(cells) if k != 1]  # row 1 is the |---| separator
            table = ["<table>"]
            for k, r in enumerate(body):
                tag = "th" if k == 0 else "td"
                table.append("<tr>" + "".join(f"<{tag}>{inline(c)}</{tag}>" for c in r) + "</tr>")
            out.append("\n".join(table + ["</table>"]))
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].startswith(("- ", "* ")):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            i -= 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif line.strip() and not line.startswith(("<details", "</details", "<summary")):
            out.append(f"<p>{inline(line)}</p>")
        elif line.startswith(("<details", "</details", "<summary")):
            out.append(line)
        i += 1
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#f3f3f3}pre{background:#f6f6f6;padding:8px;overflow:auto}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )


# ------------------------------------------------------------------------------------------ the report
def _condition_numbers(c: Mapping) -> str:
    """The numbers of one regime condition, AP values x 100."""
    n = c.get("numbers") or {}
    name = c["name"]
    if name == "equal_schedule":
        return f"teacher {n.get('teacher_steps')} steps, students {n.get('student_steps')} steps"
    if name == "teacher_lead":
        text = f"lead {_pct(n.get('teacher_lead_ap'), 2, sign=True)} AP"
        if n.get("baseline_sd") is not None:
            text += f", baseline seed sd {_pct(n['baseline_sd'], 2)}, needs ≥ {_pct(n.get('threshold'), 2)}"
        return text
    if name == "baseline_near_plateau":
        gain = n.get("plateau_gain")
        text = f"AP(S) {_pct(n.get('plateau_ap_s'), 2)}, AP(2S) {_pct(n.get('plateau_ap_2s'), 2)}"
        text += ", gain –" if gain is None else f", gain {100 * gain:+.1f} %"
        if n.get("ci"):
            text += f", 95 % CI of AP(2S) − AP(S) [{_pct(n['ci'][0], 2, True)}, {_pct(n['ci'][1], 2, True)}]"
        return text
    if name == "students_below_teacher":
        others = n.get("not_below") or []
        return f"teacher {_pct(n.get('teacher_ap'), 2)}" + (f"; at or above it: {', '.join(others)}" if others else "")
    return ""


def render_regime(reg: Mapping[str, Any] | None) -> list[str]:
    """The ``## Regime`` section: every condition of the regime with its numbers and whether it holds, the doubling
    test with its CI and per-seed values, and (as a description) AP at 50/75/100 % of the student schedule."""
    if not reg:
        return []
    lines = [
        "## Regime",
        "",
        "Does the run sit in the paper's regime -- the teacher ahead by capacity on the students' schedule, the "
        "baseline near its plateau, every distilled student below the teacher? Only there can "
        "`defeat_lifts_student` pass or fail (`regime` in results.json).",
        "",
    ]
    size = "–" if reg.get("teacher_params_m") is None else f"{reg['teacher_params_m']:.1f} M"
    small = "–" if reg.get("student_params_m") is None else f"{reg['student_params_m']:.1f} M"
    lines += [
        f"- teacher: {reg['teacher_steps']} steps, {size} parameters; students: {reg['student_steps']} steps, "
        f"{small} parameters ({'equal schedule' if reg.get('equal_schedule') else 'unequal schedules'}"
        + (
            ""
            if reg.get("teacher_bigger") is None
            else f"; the teacher is {'the bigger' if reg['teacher_bigger'] else 'not the bigger'} network"
        )
        + ")"
    ]
    if reg.get("teacher_lead_ap") is not None:
        lead = reg["teacher_lead_ap"]
        lines += [
            f"- teacher AP {_pct(reg.get('teacher_ap'), 2)}, {_pct(abs(lead), 2)} AP "
            f"{'above' if lead > 0 else 'below'} the baseline's mean AP"
            + ("" if lead > 0 else ": the teacher is NOT ahead, there is no gap to close")
        ]
    conditions = reg.get("conditions") or []
    if conditions:
        verdict = {True: "yes", False: "**no**", None: "not measured"}
        rows = [
            {
                "condition": c["name"],
                "check": c["check"],
                "numbers": _condition_numbers(c),
                "holds": verdict[c["holds"]],
            }
            for c in conditions
        ]
        in_regime = reg.get("in_regime")
        lines += [
            "",
            render_table(rows, ["condition", "check", "numbers", "holds"]),
            "",
            "In the regime: "
            + {True: "**yes**", False: "**no**", None: "**not established** (a condition was not measured)"}[in_regime],
        ]
    plateau = reg.get("plateau") or {}
    if plateau:
        gain = plateau.get("plateau_gain")
        if plateau.get("plateau_ap_s") is None or plateau.get("plateau_ap_2s") is None:
            lines += ["", f"Doubling test: {plateau.get('note') or 'not computed'}."]
        else:
            per_seed = ", ".join(
                f"seed {s}: {_pct(a, 2)} → {_pct(b, 2)}"
                for s, a, b in zip(plateau.get("seeds") or [], plateau["values_s"], plateau["values_2s"])
            )
            ci = plateau.get("ci")
            if gain is None:
                verdict = plateau.get("note") or "not decided"
            else:
                verdict = "near its plateau" if plateau.get("near") else "NOT near its plateau: more steps raise it"
            lines += [
                "",
                f"Doubling test (baseline, {reg['student_steps']} and {2 * reg['student_steps']} steps, the same "
                f"schedule shape): mean AP {_pct(plateau['plateau_ap_s'], 2)} → {_pct(plateau['plateau_ap_2s'], 2)}, "
                + ("gain –" if gain is None else f"gain {100 * gain:+.1f} % of AP(S)")
                + f" against at most {100 * plateau['plateau_gain_max']:.0f} %"
                + (
                    f"; 95 % Welch CI of the difference [{_pct(ci[0], 2, True)}, {_pct(ci[1], 2, True)}] AP"
                    if ci
                    else ""
                )
                + f" — {verdict}"
                + (f" ({per_seed})" if per_seed else "")
                + ".",
            ]
    rows = []
    for name, st in (reg.get("students") or {}).items():
        at = st.get("ap_at", {})
        row = {"student": name, "seeds": st.get("seeds")}
        for key in ("50%", "75%", "100%"):
            point = at.get(key, {})
            steps = sorted(set(point.get("steps") or []))
            row[f"AP at {key}"] = (
                f"{_pct(point.get('AP'), 2)} (step {','.join(map(str, steps))})" if point.get("AP") is not None else "–"
            )
        gain = st.get("last_quarter_gain")
        row["last-quarter gain / final AP"] = "–" if gain is None else f"{100 * gain:.1f} %"
        rows.append(row)
    if rows:
        lines += [
            "",
            "AP against steps (a description, it decides nothing: on a cosine schedule the last quarter's rise is "
            "mostly annealing):",
            "",
            render_table(rows),
        ]
    return lines + [""]


def render_report(results: Mapping[str, Any]) -> str:
    """``report.md`` of ``defeat reproduce`` from its ``results.json`` content (see :func:`compute_claims`).

    Expected keys: ``preset``, ``description``, ``indicative``, ``table`` (rows of :func:`results_table`),
    ``claims``, ``figures`` ({caption: relative path}), ``channel_distance`` (summary rows), ``grad_norm``
    (``{"ratio", "rows"}``), ``errors`` (``{"band_BG": {model: ...}, "band_Sim": ...}``), ``stages``
    ({name: {status, seconds, steps, sec_per_step, command}}), ``seeds``, ``versions``, ``configs``
    ({name: YAML text}), ``wall_seconds``, ``failed`` ({stage: reason}).
    """
    out: list[str] = []
    preset = results.get("preset", "?")
    out += [f"# DeFeat reproduction on the embedded benchmark — preset `{preset}`", ""]
    if results.get("description"):
        out += [str(results["description"]).strip(), ""]
    if results.get("indicative"):
        out += [
            "> **Indicative only.** This preset is small (few images, few steps, few seeds): its "
            "differences are within run-to-run noise and its pass/fail verdicts are not evidence either way. "
            "The statistics are the same code as the `full` preset's (3 seeds for every student); with one "
            "seed a claim cannot be decided.",
            "",
        ]
    if results.get("failed"):
        out += ["**Stages that did not finish** (their numbers are n/a below):", ""]
        out += [f"- `{k}`: {v}" for k, v in results["failed"].items()] + [""]

    out += [
        "## Results",
        "",
        "COCO box AP × 100 on the benchmark's validation split; mean ± sample std over seeds where a model has "
        "several. Δ AP = student − baseline (means); gap closed = (AP_student − AP_baseline) / "
        "(AP_teacher − AP_baseline).",
        "",
        render_results_table(results.get("table", [])),
        "",
    ]

    stat = results.get("statistics") or {}
    margin = stat.get("margin_ap")
    out += [
        "## Claims",
        "",
        "Computed from the numbers above by `defeat.study.claims.compute_claims` with the tests of "
        "`defeat.study.stats` (scipy.stats), over the seeds of each student: *A beats B* = Welch's t-test, "
        f"one-sided, p < {stat.get('alpha', 0.05)} (95 % Welch CI of the difference shown); *A is comparable to "
        "B* = TOST equivalence, two one-sided Welch tests, both p < "
        f"{stat.get('alpha', 0.05)} (90 % CI inside the margin" + (f" ±{margin:g} AP" if margin else "") + "). "
        "Each test has a power: the chance it passes at the pre-registered seed sd when the true difference is the "
        "pre-registered effect (Welch) or 0 (TOST). Outcomes: **pass**; **fail** (did not pass, with power ≥ the "
        "target); **undecidable at this budget** (did not pass with power below the target, or fewer than 2 seeds "
        "in an arm) -- never read as fail. A claim of several tests fails when one fails and passes when all pass; "
        "its p is the largest. `defeat_lifts_student` is undecidable out of the regime below. Figure claims say "
        "their test.",
        "",
        render_claims_table(results.get("claims", [])),
        "",
    ]
    plan = stat.get("power_plan") or []
    if plan:
        out += [
            "Pre-registered power (the preset's `claims`: assumed seed sd, effects, margin, power target; before the "
            "run):",
            "",
            render_power_plan(plan),
            "",
        ]

    out += render_regime(results.get("regime"))

    figures = results.get("figures", {})
    if figures:
        out += ["## Figures", ""]
        for caption, path in figures.items():
            out += [f"**{caption}**", "", f"![{caption}]({path})", ""]

    cd = results.get("channel_distance_seeds") or []
    if cd:
        out += [
            "## Channel distance (Fig. 1)",
            "",
            "Mean over channels of the per-channel mean |teacher − student| on one FPN level, object vs "
            "background pixels (distilled students: their adapter output, as the distiller compares it); mean and "
            "sample std over the seeds of each student.",
            "",
            render_table(cd, ["student", "region", "mean_distance", "std_over_seeds", "seeds"]),
            "",
        ]
    cd_raw = results.get("channel_distance_raw_seeds") or []
    if cd_raw:
        probed = any(r.get("feature") == "probe" for r in results.get("channel_distance_raw") or [])
        out += [
            "The same on the raw FPN output of every student (no adapter): what the student's own neck carries"
            + (
                "; the teacher's FPN is wider, so each student's raw output goes through its own least-squares "
                "linear map to the teacher's channels, fitted on the analysis images (the same for every student)."
                if probed
                else "."
            ),
            "",
            render_table(cd_raw, ["student", "region", "mean_distance", "std_over_seeds", "seeds"]),
            "",
        ]
    gn = results.get("grad_norm") or {}
    if gn.get("rows"):
        losses = list(dict.fromkeys(r.get("loss", "sum") for r in gn["rows"]))
        levels = list(dict.fromkeys(r["level"] for r in gn["rows"]))
        ratio = {(r.get("loss", "sum"), r["level"]): r.get("ratio") for r in gn["rows"]}
        grad_claim = next((c for c in results.get("claims", []) if c.get("id") == "fig2_3_gradients"), None)
        value = (grad_claim or {}).get("value") or {}
        cis = {value.get("tested"): value.get("levels") or {}} | {
            loss: levels for loss, levels in (value.get("control") or {}).items()
        }

        def cell(loss: str, level: str) -> str:
            r = ratio.get((loss, level))
            ci = (cis.get(loss) or {}).get(level, {}).get("ci")
            text = "–" if r is None else f"{r:.3g}"
            return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

        rows = [{"level": level, **{f"ratio ({loss} loss)": cell(loss, level) for loss in losses}} for level in levels]
        out += [
            "## Gradient norm, object vs background (Fig. 2–3)",
            "",
            "Mean gradient norm on object pixels / on background pixels at each FPN level (level `all`: every "
            "level pooled), back-propagating the detection loss alone (the control), the distillation loss alone "
            f"and their sum, with the {100 * value.get('ci_level', 0.9):.0f} % percentile bootstrap CI over images "
            f"in brackets. The claim tests the **{gn.get('tested', 'distillation')}** loss.",
            "",
            render_table(rows),
            "",
        ]
    errors = results.get("errors") or {}
    if errors.get("band_BG"):
        out += [
            "## Error analysis (Fig. 4–9)",
            "",
            "Band widths of the COCO error analysis, overall (mean over categories), all areas: `band_BG` = "
            "precision lost to background false positives, `band_Sim` = lost to confusions with look-alike "
            "classes (same supercategory), `band_Loc` = lost to poor localisation. Smaller is better.",
            "",
        ]
        models = list(errors["band_BG"])
        rows = [
            {
                "model": m,
                **{
                    b: errors.get(b, {}).get(m, {}).get("overall")
                    for b in ("band_Loc", "band_Sim", "band_Oth", "band_BG")
                },
            }
            for m in models
        ]
        out += [render_table(rows), ""]
        cats = sorted({c for m in models for c in errors["band_BG"][m]["per_category"]})
        if cats:
            out += ["`band_BG` per category:", ""]
            rows = [{"category": c, **{m: errors["band_BG"][m]["per_category"].get(c) for m in models}} for c in cats]
            out += [render_table(rows), ""]

    sens = results.get("sensitivity") or []
    if sens:
        base = next((r for r in results.get("table", []) if r["model"] == "decoupled"), None)
        rows = (
            [
                {
                    "student": "decoupled (the authors' weights: the reproduction)",
                    "distill": "–",
                    "seeds": base.get("seeds"),
                    "AP": _pm(base.get("AP"), base.get("AP_std")),
                }
            ]
            if base
            else []
        )
        rows += [
            {
                "student": f"sens_{r['name']}",
                "distill": ", ".join(f"{k}={v}" for k, v in r["distill"].items()),
                "seeds": r["seeds"],
                "AP": _pm(r.get("AP"), r.get("AP_std")),
            }
            for r in sens
        ]
        out += [
            "## Sensitivity to the KD weights (not part of the reproduction)",
            "",
            "The reproduction above keeps the authors' weights (alpha_obj 4, alpha_bg 16, beta 2). Here the "
            "decoupled student is trained with other weights (and `weights: auto`, which scales every KD term "
            "to a fraction of the detection loss at the start; `defeat.distill.calibrate`), to show how much "
            "the result depends on them. COCO AP × 100, mean ± std over seeds.",
            "",
            render_table(rows),
            "",
        ]

    out += ["## Run", ""]
    if results.get("seeds"):
        out += ["Seeds: " + "; ".join(f"{k}: {v}" for k, v in results["seeds"].items()), ""]
    stages = results.get("stages", {})
    if stages:
        rows = [
            {
                "stage": n,
                "status": s.get("status"),
                "wall time (s)": s.get("seconds"),
                "steps": s.get("steps"),
                "s/step": s.get("sec_per_step"),
            }
            for n, s in stages.items()
        ]
        out += [render_table(rows), ""]
    stage_seconds = sum(s.get("seconds") or 0.0 for s in stages.values())
    if stage_seconds:
        out += [f"Sum of the stages' wall times: {stage_seconds / 60:.1f} min.", ""]
    if results.get("wall_seconds") is not None:
        out += [
            f"Wall time of this invocation: {results['wall_seconds'] / 60:.1f} min (stages reused from an earlier "
            "invocation count 0 here; their own times are in the table).",
            "",
        ]
    versions = results.get("versions", {})
    if versions:
        out += ["Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    for name, text in (results.get("configs") or {}).items():
        out += [
            f"<details><summary>config: {name}</summary>",
            "",
            "```yaml",
            text.rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(out)
