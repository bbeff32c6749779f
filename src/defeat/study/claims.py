"""The numbers of ``defeat reproduce``'s report: results table, claims with pass/fail (rendered by ``study.render``).

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
#: the claims by id, in the report's order (the supplementary's six, then Fig. 1 on the raw FPN output)
CLAIM_IDS = ("defeat_lifts_student", "decoupled_beats_all", "background_carries_knowledge", "fig1_channel_distance",
             "fig2_3_gradients", "fig4_9_background_errors", "fig1_channel_distance_raw")


def _claim(claim_id: str, claim: str, check: str, value: Any, passed: bool | None, note: str = "",
           noise: float | None = None, indicative: bool = False) -> dict:
    return {"id": claim_id, "claim": claim, "check": check, "value": value, "pass": passed, "noise": noise,
            "indicative": indicative, "note": note}


def _missing(claim_id: str, claim: str, check: str, what: str) -> dict:
    return _claim(claim_id, claim, check, None, None, f"not computed: {what}")


def claims_by_id(claims: Sequence[Mapping]) -> dict[str, Mapping]:
    """``{id: claim}`` of a claims list (what results.json stores as ``claims``)."""
    return {c["id"]: c for c in claims}


def compute_claims(teacher: Mapping | None, students: Mapping[str, Sequence[Mapping]],
                   channel_distance: Sequence[Mapping] | None = None, grad_norm_ratio: float | None = None,
                   errors: Sequence[Mapping] | None = None,
                   channel_distance_raw: Sequence[Mapping] | None = None) -> list[dict]:
    """The six claims of the supplementary, each ``{id, claim, check, value, pass, noise, indicative, note}``, plus a
    seventh when ``channel_distance_raw`` is given: Fig. 1 measured on the students' raw FPN output. Address them by
    ``id`` (:data:`CLAIM_IDS`, :func:`claims_by_id`), not by position.

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
        claims.append(_missing("defeat_lifts_student", c, check, "needs teacher, baseline and decoupled AP"))
    else:
        diff, noise = compare("decoupled", "baseline")
        closed = gap_closed(ap("decoupled"), ap("baseline"), float(teacher["AP"]))
        note = "" if noise is not None else no_noise
        if closed is None:
            note = "; ".join(x for x in (note, "the teacher is not better than the baseline: no gap to close") if x)
        passed = beyond_noise(diff, noise) and closed is not None and closed >= GAP_CLOSED_MIN
        claims.append(_claim("defeat_lifts_student", c, check, {"dAP": diff, "gap_closed": closed}, passed, note,
                             noise, noise is None))

    # 2. decoupled beats treating all regions alike
    c, check = "decoupled beats treating all regions alike", "AP(decoupled) - AP(all) > seed noise"
    if ap("decoupled") is None or ap("all") is None:
        claims.append(_missing("decoupled_beats_all", c, check, "needs decoupled and all AP"))
    else:
        diff, noise = compare("decoupled", "all")
        claims.append(_claim("decoupled_beats_all", c, check, {"dAP": diff}, beyond_noise(diff, noise), "" if noise is not None else no_noise,
                             noise, noise is None))

    # 3. background regions carry knowledge too
    c = "background regions carry knowledge too"
    check = ("AP(background) - AP(baseline) > seed noise, and comparable to object-only: "
             "abs(AP(background) - AP(object)) <= max(seed noise, half the object-only gain) or AP(background) > "
             "AP(object)")
    if ap("background") is None or ap("baseline") is None or ap("object") is None:
        claims.append(_missing("background_carries_knowledge", c, check, "needs baseline, object and background AP"))
    else:
        gain, noise = compare("background", "baseline")
        obj_gain = ap("object") - ap("baseline")
        vs_obj, noise_obj = compare("background", "object")
        tolerance = max(noise_obj or 0.0, 0.5 * abs(obj_gain))
        comparable = vs_obj > 0 or abs(vs_obj) <= tolerance
        claims.append(_claim("background_carries_knowledge", c, check, {"dAP_vs_baseline": gain, "dAP_vs_object": vs_obj, "tolerance": tolerance},
                             beyond_noise(gain, noise) and comparable, "" if noise is not None else no_noise,
                             noise, noise is None))

    # 4. Fig. 1: the decoupled student is closest to the teacher in both regions
    claims.append(_channel_distance_claim("fig1_channel_distance", "Fig. 1: decoupled distils best in both regions",
                                          channel_distance))

    # 5. Fig. 2-3: gradients are larger on objects
    c, check = "Fig. 2-3: object regions get larger gradients", "mean gradient norm object / background > 1"
    if grad_norm_ratio is None or math.isnan(grad_norm_ratio):
        claims.append(_missing("fig2_3_gradients", c, check, "no gradient-norm ratio"))
    else:
        claims.append(_claim("fig2_3_gradients", c, check, {"ratio": grad_norm_ratio}, grad_norm_ratio > 1.0))

    # 6. Fig. 4-9: background distillation cuts background false positives
    c = "Fig. 4-9: background distillation cuts background false positives"
    check = "BG band (BG - Oth, overall, all areas) of background-only < that of object-only"
    bands = error_bands(errors) if errors else {}
    if "background" not in bands or "object" not in bands:
        claims.append(_missing("fig4_9_background_errors", c, check,
                               "no error analysis of the object-only and background-only students"))
    else:
        bg, obj = bands["background"], bands["object"]
        cats = [k for k in bg["per_category"] if k in obj["per_category"]]
        fewer = sum(bg["per_category"][k] < obj["per_category"][k] for k in cats)
        claims.append(_claim("fig4_9_background_errors", c, check, {"background": bg["overall"], "object": obj["overall"],
                                        "categories_lower": fewer, "categories": len(cats)},
                             bg["overall"] < obj["overall"]))
    # supplementary: Fig. 1 on the raw FPN output, where the adapters cannot absorb the difference
    if channel_distance_raw is not None:
        claims.append(_channel_distance_claim(
            "fig1_channel_distance_raw", "Fig. 1 (raw FPN output, no adapter): decoupled distils best in both regions", channel_distance_raw))
    return claims


def _channel_distance_claim(claim_id: str, claim: str, rows: Sequence[Mapping] | None) -> dict:
    """Decoupled student's mean channel distance to the teacher lowest of all students, in object and background."""
    check = "mean channel distance of the decoupled student lowest of the five students, in object and in background"
    if not rows:
        return _missing(claim_id, claim, check, "no channel-distance results")
    dist = {(r["student"], r["region"]): r["mean_distance"] for r in rows}
    names = list(dict.fromkeys(r["student"] for r in rows))
    if "decoupled" not in names or len(names) < 2:
        return _missing(claim_id, claim, check, "the decoupled student or its rivals are missing")
    value, passed = {}, True
    for region in ("object", "background"):
        own = dist.get(("decoupled", region))
        others = {n: dist.get((n, region)) for n in names if n != "decoupled"}
        finite = {n: v for n, v in others.items() if v is not None and not math.isnan(v)}
        best_other = min(finite, key=finite.get) if finite else None
        ok = own is not None and not math.isnan(own) and best_other is not None and own < finite[best_other]
        value[region] = {"decoupled": own, "best_other": best_other, "best_other_distance": finite.get(best_other)}
        passed = passed and ok
    return _claim(claim_id, claim, check, value, passed)


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
