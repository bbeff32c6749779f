"""The regime object of ``defeat reproduce`` (AP at 50/75/100 % of the schedule, plateau check) on hand-made curves."""

from __future__ import annotations

import json

import pytest

from defeat.study import regime


def test_ap_at_takes_the_first_evaluation_at_or_after_the_point():
    curve = [(100, 0.10), (200, 0.20), (300, 0.25), (400, 0.26)]
    assert regime.ap_at(curve, 400, 0.5) == (200, 0.20)
    assert regime.ap_at(curve, 400, 0.75) == (300, 0.25)
    assert regime.ap_at(curve, 400, 1.0) == (400, 0.26)
    assert regime.ap_at([(1, 0.1), (2, 0.2)], 2, 0.75) == (2, 0.2)  # ceil(1.5) = 2
    assert regime.ap_at([(100, 0.1)], 400, 0.5) is None
    assert regime.ap_at([(400, 0.3)], 400, 0.5) is None  # the final evaluation is not the AP at 50 %


def test_plateau_check_on_hand_made_curves():
    flat = [[(100, 0.10), (200, 0.20), (300, 0.25), (400, 0.26)], [(100, 0.12), (200, 0.22), (300, 0.27), (400, 0.28)]]
    rising = [[(100, 0.02), (200, 0.05), (300, 0.08), (400, 0.12)]]
    reg = regime.regime({"baseline": flat, "decoupled": rising}, 400, 400, 41_300_000, 28_300_000, teacher_ap=0.30)
    assert reg["teacher_lead_ap"] == pytest.approx(0.03)
    assert reg["baseline_ap_at"] == {
        "50%": pytest.approx(0.21),
        "75%": pytest.approx(0.26),
        "100%": pytest.approx(0.27),
    }
    gain = (0.27 - 0.26) / 0.27  # 3.7 % of the final AP in the last quarter: near plateau
    assert reg["baseline_last_quarter_gain"] == pytest.approx(gain)
    assert reg["plateau"]["near"] is True and reg["plateau"]["gap_to_threshold"] == pytest.approx(gain - 0.10)
    dec = reg["students"]["decoupled"]
    assert dec["last_quarter_gain"] == pytest.approx(1 / 3) and dec["near_plateau"] is False
    assert (reg["teacher_params_m"], reg["student_params_m"], reg["equal_schedule"], reg["teacher_bigger"]) == (
        41.3,
        28.3,
        True,
        True,
    )
    curve = reg["curves"]["baseline"]
    assert [p["step"] for p in curve] == [100, 200, 300, 400] and curve[-1]["n"] == 2
    assert curve[-1]["AP"] == pytest.approx(0.27) and curve[-1]["std"] == pytest.approx(0.0141421356)
    json.dumps(reg)


def test_regime_without_curves_reports_what_is_missing():
    reg = regime.regime({"baseline": [[(400, 0.3)]]}, 1200, 400, None, 28_000_000)
    assert reg["baseline_ap_at"]["100%"] == pytest.approx(0.3) and reg["baseline_ap_at"]["50%"] is None
    assert reg["baseline_last_quarter_gain"] is None and reg["plateau"]["near"] is None
    assert reg["equal_schedule"] is False and reg["teacher_bigger"] is None and reg["teacher_lead_ap"] is None
    assert regime.last_quarter_gain(0.1, 0.0) is None
