"""The report of ``defeat reproduce``: results table, claims with pass/fail, Markdown rendering.

Pure functions on plain dicts (no I/O, no torch), so the claim logic is tested on hand-made numbers.

Inputs
------
``teacher``: the teacher's COCO stats (``AP``, ``AP50``, ... as fractions, as ``defeat eval`` writes them).
``students``: ``{name: [stats of seed 0, stats of seed 1, ...]}`` -- one entry per trained student, a list of
runs with different seeds (``baseline`` is the student trained without KD).

Conventions (documented in docs/reproduce.md)
---------------------------------------------
* A group of runs is summarised by its mean and its *sample* standard deviation (``ddof=1``; ``None`` for one run).
* **Seed noise** of a comparison A vs B = the larger of the two groups' standard deviations. A group trained with a
  single seed has no standard deviation of its own; it borrows the largest standard deviation measured on any
  multi-seed group of the same study (the run-to-run noise of this benchmark and schedule). With no multi-seed
  group at all, the noise is unknown (``None``): the claim's pass is then computed from the sign of the
  difference alone and the claim says so (``indicative``).
* A difference is **beyond noise** when it is strictly larger than that noise.
* **Gap closed** = (AP_student - AP_baseline) / (AP_teacher - AP_baseline); undefined (``None``) when the teacher
  is not better than the baseline.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

#: the supplementary's five students of Fig. 1 (feature distillation only), in its order
FIG1_STUDENTS = ("baseline", "object", "background", "all", "decoupled")
#: the models compared by the error analysis (Fig. 4-9: baseline, object-only, background-only; + decoupled)
ERROR_STUDENTS = ("baseline", "object", "background", "decoupled")

#: what each student is (feature_mode, proposal_mode of ``defeat distill``; baseline = plain ``defeat train``)
STUDENT_LABELS = {
    "baseline": "baseline (no KD)",
    "object": "object regions only (features)",
    "background": "background regions only (features)",
    "all": "all regions alike (features)",
    "decoupled": "decoupled features (DeFeat features)",
    "defeat": "decoupled features + decoupled proposals (full DeFeat)",
    "fgfi": "FGFI (fine-grained feature imitation)",
}

GAP_CLOSED_MIN = 0.5  # claim 1: DeFeat closes at least half of the teacher-student gap


# ------------------------------------------------------------------------------------------ statistics
def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; ``None`` for fewer than two values)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std: no values")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def summarize_group(runs: Sequence[Mapping[str, Any]]) -> dict:
    """``{stat: {"mean", "std", "values"}, "n": runs}`` over every stat in :data:`STATS` present in the runs."""
    out: dict[str, Any] = {"n": len(runs)}
    for stat in STATS:
        values = [v for v in (_stat(r, stat) for r in runs) if v is not None]
        if values:
            mean, std = mean_std(values)
            out[stat] = {"mean": mean, "std": std, "values": values}
    return out


def _stat(stats: Mapping | None, key: str) -> float | None:
    """A COCO stat, ``None`` when absent or -1 (COCO's "no ground truth in this area")."""
    value = (stats or {}).get(key)
    if value is None or float(value) < 0 or math.isnan(float(value)):
        return None
    return float(value)


def reference_noise(groups: Mapping[str, Mapping], stat: str = "AP") -> float | None:
    """The largest standard deviation of ``stat`` over the groups with >= 2 runs (``None`` if there is none)."""
    stds = [g[stat]["std"] for g in groups.values() if stat in g and g[stat]["std"] is not None]
    return max(stds) if stds else None


def seed_noise(a: Mapping, b: Mapping, reference: float | None, stat: str = "AP") -> float | None:
    """Noise of comparing groups ``a`` and ``b`` on ``stat``: the larger std (a single run borrows ``reference``)."""
    stds = [g[stat]["std"] if g[stat]["std"] is not None else reference for g in (a, b)]
    stds = [s for s in stds if s is not None]
    return max(stds) if stds else None


def gap_closed(ap_student: float, ap_baseline: float, ap_teacher: float) -> float | None:
    """(AP_student - AP_baseline) / (AP_teacher - AP_baseline); ``None`` when the teacher is not better."""
    gap = ap_teacher - ap_baseline
    if not gap > 0:
        return None
    return (ap_student - ap_baseline) / gap


def beyond_noise(diff: float, noise: float | None) -> bool:
    """``diff > noise`` (``diff > 0`` when the noise is unknown)."""
    return diff > (noise if noise is not None else 0.0)


# ------------------------------------------------------------------------------------------ tables
def results_table(teacher: Mapping | None, students: Mapping[str, Sequence[Mapping]]) -> list[dict]:
    """One row per model (teacher first, then the students in the given order): mean/std of every stat,
    Δ AP to the baseline (mean), and the fraction of the teacher-baseline gap closed."""
    groups = {name: summarize_group(runs) for name, runs in students.items() if runs}
    base = groups.get("baseline", {}).get("AP", {}).get("mean")
    t_ap = teacher.get("AP") if teacher else None
    rows = []
    if teacher:
        row = {"model": "teacher", "label": "teacher", "seeds": 1}
        for stat in STATS:
            row[stat] = _stat(teacher, stat)
            row[f"{stat}_std"] = None
        row["dAP"] = None if base is None or t_ap is None else t_ap - base
        row["gap_closed"] = None
        rows.append(row)
    for name, g in groups.items():
        row = {"model": name, "label": STUDENT_LABELS.get(name, name), "seeds": g["n"]}
        for stat in STATS:
            row[stat] = g[stat]["mean"] if stat in g else None
            row[f"{stat}_std"] = g[stat]["std"] if stat in g else None
        ap = row["AP"]
        row["dAP"] = None if base is None or ap is None or name == "baseline" else ap - base
        row["gap_closed"] = (None if base is None or ap is None or t_ap is None or name == "baseline"
                             else gap_closed(ap, base, t_ap))
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ claims
def _claim(claim: str, check: str, value: Any, passed: bool | None, note: str = "", noise: float | None = None,
           indicative: bool = False) -> dict:
    return {"claim": claim, "check": check, "value": value, "pass": passed, "noise": noise,
            "indicative": indicative, "note": note}


def _missing(claim: str, check: str, what: str) -> dict:
    return _claim(claim, check, None, None, f"not computed: {what}")


def compute_claims(teacher: Mapping | None, students: Mapping[str, Sequence[Mapping]],
                   channel_distance: Sequence[Mapping] | None = None, grad_norm_ratio: float | None = None,
                   errors: Sequence[Mapping] | None = None,
                   channel_distance_raw: Sequence[Mapping] | None = None) -> list[dict]:
    """The six claims of the supplementary, each ``{claim, check, value, pass, noise, indicative, note}``, plus a
    seventh when ``channel_distance_raw`` is given: Fig. 1 measured on the students' raw FPN output.

    ``channel_distance``: the summary rows of ``defeat analyze channel-distance`` (``student``, ``region``,
    ``mean_distance``); ``grad_norm_ratio``: object/background mean gradient norm over every image and level;
    ``errors``: rows of ``errors_table.json`` of ``defeat analyze errors`` (``model``, ``category``, ``area``,
    ``band_BG``). ``pass`` is ``None`` when the numbers needed are missing.
    """
    groups = {name: summarize_group(runs) for name, runs in students.items() if runs}
    ref = reference_noise(groups)

    def ap(name):
        return groups[name]["AP"]["mean"] if name in groups and "AP" in groups[name] else None

    def compare(a: str, b: str) -> tuple[float, float | None]:
        return ap(a) - ap(b), seed_noise(groups[a], groups[b], ref)

    no_noise = "no seed noise estimate (single seed everywhere): pass from the sign alone, indicative only"
    claims = []

    # 1. DeFeat lifts the student toward the teacher
    c, check = ("DeFeat lifts the student toward the teacher",
                f"AP(decoupled) - AP(baseline) > seed noise; gap closed >= {GAP_CLOSED_MIN:.0%}")
    if ap("decoupled") is None or ap("baseline") is None or not teacher or teacher.get("AP") is None:
        claims.append(_missing(c, check, "needs teacher, baseline and decoupled AP"))
    else:
        diff, noise = compare("decoupled", "baseline")
        closed = gap_closed(ap("decoupled"), ap("baseline"), float(teacher["AP"]))
        note = "" if noise is not None else no_noise
        if closed is None:
            note = "; ".join(x for x in (note, "the teacher is not better than the baseline: no gap to close") if x)
        passed = beyond_noise(diff, noise) and closed is not None and closed >= GAP_CLOSED_MIN
        claims.append(_claim(c, check, {"dAP": diff, "gap_closed": closed}, passed, note, noise, noise is None))

    # 2. decoupled beats treating all regions alike
    c, check = "decoupled beats treating all regions alike", "AP(decoupled) - AP(all) > seed noise"
    if ap("decoupled") is None or ap("all") is None:
        claims.append(_missing(c, check, "needs decoupled and all AP"))
    else:
        diff, noise = compare("decoupled", "all")
        claims.append(_claim(c, check, {"dAP": diff}, beyond_noise(diff, noise), "" if noise is not None else no_noise,
                             noise, noise is None))

    # 3. background regions carry knowledge too
    c = "background regions carry knowledge too"
    check = ("AP(background) - AP(baseline) > seed noise, and comparable to object-only: "
             "abs(AP(background) - AP(object)) <= max(seed noise, half the object-only gain) or AP(background) > "
             "AP(object)")
    if ap("background") is None or ap("baseline") is None or ap("object") is None:
        claims.append(_missing(c, check, "needs baseline, object and background AP"))
    else:
        gain, noise = compare("background", "baseline")
        obj_gain = ap("object") - ap("baseline")
        vs_obj, noise_obj = compare("background", "object")
        tolerance = max(noise_obj or 0.0, 0.5 * abs(obj_gain))
        comparable = vs_obj > 0 or abs(vs_obj) <= tolerance
        claims.append(_claim(c, check, {"dAP_vs_baseline": gain, "dAP_vs_object": vs_obj, "tolerance": tolerance},
                             beyond_noise(gain, noise) and comparable, "" if noise is not None else no_noise,
                             noise, noise is None))

    # 4. Fig. 1: the decoupled student is closest to the teacher in both regions
    claims.append(_channel_distance_claim("Fig. 1: decoupled distils best in both regions", channel_distance))

    # 5. Fig. 2-3: gradients are larger on objects
    c, check = "Fig. 2-3: object regions get larger gradients", "mean gradient norm object / background > 1"
    if grad_norm_ratio is None or math.isnan(grad_norm_ratio):
        claims.append(_missing(c, check, "no gradient-norm ratio"))
    else:
        claims.append(_claim(c, check, {"ratio": grad_norm_ratio}, grad_norm_ratio > 1.0))

    # 6. Fig. 4-9: background distillation cuts background false positives
    c = "Fig. 4-9: background distillation cuts background false positives"
    check = "BG band (BG - Oth, overall, all areas) of background-only < that of object-only"
    bands = error_bands(errors) if errors else {}
    if "background" not in bands or "object" not in bands:
        claims.append(_missing(c, check, "no error analysis of the object-only and background-only students"))
    else:
        bg, obj = bands["background"], bands["object"]
        cats = [k for k in bg["per_category"] if k in obj["per_category"]]
        fewer = sum(bg["per_category"][k] < obj["per_category"][k] for k in cats)
        claims.append(_claim(c, check, {"background": bg["overall"], "object": obj["overall"],
                                        "categories_lower": fewer, "categories": len(cats)},
                             bg["overall"] < obj["overall"]))
    # supplementary: Fig. 1 on the raw FPN output, where the adapters cannot absorb the difference
    if channel_distance_raw is not None:
        claims.append(_channel_distance_claim(
            "Fig. 1 (raw FPN output, no adapter): decoupled distils best in both regions", channel_distance_raw))
    return claims


def _channel_distance_claim(claim: str, rows: Sequence[Mapping] | None) -> dict:
    """Decoupled student's mean channel distance to the teacher lowest of all students, in object and background."""
    check = "mean channel distance of the decoupled student lowest of the five students, in object and in background"
    if not rows:
        return _missing(claim, check, "no channel-distance results")
    dist = {(r["student"], r["region"]): r["mean_distance"] for r in rows}
    names = list(dict.fromkeys(r["student"] for r in rows))
    if "decoupled" not in names or len(names) < 2:
        return _missing(claim, check, "the decoupled student or its rivals are missing")
    value, passed = {}, True
    for region in ("object", "background"):
        own = dist.get(("decoupled", region))
        others = {n: dist.get((n, region)) for n in names if n != "decoupled"}
        finite = {n: v for n, v in others.items() if v is not None and not math.isnan(v)}
        best_other = min(finite, key=finite.get) if finite else None
        ok = own is not None and not math.isnan(own) and best_other is not None and own < finite[best_other]
        value[region] = {"decoupled": own, "best_other": best_other, "best_other_distance": finite.get(best_other)}
        passed = passed and ok
    return _claim(claim, check, value, passed)


def error_bands(rows: Sequence[Mapping], band: str = "band_BG", area: str = "all") -> dict:
    """``{model: {"overall": value, "per_category": {category: value}}}`` of one band width, one area."""
    out: dict[str, dict] = {}
    for r in rows:
        if r.get("area") != area or band not in r:
            continue
        entry = out.setdefault(r["model"], {"overall": None, "per_category": {}})
        if r["category"] == "overall":
            entry["overall"] = float(r[band])
        else:
            entry["per_category"][r["category"]] = float(r[band])
    return {m: e for m, e in out.items() if e["overall"] is not None}


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
            "Computed from the numbers above by `defeat.analysis.report.compute_claims`. *Seed noise* = the larger "
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
