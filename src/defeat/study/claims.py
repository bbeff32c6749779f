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
* **A beats B** = Welch's t-test over the seeds, one-sided, ``p < alpha`` (0.05); **A is comparable to B** = TOST
  equivalence with the preset's margin (``claims.margin_ap``, in AP points), both one-sided p < alpha
  (:mod:`defeat.study.stats`). Every test reports the means, the difference, its Welch CI (95 % for beats, 90 % for
  TOST) and the p-value. Fewer than two seeds in an arm: the test is not decided and the claim does not pass
  ("needs >= 2 seeds"). A claim made of several tests passes when all of them pass; its ``p_value`` is the largest.
  No tolerance depends on the size of the effect.
* **Gap closed** = (AP_student - AP_baseline) / (AP_teacher - AP_baseline); undefined (``None``) when the teacher
  is not better than the baseline.
* The figure claims (Fig. 1 over seeds: Welch on the per-seed mean channel distances; Fig. 2-3 and Fig. 4-9:
  descriptive, one measurement) say which test they use in ``test``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from defeat.study.stats import ALPHA, NEEDS_SEEDS, beats, equivalent

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
MARGIN_AP = 1.0  # default equivalence margin of "comparable" (AP points); presets state theirs (claims.margin_ap)


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


def gap_closed(ap_student: float, ap_baseline: float, ap_teacher: float) -> float | None:
    """(AP_student - AP_baseline) / (AP_teacher - AP_baseline); ``None`` when the teacher is not better."""
    gap = ap_teacher - ap_baseline
    if not gap > 0:
        return None
    return (ap_student - ap_baseline) / gap


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
        row["gap_closed"] = (
            None if base is None or ap is None or t_ap is None or name == "baseline" else gap_closed(ap, base, t_ap)
        )
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ claims
#: the claims by id, in the report's order (the supplementary's six, then Fig. 1 on the raw FPN output)
CLAIM_IDS = (
    "defeat_lifts_student",
    "decoupled_beats_all",
    "background_carries_knowledge",
    "fig1_channel_distance",
    "fig2_3_gradients",
    "fig4_9_background_errors",
    "fig1_channel_distance_raw",
)

#: the loss whose gradients the Fig. 2-3 claim tests (the others are shown as controls)
GRAD_CLAIM_LOSS = "distillation"


def _claim(
    claim_id: str,
    claim: str,
    check: str,
    value: Any,
    passed: bool | None,
    note: str = "",
    tests: Sequence[Mapping] = (),
    test: str = "",
    indicative: bool = False,
) -> dict:
    """One claim. ``tests``: the statistical tests it is made of (each a :mod:`~defeat.study.stats` result with a
    ``label``); ``test`` / ``p_value`` / ``decided`` summarise them (largest p; decided when every test is)."""
    tests = [dict(t) for t in tests]
    p_values = [t.get("p_value") for t in tests]
    decided = all(t.get("decided") for t in tests) if tests else passed is not None
    return {
        "id": claim_id,
        "claim": claim,
        "check": check,
        "test": test or " + ".join(dict.fromkeys(t["test"] for t in tests)) or "descriptive",
        "value": value,
        "tests": tests,
        "p_value": max(p_values) if tests and None not in p_values else None,
        "decided": decided,
        "pass": passed,
        "indicative": indicative,
        "note": note,
    }


def _missing(claim_id: str, claim: str, check: str, what: str) -> dict:
    return _claim(claim_id, claim, check, None, None, f"not computed: {what}")


def claims_by_id(claims: Sequence[Mapping]) -> dict[str, Mapping]:
    """``{id: claim}`` of a claims list (what results.json stores as ``claims``)."""
    return {c["id"]: c for c in claims}


def _not_decided(tests: Sequence[Mapping]) -> str:
    return "" if all(t["decided"] for t in tests) else f"cannot be decided: {NEEDS_SEEDS}"


def compute_claims(
    teacher: Mapping | None,
    students: Mapping[str, Sequence[Mapping]],
    channel_distance: Sequence[Mapping] | None = None,
    grad_norm: float | Mapping[str, float] | None = None,
    errors: Sequence[Mapping] | None = None,
    channel_distance_raw: Sequence[Mapping] | None = None,
    *,
    margin_ap: float = MARGIN_AP,
    alpha: float = ALPHA,
    gap_closed_min: float = GAP_CLOSED_MIN,
) -> list[dict]:
    """The six claims of the supplementary, each ``{id, claim, check, test, value, tests, p_value, decided, pass,
    indicative, note}``, plus a seventh when ``channel_distance_raw`` is given: Fig. 1 measured on the students'
    raw FPN output. Address them by ``id`` (:data:`CLAIM_IDS`, :func:`claims_by_id`), not by position.

    ``channel_distance``: the summary rows of ``defeat analyze channel-distance`` (``student``, ``region``,
    ``mean_distance``); a student trained with several seeds appears once per seed as ``<student>_s<seed>``.
    ``grad_norm``: object/background mean gradient-norm ratio over every image and level, per loss
    (``{"detection": r, "distillation": r, "sum": r}``; a bare number is the ratio of the summed loss).
    ``errors``: rows of ``errors_table.json`` of ``defeat analyze errors`` (``model``, ``category``, ``area``,
    ``band_BG``). ``margin_ap``: the equivalence margin of "comparable", in AP points (AP × 100).
    ``pass`` is ``None`` when the numbers needed are missing, ``False`` when a test cannot be decided.
    """
    groups = {name: summarize_group(runs) for name, runs in students.items() if runs}
    margin = margin_ap / 100.0

    def ap(name):
        return groups[name]["AP"]["mean"] if name in groups and "AP" in groups[name] else None

    def values(name):
        return groups[name]["AP"]["values"]

    def beat(a: str, b: str) -> dict:
        return dict(beats(values(a), values(b), alpha), label=f"{a} > {b}", unit="AP")

    claims = []

    # 1. DeFeat lifts the student toward the teacher
    c, check = (
        "DeFeat lifts the student toward the teacher",
        f"AP(decoupled) > AP(baseline) (Welch, one-sided, p < {alpha}); gap closed >= {gap_closed_min:.0%} "
        "(on the means)",
    )
    if ap("decoupled") is None or ap("baseline") is None or not teacher or teacher.get("AP") is None:
        claims.append(_missing("defeat_lifts_student", c, check, "needs teacher, baseline and decoupled AP"))
    else:
        test = beat("decoupled", "baseline")
        closed = gap_closed(ap("decoupled"), ap("baseline"), float(teacher["AP"]))
        note = _not_decided([test])
        if closed is None:
            note = "; ".join(x for x in (note, "the teacher is not better than the baseline: no gap to close") if x)
        passed = test["pass"] and closed is not None and closed >= gap_closed_min
        claims.append(
            _claim("defeat_lifts_student", c, check, {"dAP": test["diff"], "gap_closed": closed}, passed, note, [test])
        )

    # 2. decoupled beats treating all regions alike
    c, check = "decoupled beats treating all regions alike", f"AP(decoupled) > AP(all) (Welch, one-sided, p < {alpha})"
    if ap("decoupled") is None or ap("all") is None:
        claims.append(_missing("decoupled_beats_all", c, check, "needs decoupled and all AP"))
    else:
        test = beat("decoupled", "all")
        claims.append(
            _claim("decoupled_beats_all", c, check, {"dAP": test["diff"]}, test["pass"], _not_decided([test]), [test])
        )

    # 3. background regions carry knowledge too: background-only beats the baseline and reaches the same AP as
    # object-only (the supplementary: both 39.9 mAP), i.e. equivalent within the stated margin
    c = "background regions carry knowledge too"
    check = (
        f"AP(background) > AP(baseline) (Welch, one-sided, p < {alpha}), and AP(background) comparable to "
        f"AP(object): TOST within ±{margin_ap:g} AP (90 % CI of the difference inside the margin)"
    )
    if ap("background") is None or ap("baseline") is None or ap("object") is None:
        claims.append(_missing("background_carries_knowledge", c, check, "needs baseline, object and background AP"))
    else:
        gain = beat("background", "baseline")
        same = dict(
            equivalent(values("background"), values("object"), margin, alpha), label="background ≈ object", unit="AP"
        )
        claims.append(
            _claim(
                "background_carries_knowledge",
                c,
                check,
                {"dAP_vs_baseline": gain["diff"], "dAP_vs_object": same["diff"], "margin": margin},
                gain["pass"] and same["pass"],
                _not_decided([gain, same]),
                [gain, same],
            )
        )

    # 4. Fig. 1: the decoupled student is closest to the teacher in both regions
    claims.append(
        _channel_distance_claim(
            "fig1_channel_distance", "Fig. 1: decoupled distils best in both regions", channel_distance, alpha
        )
    )

    # 5. Fig. 2-3: gradients of the distillation loss are larger on objects (detection loss alone: the control)
    claims.append(_grad_claim(grad_norm))

    # 6. Fig. 4-9: background distillation cuts background false positives
    c = "Fig. 4-9: background distillation cuts background false positives"
    check = (
        "BG band (BG - Oth, overall, all areas) of background-only < that of object-only, and lower in most "
        "categories (more than half of those where the two differ)"
    )
    bands = error_bands(errors) if errors else {}
    if "background" not in bands or "object" not in bands:
        claims.append(
            _missing(
                "fig4_9_background_errors",
                c,
                check,
                "no error analysis of the object-only and background-only students",
            )
        )
    else:
        bg, obj = bands["background"], bands["object"]
        cats = [k for k in bg["per_category"] if k in obj["per_category"]]
        fewer = sum(bg["per_category"][k] < obj["per_category"][k] for k in cats)
        more = sum(bg["per_category"][k] > obj["per_category"][k] for k in cats)
        passed = bg["overall"] < obj["overall"] and fewer * 2 > fewer + more
        claims.append(
            _claim(
                "fig4_9_background_errors",
                c,
                check,
                {
                    "background": bg["overall"],
                    "object": obj["overall"],
                    "categories_lower": fewer,
                    "categories_higher": more,
                    "categories_tied": len(cats) - fewer - more,
                    "categories": len(cats),
                },
                passed,
                "first seed of each student",
                test="descriptive (one run each)",
            )
        )
    # supplementary: Fig. 1 on the raw FPN output, where the adapters cannot absorb the difference
    if channel_distance_raw is not None:
        claims.append(
            _channel_distance_claim(
                "fig1_channel_distance_raw",
                "Fig. 1 (raw FPN output, no adapter): decoupled distils best in both regions",
                channel_distance_raw,
                alpha,
            )
        )
    return claims


def _grad_claim(grad_norm: float | Mapping[str, float] | None) -> dict:
    """Fig. 2-3: the object/background gradient-norm ratio of the distillation loss alone > 1 (the detection loss
    alone and the sum are reported beside it: a ratio above 1 of the sum may come from the detection loss)."""
    claim_id, c = "fig2_3_gradients", "Fig. 2-3: object regions get larger gradients from the distillation loss"
    check = (
        f"mean gradient norm object / background > 1 for the {GRAD_CLAIM_LOSS} loss alone "
        "(detection loss alone and the sum: controls)"
    )
    ratios = {"sum": grad_norm} if isinstance(grad_norm, (int, float)) else dict(grad_norm or {})
    ratios = {k: float(v) for k, v in ratios.items() if v is not None and not math.isnan(float(v))}
    tested = GRAD_CLAIM_LOSS if GRAD_CLAIM_LOSS in ratios else "sum" if "sum" in ratios else None
    if tested is None:
        return _missing(claim_id, c, check, "no gradient-norm ratio")
    note = (
        ""
        if tested == GRAD_CLAIM_LOSS
        else (f"only the {tested} loss was measured: the detection loss alone may explain the ratio (no control)")
    )
    value = {f"ratio_{k}": ratios[k] for k in ("detection", "distillation", "sum") if k in ratios}
    return dict(
        _claim(
            claim_id,
            c,
            check,
            dict(value, tested=tested),
            ratios[tested] > 1.0,
            note,
            test="descriptive (pooled over images and levels)",
        ),
        tested_loss=tested,
    )


_SEED_SUFFIX = re.compile(r"^(.*)_s(\d+)$")


def student_of(run: str) -> str:
    """The student of a run name: ``decoupled_s2`` -> ``decoupled`` (a name without a seed suffix is kept)."""
    m = _SEED_SUFFIX.match(str(run))
    return m.group(1) if m else str(run)


def channel_distance_groups(rows: Sequence[Mapping]) -> dict[str, dict[str, list[float]]]:
    """``{student: {region: [mean distance of each seed]}}`` of channel-distance summary rows whose ``student`` is
    ``<student>`` or ``<student>_s<seed>`` (NaN distances dropped)."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        name = student_of(r["student"])
        value = r.get("mean_distance")
        entry = out.setdefault(name, {"object": [], "background": []})
        if value is not None and not math.isnan(float(value)) and r["region"] in entry:
            entry[r["region"]].append(float(value))
    return out


def _channel_distance_claim(claim_id: str, claim: str, rows: Sequence[Mapping] | None, alpha: float) -> dict:
    """Decoupled student's mean channel distance to the teacher lower than every other student's, in object and
    in background: a one-sided Welch test over seeds against the closest rival (lowest mean) of each region."""
    check = (
        f"mean channel distance of the decoupled student below the closest other student's, in object and in "
        f"background (Welch over seeds, one-sided, p < {alpha})"
    )
    if not rows:
        return _missing(claim_id, claim, check, "no channel-distance results")
    groups = channel_distance_groups(rows)
    if "decoupled" not in groups or len(groups) < 2:
        return _missing(claim_id, claim, check, "the decoupled student or its rivals are missing")
    value, tests, passed = {}, [], True
    for region in ("object", "background"):
        own = groups["decoupled"][region]
        others = {n: g[region] for n, g in groups.items() if n != "decoupled" and g[region]}
        mean = lambda xs: sum(xs) / len(xs)
        best_other = min(others, key=lambda n: mean(others[n])) if others else None
        value[region] = {
            "decoupled": mean(own) if own else None,
            "best_other": best_other,
            "best_other_distance": mean(others[best_other]) if best_other else None,
            "seeds": len(own),
        }
        if not own or best_other is None:
            passed = False
            continue
        test = dict(
            beats(others[best_other], own, alpha),
            label=f"{region}: {best_other} > decoupled (distance)",
            unit="distance",
        )
        tests.append(test)
        passed = passed and test["pass"]
    return _claim(claim_id, claim, check, value, passed, _not_decided(tests) if tests else "", tests)


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
