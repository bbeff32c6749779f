"""The regime of ``defeat reproduce`` on hand-made numbers: the doubling test (near / not near / missing), each
condition of the regime check one at a time, and the AP-against-steps description."""

from __future__ import annotations

import json

import pytest
from scipy import stats as sps

from defeat.study import regime


def test_ap_at_takes_the_first_evaluation_at_or_after_the_point():
    curve = [(100, 0.10), (200, 0.20), (300, 0.25), (400, 0.26)]
    assert regime.ap_at(curve, 400, 0.5) == (200, 0.20)
    assert regime.ap_at(curve, 400, 0.75) == (300, 0.25)
    assert regime.ap_at(curve, 400, 1.0) == (400, 0.26)
    assert regime.ap_at([(1, 0.1), (2, 0.2)], 2, 0.75) == (2, 0.2)  # ceil(1.5) = 2
    assert regime.ap_at([(100, 0.1)], 400, 0.5) is None
    assert regime.ap_at([(400, 0.3)], 400, 0.5) is None  # the final evaluation is not the AP at 50 %


# ------------------------------------------------------------------------------------------ the doubling test
def test_doubling_test_near_its_plateau():
    out = regime.doubling_test([0.20, 0.21, 0.22], [0.21, 0.22, 0.23], gain_max=0.10)
    assert out["plateau_ap_s"] == pytest.approx(0.21) and out["plateau_ap_2s"] == pytest.approx(0.22)
    assert out["plateau_gain"] == pytest.approx(0.01 / 0.21) and out["near"] is True
    ci = sps.ttest_ind([0.21, 0.22, 0.23], [0.20, 0.21, 0.22], equal_var=False).confidence_interval(0.95)
    assert out["ci"] == pytest.approx([ci.low, ci.high]) and out["diff"] == pytest.approx(0.01)
    assert out["values_s"] == [0.20, 0.21, 0.22] and out["note"] == ""
    # exactly at the threshold is near (<=); a 2S run below the S run (over-fitting) is near too
    assert regime.doubling_test([0.20, 0.20], [0.22, 0.22])["near"] is True
    assert regime.doubling_test([0.20, 0.22], [0.18, 0.19])["near"] is True


def test_doubling_test_not_near_its_plateau():
    # the recorded full run's baseline (7.2 AP at 480 steps) still climbing: doubling adds 40 %
    out = regime.doubling_test([0.063, 0.060, 0.093], [0.090, 0.095, 0.117])
    assert out["plateau_gain"] == pytest.approx((0.302 / 3 - 0.216 / 3) / (0.216 / 3)) and out["near"] is False
    assert out["ci"][0] < out["diff"] < out["ci"][1]
    # a small gain that clears the threshold by a hair still counts: the point estimate decides, the CI is shown
    assert regime.doubling_test([0.20, 0.20], [0.2201, 0.2201])["near"] is False


def test_doubling_test_with_a_missing_stage_or_one_seed():
    missing = regime.doubling_test([0.20, 0.21], [])
    assert missing["near"] is None and missing["plateau_gain"] is None and missing["plateau_ap_2s"] is None
    assert "no baseline trained for 2S steps" in missing["note"]
    assert "no baseline AP at S steps" in regime.doubling_test([], [0.2])["note"]
    one = regime.doubling_test([0.20], [0.21])
    assert one["near"] is True and one["ci"] is None and "needs >= 2 seeds" in one["note"]
    zero = regime.doubling_test([0.0, 0.0], [0.01, 0.02])
    assert zero["near"] is None and "undefined" in zero["note"]


# ------------------------------------------------------------------------------------------ the regime check
HOLDS = dict(
    teacher_ap=0.40,
    teacher_steps=400,
    student_steps=400,
    teacher_bigger=True,
    baseline_aps=[0.20, 0.21, 0.22],
    distilled_aps={"decoupled": 0.34, "all": 0.30},
    plateau=regime.doubling_test([0.20, 0.21, 0.22], [0.21, 0.22, 0.22]),
)


def conditions(**changes) -> dict:
    out = regime.regime_conditions(**{**HOLDS, **changes})
    return {c["name"]: c["holds"] for c in out["conditions"]} | {"in_regime": out["in_regime"]}


def test_the_regime_holds_when_every_condition_does():
    out = regime.regime_conditions(**HOLDS)
    assert out["in_regime"] is True and all(c["holds"] is True for c in out["conditions"])
    assert out["teacher_lead_ap"] == pytest.approx(0.19) and out["baseline_sd"] == pytest.approx(0.01)
    assert out["lead_threshold"] == pytest.approx(0.03)  # max(3 AP, 2 x 1 AP)
    assert [c["name"] for c in out["conditions"]] == [
        "equal_schedule",
        "teacher_bigger",
        "teacher_lead",
        "baseline_near_plateau",
        "students_below_teacher",
    ]
    assert all(c["check"] for c in out["conditions"])


@pytest.mark.parametrize(
    ("changes", "failing"),
    [
        ({"teacher_steps": 1200}, "equal_schedule"),  # ahead through a longer schedule, not capacity
        ({"teacher_bigger": False}, "teacher_bigger"),
        ({"teacher_ap": 0.235, "distilled_aps": {"decoupled": 0.23}}, "teacher_lead"),  # 2.5 AP ahead: below 3 AP
        # 9 AP ahead of a baseline whose seeds scatter by 6 AP: below 2 x 6
        ({"baseline_aps": [0.15, 0.21, 0.27], "teacher_ap": 0.30, "distilled_aps": {"all": 0.25}}, "teacher_lead"),
        ({"plateau": regime.doubling_test([0.2, 0.21], [0.25, 0.26])}, "baseline_near_plateau"),
        ({"distilled_aps": {"decoupled": 0.41, "all": 0.30}}, "students_below_teacher"),
        ({"distilled_aps": {"decoupled": 0.40}}, "students_below_teacher"),  # level with the teacher: not below
    ],
)
def test_each_condition_fails_on_its_own(changes, failing):
    flags = conditions(**changes)
    assert flags[failing] is False and flags["in_regime"] is False
    assert all(v is True for k, v in flags.items() if k not in (failing, "in_regime")), flags


def test_unmeasured_conditions_leave_the_regime_not_established():
    flags = conditions(plateau=regime.doubling_test([0.2], []))
    assert flags["baseline_near_plateau"] is None and flags["in_regime"] is None
    one_seed = conditions(baseline_aps=[0.21])  # no seed sd: the 2 x sd part cannot be checked
    assert one_seed["teacher_lead"] is None and one_seed["in_regime"] is None
    assert conditions(baseline_aps=[0.39])["teacher_lead"] is False  # below 3 AP: fails without an sd
    assert conditions(teacher_ap=None)["students_below_teacher"] is None
    assert conditions(teacher_bigger=None)["in_regime"] is None
    # a failed condition outweighs an unmeasured one
    assert conditions(teacher_bigger=None, teacher_steps=1)["in_regime"] is False
    out = regime.regime_conditions(**{**HOLDS, "teacher_bigger": None, "teacher_steps": 1})
    assert regime.failed_conditions(out) == ["equal_schedule fails", "teacher_bigger not measured"]


def test_regime_object_of_results_json():
    flat = [[(100, 0.10), (200, 0.20), (300, 0.25), (400, 0.26)], [(100, 0.12), (200, 0.22), (300, 0.27), (400, 0.28)]]
    rising = [[(100, 0.02), (200, 0.05), (300, 0.08), (400, 0.12)]]
    reg = regime.regime(
        {"baseline": flat, "decoupled": rising},
        400,
        400,
        41_300_000,
        28_300_000,
        teacher_ap=0.31,
        baseline_aps=[0.26, 0.28],
        distilled_aps={"decoupled": 0.12},
        plateau_ap_s=[0.26, 0.28],
        plateau_ap_2s=[0.27, 0.29],
        plateau_seeds=[0, 1],
        plateau_curves=[[(400, 0.2), (800, 0.27)], [(400, 0.22), (800, 0.29)]],
    )
    assert (reg["teacher_steps"], reg["student_steps"], reg["equal_schedule"], reg["teacher_bigger"]) == (
        400,
        400,
        True,
        True,
    )
    assert (reg["teacher_params_m"], reg["student_params_m"]) == (41.3, 28.3)
    assert reg["teacher_lead_ap"] == pytest.approx(0.04) and reg["teacher_lead_min_ap"] == 0.03
    assert reg["plateau_ap_s"] == pytest.approx(0.27) and reg["plateau_ap_2s"] == pytest.approx(0.28)
    assert reg["plateau_gain"] == pytest.approx(0.01 / 0.27) and reg["plateau_gain_max"] == 0.10
    assert reg["plateau"]["seeds"] == [0, 1] and reg["plateau"]["near"] is True
    assert reg["students_below_teacher"] is True and reg["in_regime"] is True
    # AP against steps: a description (the last quarter's gain decides nothing)
    assert reg["baseline_ap_at"] == {
        "50%": pytest.approx(0.21),
        "75%": pytest.approx(0.26),
        "100%": pytest.approx(0.27),
    }
    assert reg["baseline_last_quarter_gain"] == pytest.approx((0.27 - 0.26) / 0.27)
    assert reg["students"]["decoupled"]["last_quarter_gain"] == pytest.approx(1 / 3)
    assert "near_plateau" not in reg["students"]["decoupled"]
    curve = reg["curves"]["baseline"]
    assert [p["step"] for p in curve] == [100, 200, 300, 400] and curve[-1]["n"] == 2
    assert curve[-1]["AP"] == pytest.approx(0.27) and curve[-1]["std"] == pytest.approx(0.0141421356)
    assert [p["step"] for p in reg["curves"]["baseline_x2"]] == [400, 800]
    json.dumps(reg)


def test_regime_without_measurements_reports_what_is_missing():
    reg = regime.regime({"baseline": [[(400, 0.3)]]}, 1200, 400, None, 28_000_000)
    assert reg["baseline_ap_at"]["100%"] == pytest.approx(0.3) and reg["baseline_ap_at"]["50%"] is None
    assert reg["baseline_last_quarter_gain"] is None and reg["plateau"]["near"] is None
    assert reg["equal_schedule"] is False and reg["teacher_bigger"] is None and reg["teacher_lead_ap"] is None
    assert reg["plateau_gain"] is None and reg["in_regime"] is False  # unequal schedules: out, whatever else
    assert regime.last_quarter_gain(0.1, 0.0) is None
