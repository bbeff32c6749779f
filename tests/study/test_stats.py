"""The claim tests of ``defeat reproduce`` (Welch, TOST) on hand-made numbers, checked against scipy and by hand."""

from __future__ import annotations

import math

import numpy as np
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


# ------------------------------------------------------------------------------------------ power
DRAWS = 4000


def simulated_pass_count(test, draws: int = DRAWS, seed: int = 0) -> int:
    """How often ``test(rng)`` passes over ``draws`` seeded draws."""
    rng = np.random.default_rng(seed)
    return sum(bool(test(rng)["pass"]) for _ in range(draws))


def consistent(count: int, power: float, draws: int = DRAWS) -> bool:
    """The binomial tolerance: the simulated count is consistent with the computed power (two-sided exact binomial
    test, p > 0.001, i.e. within about 3.3 binomial standard errors, ~0.026 at a power of 0.5 with 4000 draws)."""
    return sps.binomtest(count, draws, power).pvalue > 0.001


@pytest.mark.parametrize(("effect", "sd", "n"), [(3.0, 1.9, 3), (1.0, 1.0, 2)])  # the recorded budget; n = 2
def test_power_of_the_welch_test_matches_a_simulation_of_beats(effect, sd, n):
    power = stats.power_beats(effect, sd, n)
    count = simulated_pass_count(lambda rng: stats.beats(rng.normal(effect, sd, n), rng.normal(0.0, sd, n)))
    assert consistent(count, power), (power, count / DRAWS)


@pytest.mark.parametrize(("margin", "sd", "n"), [(1.0, 1.0, 10), (1.0, 0.4, 3)])
def test_power_of_tost_at_a_true_tie_matches_a_simulation_of_equivalent(margin, sd, n):
    power = stats.power_equivalent(margin, sd, n)
    count = simulated_pass_count(lambda rng: stats.equivalent(rng.normal(0.0, sd, n), rng.normal(0.0, sd, n), margin))
    assert consistent(count, power), (power, count / DRAWS)


def test_power_properties():
    # the recorded full run: n = 3, sd 1.9 AP -> TOST at +-1 AP passes a true tie ~0.1 % of the time
    assert stats.power_equivalent(1.0, 1.9, 3) < 0.01
    # at no true difference the Welch test's power is its size, at most alpha (Welch is conservative for small n)
    assert stats.power_beats(0.0, 1.0, 3) <= 0.05 and stats.power_beats(0.0, 1.0, 200) == pytest.approx(0.05, abs=1e-3)
    powers = [stats.power_beats(3.0, 1.9, n) for n in range(2, 12)]
    assert powers == sorted(powers) and powers[-1] > 0.9  # more seeds, more power
    # unequal arms are powered as two arms of the smaller size; fewer than 2 seeds: no test, no power
    assert stats.power_beats(3.0, 1.9, 3, 7) == stats.power_beats(3.0, 1.9, 3)
    assert stats.power_beats(3.0, 1.9, 1) == 0.0 and stats.power_equivalent(1.0, 1.9, 5, 1) == 0.0
    # the TOST power at a true difference beyond the margin is below alpha
    assert stats.power_equivalent(1.0, 0.3, 10, true_diff=1.2) < 0.05
    for call, message in [
        (lambda: stats.power_beats(3.0, 0.0, 3), "seed sd must be > 0"),
        (lambda: stats.power_equivalent(0.0, 1.0, 3), "margin must be > 0"),
        (lambda: stats.power_beats(3.0, 1.0, 3, alpha=0.7), "alpha"),
        (lambda: stats.seeds_for_power(lambda n: 1.0, target=1.5), "target"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()


def test_seeds_for_power_is_the_smallest_n_reaching_the_target():
    n = stats.seeds_for_power(lambda k: stats.power_beats(3.0, 1.9, k))
    assert stats.power_beats(3.0, 1.9, n) >= 0.8 > stats.power_beats(3.0, 1.9, n - 1) and n == 6
    assert stats.seeds_for_power(lambda k: stats.power_beats(3.0, 0.1, k)) == 2  # already there at 2
    assert stats.seeds_for_power(lambda k: 0.5) is None  # never reached
    tost = stats.seeds_for_power(lambda k: stats.power_equivalent(1.0, 1.9, k), 0.8)
    assert stats.power_equivalent(1.0, 1.9, tost) >= 0.8 > stats.power_equivalent(1.0, 1.9, tost - 1)


# ------------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_ratio_estimate_ci_and_seed():
    x, n = [6.0, 8.0, 4.0, 10.0], [3, 4, 2, 5]  # object: means 2, 2, 2, 2
    y, m = [3.0, 5.0, 2.0, 6.0], [3, 5, 2, 6]  # background: means 1
    out = stats.bootstrap_ratio(x, n, y, m, confidence=0.9, resamples=500, seed=3)
    assert out["estimate"] == pytest.approx(2.0) and out["ci"] == pytest.approx([2.0, 2.0])  # no spread at all
    assert (out["units"], out["resamples"], out["undefined"], out["ci_level"]) == (4, 500, 0, 0.9)
    rng = np.random.default_rng(0)
    ratios = rng.uniform(0.5, 2.5, 30)  # per-image ratios around 1.5: the pooled ratio's CI spans them
    counts = np.full(30, 10.0)
    out = stats.bootstrap_ratio(ratios * counts, counts, counts, counts, resamples=2000, seed=1)
    assert out["estimate"] == pytest.approx(ratios.mean())
    assert out["ci"][0] < ratios.mean() < out["ci"][1] and out["ci"][1] - out["ci"][0] < 0.6
    # the half-width is about 1.96 x the standard error of the mean ratio
    half = (out["ci"][1] - out["ci"][0]) / 2
    assert half == pytest.approx(1.96 * ratios.std(ddof=1) / np.sqrt(30), rel=0.2)
    again = stats.bootstrap_ratio(ratios * counts, counts, counts, counts, resamples=2000, seed=1)
    assert again == out  # seeded


def test_bootstrap_ratio_undefined_resamples_and_bad_input():
    # one image has no background pixels: resamples drawing only it are undefined and dropped
    out = stats.bootstrap_ratio([1.0, 2.0], [1, 1], [0.0, 1.0], [0, 1], resamples=400, seed=0)
    assert out["estimate"] == pytest.approx(1.5) and 0 < out["undefined"] < 400 and out["ci"] is not None
    assert stats.bootstrap_ratio([1.0], [1], [1.0], [1])["ci"] is None  # one image: no CI
    with pytest.raises(ValueError, match="one length"):
        stats.bootstrap_ratio([1.0, 2.0], [1], [1.0], [1])
