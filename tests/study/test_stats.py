"""The claim tests of ``defeat reproduce`` (Welch, TOST) on hand-made numbers, checked against scipy and by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from defeat.study import stats

BASE = [0.20, 0.21, 0.22]  # mean 0.21, sample std 0.01


def test_clear_win_matches_scipy_and_the_hand_computation():
    win = [0.30, 0.31, 0.32]
    r = stats.beats(win, BASE)
    # by hand: d = 0.10, se = sqrt(0.01^2/3 + 0.01^2/3), df = 4 (equal n, equal variances), t = d / se
    se = math.sqrt(2 * 0.01**2 / 3)
    assert r["diff"] == pytest.approx(0.10) and r["df"] == pytest.approx(4.0)
    assert r["p_value"] == pytest.approx(sps.t.sf(0.10 / se, 4))
    assert r["p_value"] == pytest.approx(sps.ttest_ind(win, BASE, equal_var=False, alternative="greater").pvalue)
    half = sps.t.ppf(0.975, 4) * se
    assert r["ci"] == pytest.approx([0.10 - half, 0.10 + half]) and r["ci_level"] == 0.95
    ci = sps.ttest_ind(win, BASE, equal_var=False).confidence_interval(0.95)
    assert r["ci"] == pytest.approx([ci.low, ci.high])
    assert r["pass"] is True and r["decided"] and r["test"] == stats.BEATS_TEST
    assert (r["mean_a"], r["mean_b"], r["n_a"], r["n_b"]) == (pytest.approx(0.31), pytest.approx(0.21), 3, 3)
    # the other direction, and a difference within the noise, do not pass
    assert stats.beats(BASE, win)["pass"] is False
    small = stats.beats([0.205, 0.225, 0.215], BASE)  # d = 0.005 with std 0.01: p ~ 0.29
    assert small["pass"] is False and 0.05 < small["p_value"] < 0.5


def test_welch_unequal_variances_uses_the_satterthwaite_df():
    a, b = [0.30, 0.35, 0.40, 0.33], [0.20, 0.21]
    w = stats.welch(a, b, 0.90)
    va, vb = sps.tvar(a) / 4, sps.tvar(b) / 2
    assert w["df"] == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 1))
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.90)
    assert w["ci"] == pytest.approx([ci.low, ci.high])


def test_tie_inside_the_margin_is_equivalent():
    a, b = [0.250, 0.252, 0.248], [0.251, 0.249, 0.250]  # d = 0, spread ~ 0.1-0.2 AP; margin 1 AP
    r = stats.equivalent(a, b, margin=0.01)
    assert r["pass"] is True and r["test"] == stats.TOST_TEST and r["margin"] == 0.01 and r["ci_level"] == 0.90
    low = sps.ttest_ind([x + 0.01 for x in a], b, equal_var=False, alternative="greater").pvalue
    high = sps.ttest_ind([x - 0.01 for x in a], b, equal_var=False, alternative="less").pvalue
    assert r["p_lower"] == pytest.approx(low) and r["p_upper"] == pytest.approx(high)
    assert r["p_value"] == pytest.approx(max(low, high)) and r["p_value"] < 0.05
    assert -0.01 < r["ci"][0] < r["ci"][1] < 0.01  # the 90 % CI inside the margin: the same decision


def test_tie_outside_the_margin_is_not_equivalent():
    # means 2 AP apart with a tight spread: a real difference, not a tie
    apart = stats.equivalent([0.27, 0.271, 0.269], [0.25, 0.251, 0.249], margin=0.01)
    assert apart["pass"] is False and apart["p_upper"] > 0.5 and apart["ci"][0] > 0.01
    # equal means but so noisy that the 90 % CI reaches beyond the margin: not shown to be comparable
    noisy = stats.equivalent([0.22, 0.25, 0.28], [0.24, 0.25, 0.26], margin=0.01)
    assert noisy["diff"] == pytest.approx(0.0) and noisy["pass"] is False and noisy["p_value"] > 0.05
    assert noisy["ci"][0] < -0.01 and noisy["ci"][1] > 0.01
    # a larger stated margin makes the same numbers comparable
    assert stats.equivalent([0.22, 0.25, 0.28], [0.24, 0.25, 0.26], margin=0.1)["pass"] is True


def test_one_seed_cannot_be_decided():
    for r in (stats.beats([0.5], BASE), stats.beats(BASE, [0.0]), stats.equivalent([0.21], BASE, 0.01)):
        assert r["pass"] is False and r["decided"] is False and r["p_value"] is None and r["ci"] is None
        assert "needs >= 2 seeds" in r["note"]
    one = stats.beats([0.5], BASE)
    assert one["diff"] == pytest.approx(0.29) and one["n_a"] == 1  # the means are still reported
    with pytest.raises(ValueError, match="needs >= 2 seeds"):
        stats.welch([0.1], BASE, 0.95)
    with pytest.raises(ValueError, match="margin"):
        stats.equivalent(BASE, BASE, 0.0)


def test_zero_variance_is_an_exact_difference():
    r = stats.beats([0.3, 0.3], [0.2, 0.2])
    assert r["pass"] is True and r["p_value"] == 0.0 and r["ci"] == pytest.approx([0.1, 0.1]) and "exact" in r["note"]
    assert stats.equivalent([0.2, 0.2], [0.2, 0.2], 0.01)["pass"] is True
    assert stats.equivalent([0.3, 0.3], [0.2, 0.2], 0.01)["pass"] is False


def test_paired_tost_matches_the_hand_computation():
    # differences 0.5, -0.3, 0.2, 0.0: mean 0.1, sd 0.3367, se 0.1683, df 3
    a, b = [5.5, 7.7, 6.2, 8.0], [5.0, 8.0, 6.0, 8.0]
    out = stats.equivalent_paired(a, b, margin=1.0)
    diffs = [0.5, -0.3, 0.2, 0.0]
    mean, sd = sum(diffs) / 4, math.sqrt(sum((d - 0.1) ** 2 for d in diffs) / 3)
    se = sd / 2
    assert out["diff"] == pytest.approx(mean) and out["sd_diff"] == pytest.approx(sd)
    half = sps.t.ppf(0.95, 3) * se
    assert out["ci"] == pytest.approx([mean - half, mean + half])
    assert out["p_lower"] == pytest.approx(sps.t.sf((mean + 1.0) / se, 3))
    assert out["p_upper"] == pytest.approx(sps.t.cdf((mean - 1.0) / se, 3))
    assert out["pass"] and out["decided"] and out["n_pairs"] == 4


def test_pairing_removes_the_shared_seed_variance():
    # seeds move both arms alike (spread 6 AP); the paired differences are all 0.2: equivalent when paired,
    # undecidable within 1 AP when the pairs are ignored (Welch)
    b = [2.0, 8.0, 5.0, 3.0, 7.0]
    a = [x + 0.2 + 0.05 * (-1) ** i for i, x in enumerate(b)]
    assert stats.equivalent_paired(a, b, margin=1.0)["pass"]
    assert not stats.equivalent(a, b, margin=1.0)["pass"]


def test_paired_tost_fails_when_the_differences_scatter_or_shift():
    assert not stats.equivalent_paired([3.0, 9.0, 4.0], [5.0, 5.0, 6.0], margin=1.0)["pass"]  # diffs -2, 4, -2
    assert not stats.equivalent_paired([6.5, 7.6, 8.4], [5.0, 6.0, 7.0], margin=1.0)["pass"]  # shifted by ~1.5


def test_paired_tost_refuses_unpaired_input():
    with pytest.raises(ValueError, match="different length"):
        stats.equivalent_paired([1.0, 2.0], [1.0], margin=1.0)
    with pytest.raises(ValueError, match="breaks its pair"):
        stats.equivalent_paired([1.0, float("nan")], [1.0, 2.0], margin=1.0)
    assert not stats.equivalent_paired([1.0], [1.0], margin=1.0)["decided"]
