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
* **Three outcomes.** Each test has a ``power``: the probability it passes at the pre-registered seed sd
  (``claims.assumed_sd_ap``) when the true difference is the pre-registered effect (Welch; ``claims.effect_ap``)
  or 0 (TOST at ``margin_ap``), with the seeds it got (:mod:`defeat.study.stats`). A test that passes is
  ``pass`` (at any power: alpha holds); one that does not pass is ``fail`` when its power reached
  ``claims.power_target`` (0.8) and ``undecidable`` ("undecidable at this budget (power P)") when it did not, or when
  an arm has fewer than 2 seeds. A claim of several tests fails when one fails, passes when all pass, and is
  undecidable otherwise; its ``power`` is the smallest of its tests' (an upper bound of the claim's own).
* ``defeat_lifts_student`` also needs the regime (:mod:`defeat.study.regime`): out of it, or with the regime not
  measured, it is ``undecidable`` with the reason -- a gain over an under-trained baseline is a head start.
* Fig. 1 is decided on the students' raw FPN output (Welch over seeds; power at ``claims.distance_effect`` /
  ``distance_sd``), the adapter output reported beside it; Fig. 2-3 on percentile-bootstrap CIs over images of the
  object/background gradient-norm ratio per FPN level (the detection loss alone as the control); Fig. 4-9 is
  descriptive (one run each). Their ``test`` says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from defeat.study.regime import failed_conditions
from defeat.study.stats import (
    ALPHA,
    NEEDS_SEEDS,
    POWER_TARGET,
    beats,
    bootstrap_ratio,
    equivalent,
    power_beats,
    power_equivalent,
    seeds_for_power,
)

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

#: the outcomes of a test and of a claim (``None`` outcome: n/a, the numbers it needs are missing)
PASS, FAIL, UNDECIDABLE = "pass", "fail", "undecidable"
#: the claims whose Welch tests on AP are powered for ``claims.effect_ap`` (a number, or one per claim id)
POWERED_CLAIMS = ("defeat_lifts_student", "decoupled_beats_all", "background_carries_knowledge")
#: the students whose seeds are the arms of the AP claims (``claims.seeds_per_arm`` pre-registers their number)
SEED_ARMS = ("baseline", "object", "background", "all", "decoupled")
#: the AP tests of the claims: (claim id, label, kind, arm A, arm B); kind ``beats`` (Welch) or ``equivalent`` (TOST)
AP_TESTS = (
    ("defeat_lifts_student", "decoupled > baseline", "beats", "decoupled", "baseline"),
    ("decoupled_beats_all", "decoupled > all", "beats", "decoupled", "all"),
    ("background_carries_knowledge", "background > baseline", "beats", "background", "baseline"),
    ("background_carries_knowledge", "background ≈ object", "equivalent", "background", "object"),
)


@dataclass(frozen=True)
class ClaimSettings:
    """How the claims are decided: the preset's ``claims`` section (AP values in AP points, as the preset writes
    them). ``assumed_sd_ap`` None: no power is computed and a test that does not pass fails (as before power)."""

    margin_ap: float = MARGIN_AP
    alpha: float = ALPHA
    gap_closed_min: float = GAP_CLOSED_MIN
    assumed_sd_ap: float | None = None
    effect_ap: float | Mapping[str, float] | None = None
    power_target: float = POWER_TARGET
    distance_sd: float | None = None
    distance_effect: float | None = None
    grad_levels: tuple[str, ...] | None = None
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> ClaimSettings:
        """From a preset's ``claims`` section (keys that are not settings here, e.g. ``seeds_per_arm``, ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in section.items() if k in known and v is not None}
        if "grad_levels" in values:
            values["grad_levels"] = tuple(values["grad_levels"])
        return cls(**values)

    def effect(self, claim_id: str) -> float | None:
        """The effect (AP points) the Welch tests of ``claim_id`` are powered for (``effect_ap``: a number for every
        claim, or ``{claim id: number, default: number}``)."""
        if isinstance(self.effect_ap, Mapping):
            return self.effect_ap.get(claim_id, self.effect_ap.get("default"))
        return self.effect_ap


def ap_test_power(kind: str, claim_id: str, n_a: int, n_b: int, settings: ClaimSettings) -> dict:
    """``{power, effect | margin (AP fractions), assumed_sd}`` of one AP test at the pre-registered sd (power None
    when no sd or no effect is pre-registered)."""
    sd = settings.assumed_sd_ap
    if kind == "equivalent":
        power = None if sd is None else power_equivalent(settings.margin_ap, sd, n_a, n_b, settings.alpha)
        return {"power": power, "margin": settings.margin_ap / 100.0, "assumed_sd": None if sd is None else sd / 100}
    effect = settings.effect(claim_id)
    power = None if sd is None or effect is None else power_beats(effect, sd, n_a, n_b, settings.alpha)
    return {
        "power": power,
        "effect": None if effect is None else effect / 100.0,
        "assumed_sd": None if sd is None else sd / 100,
    }


def power_plan(seeds: Mapping[str, int], settings: ClaimSettings) -> list[dict]:
    """Before the run: every AP test (and Fig. 1's, with a distance sd) with its seeds per arm, effect or margin,
    the pre-registered sd, its ``power`` and the seeds per arm that would reach ``power_target``
    (``seeds_for_target``; None when no sd is pre-registered or 1000 do not)."""
    rows = []
    target = settings.power_target
    for claim_id, label, kind, a, b in AP_TESTS:
        if a not in seeds or b not in seeds:
            continue
        row = {"id": claim_id, "test": label, "kind": kind, "seeds": [int(seeds[a]), int(seeds[b])], "unit": "AP"}
        row.update(ap_test_power(kind, claim_id, seeds[a], seeds[b], settings))
        row["power_target"] = target
        row["seeds_for_target"] = (
            None
            if row["power"] is None
            else seeds_for_power(
                lambda n, kind=kind, claim_id=claim_id: ap_test_power(kind, claim_id, n, n, settings)["power"], target
            )
        )
        rows.append(row)
    if settings.distance_sd is not None and "decoupled" in seeds:
        others = [seeds[s] for s in FIG1_STUDENTS if s != "decoupled" and s in seeds]
        if others:
            n_a, n_b = min(others), int(seeds["decoupled"])
            power_of = lambda n: power_beats(settings.distance_effect, settings.distance_sd, n, n, settings.alpha)
            rows.append(
                {
                    "id": "fig1_channel_distance",
                    "test": "closest rival > decoupled (distance), per region",
                    "kind": "beats",
                    "seeds": [n_a, n_b],
                    "unit": "distance",
                    "power": power_beats(settings.distance_effect, settings.distance_sd, n_a, n_b, settings.alpha),
                    "effect": settings.distance_effect,
                    "assumed_sd": settings.distance_sd,
                    "power_target": target,
                    "seeds_for_target": seeds_for_power(power_of, target),
                }
            )
    return rows


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
#: the claims by id, in the report's order (the supplementary's six)
CLAIM_IDS = (
    "defeat_lifts_student",
    "decoupled_beats_all",
    "background_carries_knowledge",
    "fig1_channel_distance",
    "fig2_3_gradients",
    "fig4_9_background_errors",
)

#: the loss whose gradients the Fig. 2-3 claim tests (the detection loss alone is the control)
GRAD_CLAIM_LOSS = "distillation"
GRAD_CONTROL_LOSS = "detection"


def outcome_of_test(test: Mapping, power: float | None, target: float) -> str:
    """``pass`` when the test passed (at any power); ``fail`` when it was decided, did not pass and had
    ``power >= target`` (or no power was pre-registered); ``undecidable`` otherwise (low power, or < 2 seeds)."""
    if test.get("pass"):
        return PASS
    if not test.get("decided") or (power is not None and power < target):
        return UNDECIDABLE
    return FAIL


def combine_outcomes(outcomes: Sequence[str]) -> str:
    """A claim of several tests: ``fail`` when one fails, ``pass`` when all pass, ``undecidable`` otherwise."""
    if FAIL in outcomes:
        return FAIL
    return PASS if outcomes and all(o == PASS for o in outcomes) else UNDECIDABLE


def _min_power(tests: Sequence[Mapping]) -> float | None:
    powers = [t["power"] for t in tests if t.get("power") is not None]
    return min(powers) if powers else None


def _undecidable_note(tests: Sequence[Mapping], power: float | None) -> str:
    if not all(t.get("decided") for t in tests):
        return f"undecidable: {NEEDS_SEEDS}"
    return f"undecidable at this budget (power {power:.2f})" if power is not None else "undecidable"


def _claim(
    claim_id: str,
    claim: str,
    check: str,
    value: Any,
    outcome: str | None,
    note: str = "",
    tests: Sequence[Mapping] = (),
    test: str = "",
    indicative: bool = False,
    seeds: Mapping[str, int] | None = None,
    power: float | None = None,
    power_target: float = POWER_TARGET,
    undecidable_because: str | None = None,
    **extra: Any,
) -> dict:
    """One claim. ``outcome``: ``pass`` / ``fail`` / ``undecidable`` (None: n/a, numbers missing); ``pass`` is
    ``outcome == "pass"`` (None when n/a), ``decided`` whether it is pass or fail. ``tests``: the statistical tests it
    is made of (each a :mod:`~defeat.study.stats` result with ``label``, ``power``, ``outcome``); ``p_value`` is the
    largest of theirs. ``undecidable_because``: ``regime``, ``seeds`` (an arm with < 2 seeds) or ``power`` (below the
    target); derived from the tests when not given. ``extra``: ``effect`` / ``margin`` / ``unit`` and claim-specific
    keys."""
    tests = [dict(t) for t in tests]
    extra = {"effect": None, "margin": None, "unit": None, **extra}  # every claim has the keys
    if outcome != UNDECIDABLE:
        undecidable_because = None
    elif undecidable_because is None:
        undecidable_because = "seeds" if not tests or not all(t.get("decided") for t in tests) else "power"
    p_values = [t.get("p_value") for t in tests]
    return {
        "id": claim_id,
        "claim": claim,
        "check": check,
        "test": test or " + ".join(dict.fromkeys(t["test"] for t in tests)) or "descriptive",
        "value": value,
        "tests": tests,
        "p_value": max(p_values) if tests and None not in p_values else None,
        "outcome": outcome,
        "decided": outcome in (PASS, FAIL),
        "pass": None if outcome is None else outcome == PASS,
        "seeds": dict(seeds) if seeds else None,
        "power": power,
        "power_target": power_target,
        "undecidable_because": undecidable_because,
        "indicative": indicative,
        "note": note,
        **extra,
    }


def _missing(claim_id: str, claim: str, check: str, what: str, **extra: Any) -> dict:
    return _claim(claim_id, claim, check, None, None, f"not computed: {what}", **extra)


def claims_by_id(claims: Sequence[Mapping]) -> dict[str, Mapping]:
    """``{id: claim}`` of a claims list (what results.json stores as ``claims``)."""
    return {c["id"]: c for c in claims}


def compute_claims(
    teacher: Mapping | None,
    students: Mapping[str, Sequence[Mapping]],
    channel_distance: Sequence[Mapping] | None = None,
    grad_norm: Mapping[str, Sequence[Mapping]] | None = None,
    errors: Sequence[Mapping] | None = None,
    channel_distance_raw: Sequence[Mapping] | None = None,
    *,
    regime: Mapping | None = None,
    settings: ClaimSettings | None = None,
) -> list[dict]:
    """The six claims of the supplementary, each ``{id, claim, check, test, value, tests, p_value, outcome, decided,
    pass, seeds, power, power_target, indicative, note}`` (+ ``effect`` / ``margin`` / ``unit`` where a test has
    them). Address them by ``id`` (:data:`CLAIM_IDS`, :func:`claims_by_id`), not by position.

    ``channel_distance`` / ``channel_distance_raw``: the summary rows of ``defeat analyze channel-distance``
    (``student``, ``region``, ``mean_distance``) on the adapter output and on the raw FPN output; a student trained
    with several seeds appears once per seed as ``<student>_s<seed>``. Fig. 1 is decided on the raw rows.
    ``grad_norm``: ``{loss: rows of grad_norm_ratio.json}`` for ``detection`` / ``distillation`` / ``sum``, with the
    per-image rows (``image_id``, ``level``, ``object_mean``, ``object_pixels``, ``background_mean``,
    ``background_pixels``). ``errors``: rows of ``errors_table.json`` (``model``, ``category``, ``area``,
    ``band_BG``). ``regime``: the ``regime`` object (:func:`defeat.study.regime.regime`), or None (not measured).
    ``outcome`` is None (n/a) when the numbers needed are missing.
    """
    settings = settings or ClaimSettings()
    alpha, target = settings.alpha, settings.power_target
    groups = {name: summarize_group(runs) for name, runs in students.items() if runs}

    def ap(name):
        return groups[name]["AP"]["mean"] if name in groups and "AP" in groups[name] else None

    def values(name):
        return groups[name]["AP"]["values"]

    def run_test(claim_id: str, label: str) -> dict:
        _, _, kind, a, b = next(t for t in AP_TESTS if t[0] == claim_id and t[1] == label)
        if kind == "beats":
            result = beats(values(a), values(b), alpha)
        else:
            result = equivalent(values(a), values(b), settings.margin_ap / 100.0, alpha)
        result = dict(
            result, label=label, unit="AP", **ap_test_power(kind, claim_id, result["n_a"], result["n_b"], settings)
        )
        return dict(result, outcome=outcome_of_test(result, result["power"], target))

    def from_tests(claim_id, c, check, value, tests, seeds, note="", outcome=None, **extra) -> dict:
        outcome = outcome or combine_outcomes([t["outcome"] for t in tests])
        power = _min_power(tests)
        if outcome == UNDECIDABLE and not note:
            note = _undecidable_note(tests, power)
        return _claim(
            claim_id, c, check, value, outcome, note, tests, seeds=seeds, power=power, power_target=target, **extra
        )

    claims = []

    # 1. DeFeat lifts the student toward the teacher -- in the paper's regime only
    c = "DeFeat lifts the student toward the teacher"
    check = (
        f"AP(decoupled) > AP(baseline) (Welch, one-sided, p < {alpha}); gap closed >= {settings.gap_closed_min:.0%} "
        "(on the means); in the regime (teacher ahead by capacity on the students' schedule, baseline near its "
        "plateau by the doubling test, every distilled student below the teacher)"
    )
    effect = settings.effect("defeat_lifts_student")
    extra = {"effect": None if effect is None else effect / 100.0, "unit": "AP"}
    if ap("decoupled") is None or ap("baseline") is None or not teacher or teacher.get("AP") is None:
        claims.append(_missing("defeat_lifts_student", c, check, "needs teacher, baseline and decoupled AP", **extra))
    else:
        test = run_test("defeat_lifts_student", "decoupled > baseline")
        closed = gap_closed(ap("decoupled"), ap("baseline"), float(teacher["AP"]))
        outcome, note = test["outcome"], ""
        if outcome == PASS and (closed is None or closed < settings.gap_closed_min):
            outcome = FAIL
            note = (
                "the teacher is not better than the baseline: no gap to close"
                if closed is None
                else f"gap closed {closed:.0%} < {settings.gap_closed_min:.0%}"
            )
        in_regime = (regime or {}).get("in_regime")
        if in_regime is not True:
            reasons = failed_conditions(regime) if regime else ["the regime was not measured"]
            outcome, note = UNDECIDABLE, "undecidable: out of the paper's regime (" + "; ".join(reasons) + ")"
            extra["undecidable_because"] = "regime"
        seeds = {"decoupled": test["n_a"], "baseline": test["n_b"]}
        claims.append(
            from_tests(
                "defeat_lifts_student",
                c,
                check,
                {"dAP": test["diff"], "gap_closed": closed, "in_regime": in_regime},
                [test],
                seeds,
                note,
                outcome,
                **extra,
            )
        )

    # 2. decoupled beats treating all regions alike
    c, check = "decoupled beats treating all regions alike", f"AP(decoupled) > AP(all) (Welch, one-sided, p < {alpha})"
    effect = settings.effect("decoupled_beats_all")
    extra = {"effect": None if effect is None else effect / 100.0, "unit": "AP"}
    if ap("decoupled") is None or ap("all") is None:
        claims.append(_missing("decoupled_beats_all", c, check, "needs decoupled and all AP", **extra))
    else:
        test = run_test("decoupled_beats_all", "decoupled > all")
        seeds = {"decoupled": test["n_a"], "all": test["n_b"]}
        claims.append(from_tests("decoupled_beats_all", c, check, {"dAP": test["diff"]}, [test], seeds, **extra))

    # 3. background regions carry knowledge too: background-only beats the baseline and reaches the same AP as
    # object-only (the supplementary: both 39.9 mAP), i.e. equivalent within the stated margin
    c = "background regions carry knowledge too"
    check = (
        f"AP(background) > AP(baseline) (Welch, one-sided, p < {alpha}), and AP(background) comparable to "
        f"AP(object): TOST within ±{settings.margin_ap:g} AP (90 % CI of the difference inside the margin)"
    )
    effect = settings.effect("background_carries_knowledge")
    margin = settings.margin_ap / 100.0
    extra = {"effect": None if effect is None else effect / 100.0, "margin": margin, "unit": "AP"}
    if ap("background") is None or ap("baseline") is None or ap("object") is None:
        claims.append(
            _missing("background_carries_knowledge", c, check, "needs baseline, object and background AP", **extra)
        )
    else:
        gain = run_test("background_carries_knowledge", "background > baseline")
        same = run_test("background_carries_knowledge", "background ≈ object")
        seeds = {"background": gain["n_a"], "baseline": gain["n_b"], "object": same["n_b"]}
        value = {"dAP_vs_baseline": gain["diff"], "dAP_vs_object": same["diff"], "margin": margin}
        claims.append(from_tests("background_carries_knowledge", c, check, value, [gain, same], seeds, **extra))

    # 4. Fig. 1: the decoupled student is closest to the teacher in both regions, on the raw FPN output
    claims.append(_fig1_claim(channel_distance_raw, channel_distance, settings))

    # 5. Fig. 2-3: gradients of the distillation loss are larger on objects (detection loss alone: the control)
    claims.append(_grad_claim(grad_norm, settings))

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
                PASS if passed else FAIL,
                "first seed of each student; descriptive: no power",
                test="descriptive (one run each)",
                seeds={"background": 1, "object": 1},
                power_target=target,
            )
        )
    return claims


def _region_sums(rows: Sequence[Mapping]) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per row: object sum (= mean x pixels), object pixels, background sum, background pixels (an empty region's
    NaN mean counts as 0)."""

    def total(mean, count):
        return 0.0 if not count or mean is None or math.isnan(float(mean)) else float(mean) * float(count)

    return (
        [total(r.get("object_mean"), r.get("object_pixels")) for r in rows],
        [float(r.get("object_pixels") or 0) for r in rows],
        [total(r.get("background_mean"), r.get("background_pixels")) for r in rows],
        [float(r.get("background_pixels") or 0) for r in rows],
    )


def grad_ratio_cis(rows: Sequence[Mapping], levels: Sequence[str] | None, settings: ClaimSettings) -> dict:
    """``{level: bootstrap_ratio result}`` of one loss's per-image rows (``image_id`` != ``all``): the
    object/background ratio pooled over the images, with its ``1 - 2 alpha`` percentile bootstrap CI over images
    (its lower end is the one-sided ``alpha`` bound), for each level and for ``all`` (every level of an image
    pooled)."""
    per_image = [r for r in rows if r.get("image_id") != "all" and r.get("level") != "all"]
    found = list(dict.fromkeys(r["level"] for r in per_image))
    out = {}
    for level in list(levels or found) + ["all"]:
        if level == "all":
            by_image: dict[Any, list[float]] = {}
            for r, sums in zip(per_image, zip(*_region_sums(per_image))):
                acc = by_image.setdefault(r["image_id"], [0.0, 0.0, 0.0, 0.0])
                for k in range(4):
                    acc[k] += sums[k]
            columns = [list(col) for col in zip(*by_image.values())] if by_image else [[], [], [], []]
        else:
            columns = list(_region_sums([r for r in per_image if r["level"] == level]))
        out[level] = bootstrap_ratio(
            *columns,
            confidence=1 - 2 * settings.alpha,
            resamples=settings.bootstrap_resamples,
            seed=settings.bootstrap_seed,
        )
    return out


def _grad_claim(grad_norm: Mapping[str, Sequence[Mapping]] | None, settings: ClaimSettings) -> dict:
    """Fig. 2-3: at every claimed FPN level (``claims.grad_levels``; default every level measured), the lower end
    of the ``1 - 2 alpha`` percentile bootstrap CI over images of the distillation loss's object/background
    gradient-norm ratio is above 1. The same measurement for the detection loss alone (the control) and for the
    sum is reported beside it."""
    claim_id, c = "fig2_3_gradients", "Fig. 2-3: object regions get larger gradients from the distillation loss"
    level = 1 - 2 * settings.alpha
    check = (
        f"object / background mean gradient norm of the {GRAD_CLAIM_LOSS} loss alone > 1 at every "
        + ("FPN level measured" if settings.grad_levels is None else f"level of {', '.join(settings.grad_levels)}")
        + f": the lower end of its {level:.0%} percentile bootstrap CI over images ({settings.bootstrap_resamples} "
        f"resamples) above 1 (detection loss alone: the control, beside it)"
    )
    test = f"percentile bootstrap over images, per level (one-sided {settings.alpha})"
    for loss, rows in (grad_norm or {}).items():
        if not isinstance(rows, Sequence) or not all(isinstance(r, Mapping) for r in rows):
            raise ValueError(
                f"grad_norm[{loss!r}]: expected the rows of grad_norm_ratio.json, got {type(rows).__name__}"
            )
    rows = {k: [r for r in v if r.get("image_id") != "all"] for k, v in (grad_norm or {}).items() if v}
    tested = GRAD_CLAIM_LOSS if rows.get(GRAD_CLAIM_LOSS) else "sum" if rows.get("sum") else None
    if tested is None:
        return dict(_missing(claim_id, c, check, "no per-image gradient norms", test=test), tested_loss=None)
    cis = {loss: grad_ratio_cis(r, settings.grad_levels, settings) for loss, r in rows.items()}
    claimed = [lv for lv in cis[tested] if lv != "all"]
    missing = [lv for lv in claimed if cis[tested][lv]["ci"] is None]
    passed = not missing and all(cis[tested][lv]["ci"][0] > 1.0 for lv in claimed)
    below = [lv for lv in claimed if lv not in missing and not cis[tested][lv]["ci"][0] > 1.0]
    notes = []
    if tested != GRAD_CLAIM_LOSS:
        notes.append(f"only the {tested} loss was measured: the detection loss alone may explain the ratio")
    if missing:
        notes.append(f"no CI at {', '.join(missing)} (fewer than 2 images with both regions)")
    if below:
        notes.append(f"lower end <= 1 at {', '.join(below)}")
    images = cis[tested]["all"]["units"]
    value = {
        "tested": tested,
        "levels": {lv: {"ratio": r["estimate"], "ci": r["ci"]} for lv, r in cis[tested].items()},
        "control": {
            loss: {lv: {"ratio": r["estimate"], "ci": r["ci"]} for lv, r in cis[loss].items()}
            for loss in (GRAD_CONTROL_LOSS, "sum")
            if loss in cis and loss != tested
        },
        "ci_level": level,
        "images": images,
    }
    return dict(
        _claim(
            claim_id,
            c,
            check,
            value,
            PASS if passed else FAIL,
            "; ".join(notes),
            test=test,
            seeds={"images": images},
            power_target=settings.power_target,
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


def _channel_distance_tests(rows: Sequence[Mapping], settings: ClaimSettings) -> tuple[dict, list[dict]] | None:
    """Per region (object, background): the decoupled student's mean channel distance against the closest rival's
    (lowest mean), a one-sided Welch test over seeds (rival > decoupled) with its power at ``distance_effect``.
    None when the decoupled student or its rivals are missing."""
    groups = channel_distance_groups(rows)
    if "decoupled" not in groups or len(groups) < 2:
        return None
    value, tests = {}, []
    mean = lambda xs: sum(xs) / len(xs)
    for region in ("object", "background"):
        own = groups["decoupled"][region]
        others = {n: g[region] for n, g in groups.items() if n != "decoupled" and g[region]}
        best_other = min(others, key=lambda n: mean(others[n])) if others else None
        value[region] = {
            "decoupled": mean(own) if own else None,
            "best_other": best_other,
            "best_other_distance": mean(others[best_other]) if best_other else None,
            "seeds": len(own),
        }
        if not own or best_other is None:
            continue
        test = dict(
            beats(others[best_other], own, settings.alpha),
            label=f"{region}: {best_other} > decoupled (distance)",
            unit="distance",
            rival=best_other,
        )
        power = (
            None
            if settings.distance_sd is None
            else power_beats(settings.distance_effect, settings.distance_sd, test["n_a"], test["n_b"], settings.alpha)
        )
        test.update(
            power=power, effect=settings.distance_effect, outcome=outcome_of_test(test, power, settings.power_target)
        )
        tests.append(test)
    return value, tests


def _fig1_claim(raw: Sequence[Mapping] | None, adapter: Sequence[Mapping] | None, settings: ClaimSettings) -> dict:
    """Fig. 1, decided on the students' raw FPN output (no adapter: what the student itself carries): the
    decoupled student's mean channel distance below the closest other student's, in object and in background
    (Welch over seeds, one-sided). The same on the adapter output (what the adapters are trained to minimise) is
    reported beside it (``value["adapter_output"]``) and decides nothing."""
    claim_id, c = "fig1_channel_distance", "Fig. 1: decoupled distils best in both regions (raw FPN output)"
    check = (
        "mean channel distance of the decoupled student's raw FPN output below the closest other student's, in "
        f"object and in background (Welch over seeds, one-sided, p < {settings.alpha}); adapter output: secondary"
    )
    extra = {"effect": settings.distance_effect, "unit": "distance"}
    secondary = _channel_distance_tests(adapter, settings) if adapter else None
    adapter_value = None
    if secondary is not None:
        value, tests = secondary
        adapter_value = dict(
            value,
            tests=tests,
            outcome=combine_outcomes([t["outcome"] for t in tests]) if len(tests) == 2 else None,
        )
    if not raw:
        return _missing(claim_id, c, check, "no channel distances on the raw FPN output", **extra)
    measured = _channel_distance_tests(raw, settings)
    if measured is None:
        return _missing(claim_id, c, check, "the decoupled student or its rivals are missing", **extra)
    value, tests = measured
    seeds = {"decoupled": value["object"]["seeds"]}
    for t in tests:
        seeds[t["rival"]] = t["n_a"]
    outcome = combine_outcomes([t["outcome"] for t in tests]) if len(tests) == 2 else UNDECIDABLE
    power = _min_power(tests)
    note = "" if outcome != UNDECIDABLE else _undecidable_note(tests, power) if tests else "undecidable: no rival"
    if any(r.get("feature") == "probe" for r in raw):  # FPNs of different widths (defeat.analysis.channel_distance)
        probe = "raw FPN output through each student's own least-squares map to the teacher's channels (widths differ)"
        note = f"{probe}; {note}" if note else probe
    value = dict(value, adapter_output=adapter_value)
    return _claim(
        claim_id,
        c,
        check,
        value,
        outcome,
        note,
        tests,
        seeds=seeds,
        power=power,
        power_target=settings.power_target,
        **extra,
    )


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
