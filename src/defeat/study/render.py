"""The report of ``defeat reproduce`` as Markdown and HTML: pure functions of ``results.json``'s content."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

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
    lines = ["| model | what | seeds | AP | AP50 | AP75 | APs | APm | APl | Δ AP vs baseline | gap closed |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        closed = "–" if r.get("gap_closed") is None else f"{100 * r['gap_closed']:.0f} %"
        cells = [f"**{r['model']}**" if r["model"] in ("teacher", "baseline") else r["model"], r.get("label", ""),
                 str(r.get("seeds", 1)), _pm(r.get("AP"), r.get("AP_std"))]
        cells += [_pm(r.get(s), r.get(f"{s}_std")) for s in STATS[1:]]
        cells += [_pct(r.get("dAP"), sign=True), closed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: keys of claim values that are AP differences (fractions; shown as AP points × 100) or fractions (shown in %)
_AP_KEYS = ("dAP", "dAP_vs_baseline", "dAP_vs_object", "tolerance")


def _format_value(value: Any, key: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}=({_format_value(v, k)})" if isinstance(v, Mapping) else f"{k}={_format_value(v, k)}"
                         for k, v in value.items())
    if key in _AP_KEYS and isinstance(value, (int, float)):
        return f"{100 * value:+.2f} AP"
    if key == "gap_closed" and isinstance(value, (int, float)):
        return f"{100 * value:.0f} %"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_claims_table(claims: Sequence[Mapping]) -> str:
    lines = ["| claim | check | value | seed noise (AP × 100) | pass |", "|---|---|---|---:|:---:|"]
    for c in claims:
        verdict = {True: "**pass**", False: "**fail**", None: "n/a"}[c["pass"]]
        if c.get("indicative") and c["pass"] is not None:
            verdict += " (indicative)"
        noise = "–" if c.get("noise") is None else f"{100 * c['noise']:.2f}"
        value = _format_value(c["value"]) + (f" — {c['note']}" if c.get("note") else "")
        lines.append(f"| {c['claim']} | {c['check']} | {value} | {noise} | {verdict} |")
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
        text = html.escape(text)
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
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}th{background:#f3f3f3}pre{background:#f6f6f6;padding:8px;overflow:auto}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


# ------------------------------------------------------------------------------------------ the report
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
        out += ["> **Indicative only.** This preset is small (few images, few steps, few seeds): its "
                "differences are within run-to-run noise and its pass/fail verdicts are not evidence either way. "
                "The `full` preset is the reproduction (≥ 3 seeds for baseline and decoupled, claims beyond seed "
                "noise).", ""]
    if results.get("failed"):
        out += ["**Stages that did not finish** (their numbers are n/a below):", ""]
        out += [f"- `{k}`: {v}" for k, v in results["failed"].items()] + [""]

    out += ["## Results", "",
            "COCO box AP × 100 on the benchmark's validation split; mean ± sample std over seeds where a model has "
            "several. Δ AP = student − baseline (means); gap closed = (AP_student − AP_baseline) / "
            "(AP_teacher − AP_baseline).", "", render_results_table(results.get("table", [])), ""]

    out += ["## Claims", "",
            "Computed from the numbers above by `defeat.study.claims.compute_claims`. *Seed noise* = the larger "
            "seed std of the two models compared (a single-seed model borrows the largest seed std measured in this "
            "run); a difference counts only when it is larger than that noise.", "",
            render_claims_table(results.get("claims", [])), ""]

    figures = results.get("figures", {})
    if figures:
        out += ["## Figures", ""]
        for caption, path in figures.items():
            out += [f"**{caption}**", "", f"![{caption}]({path})", ""]

    cd = results.get("channel_distance") or []
    if cd:
        out += ["## Channel distance (Fig. 1)", "",
                "Mean over channels of the per-channel mean |teacher − student| on one FPN level, object vs "
                "background pixels (distilled students: their adapter output, as the distiller compares it).", "",
                render_table(cd, ["student", "mode", "feature", "region", "mean_distance", "ratio_to_baseline"]), ""]
    cd_raw = results.get("channel_distance_raw") or []
    if cd_raw:
        out += ["The same on the raw FPN output of every student (no adapter): what the student's own neck carries.",
                "", render_table(cd_raw, ["student", "mode", "feature", "region", "mean_distance",
                                          "ratio_to_baseline"]), ""]
    gn = results.get("grad_norm") or {}
    if gn.get("rows"):
        out += ["## Gradient norm, object vs background (Fig. 2–3)", "",
                render_table(gn["rows"], ["level", "object_mean", "background_mean", "ratio"]), ""]
    errors = results.get("errors") or {}
    if errors.get("band_BG"):
        out += ["## Error analysis (Fig. 4–9)", "",
                "Band widths of the COCO error analysis, overall (mean over categories), all areas: `band_BG` = "
                "precision lost to background false positives, `band_Sim` = lost to confusions with look-alike "
                "classes (same supercategory), `band_Loc` = lost to poor localisation. Smaller is better.", ""]
        models = list(errors["band_BG"])
        rows = [{"model": m, **{b: errors.get(b, {}).get(m, {}).get("overall") for b in
                                ("band_Loc", "band_Sim", "band_Oth", "band_BG")}} for m in models]
        out += [render_table(rows), ""]
        cats = sorted({c for m in models for c in errors["band_BG"][m]["per_category"]})
        if cats:
            out += ["`band_BG` per category:", ""]
            rows = [{"category": c, **{m: errors["band_BG"][m]["per_category"].get(c) for m in models}} for c in cats]
            out += [render_table(rows), ""]

    out += ["## Run", ""]
    if results.get("seeds"):
        out += ["Seeds: " + "; ".join(f"{k}: {v}" for k, v in results["seeds"].items()), ""]
    stages = results.get("stages", {})
    if stages:
        rows = [{"stage": n, "status": s.get("status"), "wall time (s)": s.get("seconds"), "steps": s.get("steps"),
                 "s/step": s.get("sec_per_step")} for n, s in stages.items()]
        out += [render_table(rows), ""]
    stage_seconds = sum(s.get("seconds") or 0.0 for s in stages.values())
    if stage_seconds:
        out += [f"Sum of the stages' wall times: {stage_seconds / 60:.1f} min.", ""]
    if results.get("wall_seconds") is not None:
        out += [f"Wall time of this invocation: {results['wall_seconds'] / 60:.1f} min (stages reused from an earlier "
                "invocation count 0 here; their own times are in the table).", ""]
    versions = results.get("versions", {})
    if versions:
        out += ["Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    for name, text in (results.get("configs") or {}).items():
        out += [f"<details><summary>config: {name}</summary>", "", "```yaml", text.rstrip(), "```", "", "</details>",
                ""]
    return "\n".join(out)
