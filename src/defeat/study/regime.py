"""The regime of a ``defeat reproduce`` run: is the teacher ahead by capacity, and are the students near plateau?

Pure functions on plain numbers (no I/O, no torch).

Inputs: ``curves`` = ``{student: [curve of seed 0, curve of seed 1, ...]}``, each curve a list of
``(step, AP)`` pairs -- the trainer's evaluations during training (``eval.every_steps``) and at the end.

* ``AP at f`` of a seed = the AP of its first evaluation in ``[ceil(f * steps), ceil(f * steps) + w)`` with
  ``w = max(1, steps // 8)`` (none there: not measured); of a student = the mean over its seeds (the step actually
  used is reported).
* **Last-quarter gain** (relative) = ``(AP@100% - AP@75%) / AP@100%``: the share of the final AP that the last
  quarter of the schedule added.
* **Near plateau** when that gain is below ``plateau_gain_max`` (10 %): more steps alone would add little, so the
  teacher-student gap is not a matter of schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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


def regime(
    curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]],
    teacher_steps: int,
    student_steps: int,
    teacher_params: int | None,
    student_params: int | None,
    plateau_gain_max: float = 0.10,
    teacher_ap: float | None = None,
) -> dict:
    """The ``regime`` object of results.json.

    ``teacher_steps``, ``student_steps``, ``teacher_params_m`` / ``student_params_m`` (millions of parameters),
    ``equal_schedule``, ``teacher_bigger``, ``baseline_ap_at`` (mean AP at 50/75/100 % of the student schedule),
    ``baseline_last_quarter_gain``, ``plateau`` (``{"gain_max", "gain", "near", "gap_to_threshold"}``: how far from
    the plateau condition, in numbers), the same ``ap_at`` / gain for every other curve student (``students``),
    the mean curves (``curves``: AP against steps), and with ``teacher_ap`` the teacher's lead over the baseline's
    final AP (``teacher_lead_ap``; <= 0: the teacher is not ahead, there is no gap to close)."""
    per_student = {}
    for name, seeds in curves.items():
        at = ap_at_fractions(seeds, student_steps)
        gain = last_quarter_gain(at["75%"]["AP"], at["100%"]["AP"])
        per_student[name] = {
            "ap_at": at,
            "last_quarter_gain": gain,
            "seeds": len(seeds),
            "near_plateau": None if gain is None else gain < plateau_gain_max,
        }
    base = per_student.get("baseline", {})
    gain = base.get("last_quarter_gain")
    millions = lambda n: None if n is None else round(n / 1e6, 2)
    return {
        "teacher_steps": int(teacher_steps),
        "student_steps": int(student_steps),
        "teacher_params_m": millions(teacher_params),
        "student_params_m": millions(student_params),
        "equal_schedule": int(teacher_steps) == int(student_steps),
        "teacher_bigger": None if teacher_params is None or student_params is None else teacher_params > student_params,
        "baseline_ap_at": {k: v["AP"] for k, v in base.get("ap_at", {}).items()} or None,
        "baseline_last_quarter_gain": gain,
        "teacher_ap": teacher_ap,
        "teacher_lead_ap": (
            None
            if teacher_ap is None or (base.get("ap_at", {}).get("100%") or {}).get("AP") is None
            else teacher_ap - base["ap_at"]["100%"]["AP"]
        ),
        "plateau": {
            "gain_max": plateau_gain_max,
            "gain": gain,
            "near": None if gain is None else gain < plateau_gain_max,
            "gap_to_threshold": None if gain is None else gain - plateau_gain_max,
            "definition": "(AP@100% - AP@75%) / AP@100% of the baseline student, mean over its seeds",
        },
        "students": per_student,
        "curves": {name: mean_curve(seeds) for name, seeds in curves.items()},
    }
