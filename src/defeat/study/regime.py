"""The regime of a ``defeat reproduce`` run: is the teacher ahead by capacity, is the baseline near its plateau,
are the distilled students below the teacher? Only in that regime does "DeFeat lifts the student" speak to the
paper (otherwise a gain may be a head start an under-trained baseline gets from any teacher).

Pure functions on plain numbers (no I/O, no torch). AP values are COCO fractions (x 100 = AP points).

* **Doubling test** (:func:`doubling_test`; decides the plateau): the baseline is trained for ``S`` steps (the
  students' schedule) and, in its own stage, for ``2S`` steps (the same schedule shape stretched: cosine over
  ``2S``, warmup doubled; the same seeds). ``plateau_gain = (mean AP(2S) - mean AP(S)) / mean AP(S)``; **near its
  plateau** when ``plateau_gain <= plateau_gain_max`` (0.10): doubling the schedule adds at most 10 %. The Welch CI
  of ``mean AP(2S) - mean AP(S)`` is reported beside it. Annealing cannot fool it: both runs end their schedule at
  a learning rate of 0.
* **Teacher lead** = teacher AP - mean AP of the baseline (its final evaluations, over seeds); ahead by capacity
  when the teacher is the bigger network on the students' schedule (``teacher_steps == student_steps``) and the
  lead is ``>= lead_min_ap`` (3 AP) and ``>= lead_min_sd`` (2) x the baseline's seed sd (sample, ddof 1).
* **Students below the teacher**: every distilled student's mean AP < the teacher's AP (gap closed < 100 %).
* ``in_regime``: every condition holds (False when one fails, None when one cannot be measured).

The AP-against-steps curves stay as a picture (``curves``; ``AP at f`` of a seed = the AP of its first evaluation
in ``[ceil(f * steps), ceil(f * steps) + w)``, ``w = max(1, steps // 8)``), with the **last-quarter gain**
``(AP@100% - AP@75%) / AP@100%`` as a description only: on a cosine schedule the last quarter's rise is mostly
annealing, near a plateau or not, so it decides nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from defeat.study.stats import MIN_SEEDS, welch

#: the fractions of the student schedule at which ``baseline_ap_at`` reports AP
FRACTIONS = (0.5, 0.75, 1.0)


def _label(fraction: float) -> str:
    return f"{round(100 * fraction)}%"


def ap_at(curve: Sequence[tuple[int, float]], steps: int, fraction: float) -> tuple[int, float] | None:
    """``(step, AP)`` of the first evaluation in ``[ceil(fraction * steps), ... + max(1, steps // 8))`` (None if
    there is none: an evaluation far later is not the AP at that point)."""
    target = math.ceil(fraction * steps - 1e-9)
    window = max(1, int(steps) // 8)
    later = sorted((int(s), float(a)) for s, a in curve if target <= int(s) < target + window)
    return later[0] if later else None


def ap_at_fractions(
    curves: Sequence[Sequence[tuple[int, float]]], steps: int, fractions: Sequence[float] = FRACTIONS
) -> dict:
    """``{"50%": {"AP": mean over seeds, "values": [per seed], "steps": [step used per seed]}, ...}``
    (``AP`` None when a seed has no evaluation at that point)."""
    out = {}
    for f in fractions:
        points = [ap_at(c, steps, f) for c in curves]
        found = [p for p in points if p is not None]
        complete = bool(found) and len(found) == len(points)
        out[_label(f)] = {
            "AP": sum(a for _, a in found) / len(found) if complete else None,
            "values": [a for _, a in found],
            "steps": [s for s, _ in found],
        }
    return out


def last_quarter_gain(ap_75: float | None, ap_100: float | None) -> float | None:
    """``(AP@100% - AP@75%) / AP@100%``; None when a value is missing or the final AP is not positive."""
    if ap_75 is None or ap_100 is None or not ap_100 > 0:
        return None
    return (ap_100 - ap_75) / ap_100


def mean_curve(curves: Sequence[Sequence[tuple[int, float]]]) -> list[dict]:
    """``[{"step", "AP" (mean over the seeds evaluated at that step), "std" (sample, None for one), "n"}]``."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for step, ap in curve:
            by_step.setdefault(int(step), []).append(float(ap))
    out = []
    for step in sorted(by_step):
        values = by_step[step]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
        out.append({"step": step, "AP": mean, "std": std, "n": len(values)})
    return out


def doubling_test(
    ap_s: Sequence[float], ap_2s: Sequence[float], gain_max: float = 0.10, confidence: float = 0.95
) -> dict:
    """The plateau test: ``plateau_gain = (mean(ap_2s) - mean(ap_s)) / mean(ap_s)``, near when ``<= gain_max``.

    ``ap_s`` / ``ap_2s``: the baseline's final AP per seed after S and after 2S steps (the same seeds). Returns
    ``{plateau_ap_s, plateau_ap_2s, plateau_gain, plateau_gain_max, near, diff, ci, ci_level, values_s, values_2s,
    note}``; ``ci`` is the two-sided Welch CI of ``mean(ap_2s) - mean(ap_s)`` (None with fewer than 2 seeds per
    arm); ``near`` is None when an arm is missing or mean AP(S) is not positive."""
    a, b = [float(v) for v in ap_s], [float(v) for v in ap_2s]
    out = {
        "plateau_ap_s": sum(a) / len(a) if a else None,
        "plateau_ap_2s": sum(b) / len(b) if b else None,
        "plateau_gain": None,
        "plateau_gain_max": gain_max,
        "near": None,
        "diff": None,
        "ci": None,
        "ci_level": confidence,
        "values_s": a,
        "values_2s": b,
        "note": "",
    }
    if not a or not b:
        out["note"] = "not measured: " + ("no baseline AP at S steps" if not a else "no baseline trained for 2S steps")
        return out
    out["diff"] = out["plateau_ap_2s"] - out["plateau_ap_s"]
    if len(a) >= MIN_SEEDS and len(b) >= MIN_SEEDS:
        out["ci"] = welch(b, a, confidence)["ci"]
    else:
        out["note"] = f"no CI: needs >= {MIN_SEEDS} seeds per arm"
    if not out["plateau_ap_s"] > 0:
        out["note"] = "; ".join(x for x in (out["note"], "mean AP(S) is 0: the relative gain is undefined") if x)
        return out
    out["plateau_gain"] = out["diff"] / out["plateau_ap_s"]
    out["near"] = out["plateau_gain"] <= gain_max
    return out


def _sd(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof 1); None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _all_hold(flags: Sequence[bool | None]) -> bool | None:
    """False when one is False, None when one is unknown (and none False), True when all are True."""
    if any(f is False for f in flags):
        return False
    return None if any(f is None for f in flags) else True


def regime_conditions(
    teacher_ap: float | None,
    teacher_steps: int,
    student_steps: int,
    teacher_bigger: bool | None,
    baseline_aps: Sequence[float],
    distilled_aps: Mapping[str, float],
    plateau: Mapping,
    lead_min_ap: float = 0.03,
    lead_min_sd: float = 2.0,
) -> dict:
    """The regime check: ``{teacher_lead_ap, baseline_ap, baseline_sd, lead_threshold, students_below_teacher,
    students_not_below, conditions: [{name, holds, check, numbers}], in_regime}``.

    ``baseline_aps``: the baseline's final AP per seed; ``distilled_aps``: ``{student: mean AP}`` of every
    distilled student; ``plateau``: :func:`doubling_test`'s result; ``lead_min_ap`` in AP fractions (0.03 = 3 AP)."""
    baseline = [float(v) for v in baseline_aps]
    base_mean = sum(baseline) / len(baseline) if baseline else None
    base_sd = _sd(baseline)
    lead = None if teacher_ap is None or base_mean is None else float(teacher_ap) - base_mean
    threshold = None if base_sd is None else max(lead_min_ap, lead_min_sd * base_sd)
    if lead is None:
        lead_holds = None
    elif lead < lead_min_ap or (threshold is not None and lead < threshold):
        lead_holds = False
    else:
        lead_holds = None if threshold is None else True
    not_below = sorted(n for n, ap in distilled_aps.items() if teacher_ap is not None and ap >= teacher_ap)
    below = None if teacher_ap is None or not distilled_aps else not not_below
    conditions = [
        {
            "name": "equal_schedule",
            "holds": int(teacher_steps) == int(student_steps),
            "check": "the teacher trained on the students' schedule (teacher_steps == student_steps)",
            "numbers": {"teacher_steps": int(teacher_steps), "student_steps": int(student_steps)},
        },
        {
            "name": "teacher_bigger",
            "holds": teacher_bigger,
            "check": "the teacher is the bigger network (more parameters)",
            "numbers": {},
        },
        {
            "name": "teacher_lead",
            "holds": lead_holds,
            "check": f"teacher AP - baseline mean AP >= {100 * lead_min_ap:g} AP and >= {lead_min_sd:g} x the "
            "baseline's seed sd",
            "numbers": {"teacher_lead_ap": lead, "baseline_sd": base_sd, "threshold": threshold},
        },
        {
            "name": "baseline_near_plateau",
            "holds": plateau.get("near"),
            "check": f"doubling test: (mean AP(2S) - mean AP(S)) / mean AP(S) <= {plateau.get('plateau_gain_max')}",
            "numbers": {k: plateau.get(k) for k in ("plateau_ap_s", "plateau_ap_2s", "plateau_gain", "ci")},
        },
        {
            "name": "students_below_teacher",
            "holds": below,
            "check": "every distilled student's mean AP below the teacher's AP",
            "numbers": {"teacher_ap": teacher_ap, "not_below": not_below},
        },
    ]
    return {
        "teacher_lead_ap": lead,
        "baseline_ap": base_mean,
        "baseline_sd": base_sd,
        "lead_threshold": threshold,
        "students_below_teacher": below,
        "students_not_below": not_below,
        "conditions": conditions,
        "in_regime": _all_hold([c["holds"] for c in conditions]),
    }


def failed_conditions(reg: Mapping) -> list[str]:
    """Why a run is not (or not known to be) in the regime: ``"<name> fails"`` / ``"<name> not measured"``."""
    out = []
    for c in reg.get("conditions") or []:
        if c["holds"] is not True:
            out.append(f"{c['name']} {'fails' if c['holds'] is False else 'not measured'}")
    return out or ([] if reg.get("in_regime") else ["the regime was not checked"])


def regime(
    curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]],
    teacher_steps: int,
    student_steps: int,
    teacher_params: int | None,
    student_params: int | None,
    *,
    teacher_ap: float | None = None,
    baseline_aps: Sequence[float] = (),
    distilled_aps: Mapping[str, float] | None = None,
    plateau_ap_s: Sequence[float] = (),
    plateau_ap_2s: Sequence[float] = (),
    plateau_seeds: Sequence[int] = (),
    plateau_curves: Sequence[Sequence[tuple[int, float]]] = (),
    plateau_gain_max: float = 0.10,
    lead_min_ap: float = 0.03,
    lead_min_sd: float = 2.0,
) -> dict:
    """The ``regime`` object of results.json.

    ``teacher_steps``, ``student_steps``, ``equal_schedule``, ``teacher_params_m`` / ``student_params_m`` (millions
    of parameters), ``teacher_bigger``, ``teacher_ap``, ``teacher_lead_ap``, ``plateau_ap_s``, ``plateau_ap_2s``,
    ``plateau_gain``, ``plateau_gain_max``, ``plateau`` (the doubling test with its CI, per-seed values and
    ``seeds``), ``students_below_teacher``, ``conditions`` and ``in_regime`` (:func:`regime_conditions`); as a
    description, ``baseline_ap_at`` (mean AP at 50/75/100 % of the student schedule), ``baseline_last_quarter_gain``,
    the same per curve student (``students``) and the mean curves (``curves``: AP against steps; the 2S baseline's
    ``plateau_curves`` as ``baseline_x2``)."""
    per_student = {}
    for name, seeds in curves.items():
        at = ap_at_fractions(seeds, student_steps)
        per_student[name] = {
            "ap_at": at,
            "last_quarter_gain": last_quarter_gain(at["75%"]["AP"], at["100%"]["AP"]),
            "seeds": len(seeds),
        }
    base = per_student.get("baseline", {})
    millions = lambda n: None if n is None else round(n / 1e6, 2)
    bigger = None if teacher_params is None or student_params is None else teacher_params > student_params
    plateau = dict(doubling_test(plateau_ap_s, plateau_ap_2s, plateau_gain_max), seeds=[int(s) for s in plateau_seeds])
    plateau["definition"] = (
        "(mean AP(2S) - mean AP(S)) / mean AP(S) of the baseline, S = the students' schedule, 2S = the same "
        "schedule shape over twice the steps, the same seeds; near its plateau when <= plateau_gain_max"
    )
    check = regime_conditions(
        teacher_ap,
        teacher_steps,
        student_steps,
        bigger,
        baseline_aps,
        dict(distilled_aps or {}),
        plateau,
        lead_min_ap,
        lead_min_sd,
    )
    return {
        "teacher_steps": int(teacher_steps),
        "student_steps": int(student_steps),
        "equal_schedule": int(teacher_steps) == int(student_steps),
        "teacher_params_m": millions(teacher_params),
        "student_params_m": millions(student_params),
        "teacher_bigger": bigger,
        "teacher_ap": teacher_ap,
        "teacher_lead_ap": check["teacher_lead_ap"],
        "teacher_lead_min_ap": lead_min_ap,
        "teacher_lead_min_sd": lead_min_sd,
        "baseline_ap": check["baseline_ap"],
        "baseline_sd": check["baseline_sd"],
        "plateau_ap_s": plateau["plateau_ap_s"],
        "plateau_ap_2s": plateau["plateau_ap_2s"],
        "plateau_gain": plateau["plateau_gain"],
        "plateau_gain_max": plateau_gain_max,
        "plateau": plateau,
        "students_below_teacher": check["students_below_teacher"],
        "students_not_below_teacher": check["students_not_below"],
        "distilled_aps": dict(distilled_aps or {}),
        "conditions": check["conditions"],
        "in_regime": check["in_regime"],
        "baseline_ap_at": {k: v["AP"] for k, v in base.get("ap_at", {}).items()} or None,
        "baseline_last_quarter_gain": base.get("last_quarter_gain"),
        "last_quarter_gain_note": "description only: on a cosine schedule annealing alone lifts the last quarter",
        "students": per_student,
        "curves": {name: mean_curve(seeds) for name, seeds in curves.items()}
        | ({"baseline_x2": mean_curve(plateau_curves)} if plateau_curves else {}),
    }
