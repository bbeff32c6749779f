"""The tests that decide the claims of ``defeat reproduce``: Welch's t-test and TOST equivalence, over seeds.

Pure functions on lists of numbers (one value per seed; no I/O, no torch), computed with :mod:`scipy.stats`.

Notation: arm A has values ``a_1..a_n`` (mean ``m_a``, sample variance ``s_a^2``, ddof=1), arm B likewise.

Welch (unequal variances)::

    d   = m_a - m_b
    se  = sqrt(s_a^2 / n_a + s_b^2 / n_b)
    df  = se^4 / ( (s_a^2/n_a)^2 / (n_a - 1) + (s_b^2/n_b)^2 / (n_b - 1) )      (Welch-Satterthwaite)
    t   = d / se
    CI_c(d) = d -/+ t_{(1+c)/2, df} * se                                          (two-sided, level c)

* **A beats B** (:func:`beats`): one-sided Welch test of H0: d <= 0 against H1: d > 0,
  ``p = P(T_df >= t)`` (``scipy.stats.ttest_ind(a, b, equal_var=False, alternative="greater")``); pass when
  ``p < alpha`` (0.05). The 95 % two-sided CI of d is reported beside it.
* **A is comparable to B** (:func:`equivalent`), within a margin ``delta`` > 0: TOST, two one-sided Welch tests,
  H0_low: d <= -delta (``p_low = P(T_df >= (d + delta)/se)``) and H0_high: d >= +delta
  (``p_high = P(T_df <= (d - delta)/se)``); ``p = max(p_low, p_high)``; pass when ``p < alpha``, which is the same
  as the ``1 - 2 alpha`` (90 %) CI of d lying inside ``(-delta, +delta)``.
* **A is comparable to B, paired** (:func:`equivalent_paired`): when the i-th values of A and B share everything
  but the treatment (the same seed: initial weights and data order), TOST on the differences
  ``d_i = a_i - b_i`` (n pairs, mean ``m_d``, sd ``s_d``): ``se = s_d / sqrt(n)``, ``df = n - 1``,
  ``p_low = P(T_df >= (m_d + delta)/se)``, ``p_high = P(T_df <= (m_d - delta)/se)``
  (``scipy.stats.ttest_1samp(d, -delta, alternative="greater")`` and ``(d, +delta, alternative="less")``); pass
  when ``max(p_low, p_high) < alpha``, i.e. the 90 % CI ``m_d -/+ t_{0.95, n-1} se`` inside ``(-delta, +delta)``.
* Fewer than two values in either arm: no variance, no test; the claim cannot pass (``"needs >= 2 seeds"``).
* Zero variance in both arms (``se = 0``): the difference is exact; the test degenerates to comparing ``d``
  with 0 (beats) or with ``+/-delta`` (equivalence): p = 0 when it holds, 1 otherwise (noted).

Power (what a test can decide at a budget, before the run): normal values, the same sd ``sigma`` in both arms,
``n`` per arm, ``sigma_d = sigma * sqrt(2 / n)``. Then ``T = d / se`` follows the noncentral t with ``nu = 2(n-1)``
degrees of freedom and noncentrality ``delta = effect / sigma_d``, and Welch's df depends only on
``R = s_a^2 / (s_a^2 + s_b^2) ~ Beta((n-1)/2, (n-1)/2)``, independent of ``T`` and of ``se``:
``df(R) = (n-1) / (R^2 + (1-R)^2)``. So, exactly:

* :func:`power_beats` = ``E_R[ P(T'_{nu, delta} > t_{1-alpha, df(R)}) ]`` (``scipy.stats.nct``);
* :func:`power_equivalent` (TOST at margin ``m``, true difference ``theta``, default 0) =
  ``E_{R, se}[ max(0, Phi((m - c - theta)/sigma_d) - Phi((-m + c - theta)/sigma_d)) ]`` with
  ``c = t_{1-alpha, df(R)} * se`` and ``se^2 = sigma_d^2 chi^2_nu / nu``;
* :func:`seeds_for_power` = the smallest ``n`` whose power reaches the target (0.8).

Arms of unequal size are powered as two arms of the smaller size (a lower bound); fewer than 2 values per arm: 0.

Bootstrap (:func:`bootstrap_ratio`): the percentile bootstrap CI over units (images) of a pooled ratio of means
``(sum_i x_i / sum_i n_i) / (sum_i y_i / sum_i m_i)``, resampling units with replacement (seeded).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ALPHA = 0.05
MIN_SEEDS = 2
NEEDS_SEEDS = f"needs >= {MIN_SEEDS} seeds in each arm"

BEATS_TEST = "Welch t-test, one-sided (A > B)"
TOST_TEST = "TOST equivalence (two one-sided Welch tests)"
PAIRED_TOST_TEST = "paired TOST equivalence (two one-sided t-tests on the paired differences)"


def _values(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def welch(a: Sequence[float], b: Sequence[float], confidence: float) -> dict:
    """Welch's statistics of ``mean(a) - mean(b)``: ``diff``, ``se``, ``df`` and the two-sided ``confidence`` CI.

    Needs >= 2 values per arm (``ValueError`` otherwise). With ``se == 0`` the CI is ``[diff, diff]`` and ``df``
    is NaN."""
    from scipy import stats

    a, b = _values(a), _values(b)
    if len(a) < MIN_SEEDS or len(b) < MIN_SEEDS:
        raise ValueError(f"welch: {NEEDS_SEEDS} (got {len(a)} and {len(b)})")
    n_a, n_b = len(a), len(b)
    m_a, m_b = sum(a) / n_a, sum(b) / n_b
    v_a = sum((x - m_a) ** 2 for x in a) / (n_a - 1) / n_a
    v_b = sum((x - m_b) ** 2 for x in b) / (n_b - 1) / n_b
    se = math.sqrt(v_a + v_b)
    diff = m_a - m_b
    if se == 0:
        return {"diff": diff, "se": 0.0, "df": math.nan, "ci": [diff, diff], "ci_level": confidence}
    df = (v_a + v_b) ** 2 / (v_a**2 / (n_a - 1) + v_b**2 / (n_b - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * se
    return {"diff": diff, "se": se, "df": df, "ci": [diff - half, diff + half], "ci_level": confidence}


def _base(test: str, a: list[float], b: list[float], alpha: float, margin: float | None) -> dict:
    mean = lambda xs: sum(xs) / len(xs) if xs else None
    m_a, m_b = mean(a), mean(b)
    return {
        "test": test,
        "n_a": len(a),
        "n_b": len(b),
        "mean_a": m_a,
        "mean_b": m_b,
        "diff": None if m_a is None or m_b is None else m_a - m_b,
        "ci": None,
        "ci_level": None,
        "p_value": None,
        "alpha": alpha,
        "margin": margin,
        "df": None,
        "pass": False,
        "decided": False,
        "note": "",
    }


def beats(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> dict:
    """ "A beats B": one-sided Welch t-test (H1: mean(a) > mean(b)), pass when ``p < alpha``.

    Returns ``{test, n_a, n_b, mean_a, mean_b, diff, ci (95 % two-sided Welch CI of the difference), ci_level,
    p_value, alpha, margin (None), df, pass, decided, note}``; ``decided`` is False (and ``pass`` False) when an arm
    has fewer than two values."""
    from scipy import stats

    a, b = _values(a), _values(b)
    out = _base(BEATS_TEST, a, b, alpha, None)
    if len(a) < MIN_SEEDS or len(b) < MIN_SEEDS:
        out["note"] = NEEDS_SEEDS
        return out
    w = welch(a, b, 1 - alpha)
    out.update(ci=w["ci"], ci_level=w["ci_level"], df=None if math.isnan(w["df"]) else w["df"], decided=True)
    if w["se"] == 0:
        out["p_value"] = 0.0 if w["diff"] > 0 else 1.0
        out["note"] = "zero variance in both arms: the difference is exact"
    else:
        out["p_value"] = float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
    out["pass"] = out["p_value"] < alpha
    return out


def equivalent(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = ALPHA) -> dict:
    """ "A is comparable to B" within ``margin``: TOST with two one-sided Welch tests, pass when both
    ``p < alpha`` (the ``1 - 2 alpha`` Welch CI of the difference inside ``(-margin, +margin)``).

    ``p_value`` = the larger of the two one-sided p-values; ``p_lower`` / ``p_upper`` are both. Same keys as
    :func:`beats`, with ``ci`` the 90 % CI (for ``alpha`` 0.05)."""
    from scipy import stats

    if not margin > 0:
        raise ValueError(f"equivalence margin must be > 0, got {margin!r}")
    a, b = _values(a), _values(b)
    out = _base(TOST_TEST, a, b, alpha, float(margin))
    out.update(p_lower=None, p_upper=None)
    if len(a) < MIN_SEEDS or len(b) < MIN_SEEDS:
        out["note"] = NEEDS_SEEDS
        return out
    w = welch(a, b, 1 - 2 * alpha)
    out.update(ci=w["ci"], ci_level=w["ci_level"], df=None if math.isnan(w["df"]) else w["df"], decided=True)
    if w["se"] == 0:
        p_low = 0.0 if w["diff"] > -margin else 1.0
        p_high = 0.0 if w["diff"] < margin else 1.0
        out["note"] = "zero variance in both arms: the difference is exact"
    else:
        p_low = float(stats.ttest_ind([x + margin for x in a], b, equal_var=False, alternative="greater").pvalue)
        p_high = float(stats.ttest_ind([x - margin for x in a], b, equal_var=False, alternative="less").pvalue)
    out.update(p_lower=p_low, p_upper=p_high, p_value=max(p_low, p_high))
    out["pass"] = out["p_value"] < alpha
    return out


def equivalent_paired(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = ALPHA) -> dict:
    """ "A is comparable to B" within ``margin`` for paired values (``a[i]`` and ``b[i]`` from the same seed):
    TOST on the differences ``a[i] - b[i]``, pass when both one-sided ``p < alpha`` (the ``1 - 2 alpha`` CI of
    the mean difference inside ``(-margin, +margin)``).

    Same keys as :func:`equivalent` plus ``n_pairs`` and ``sd_diff``; ``ValueError`` when the arms differ in
    length or a pair has a missing value (pairs cannot be re-formed)."""
    from scipy import stats

    if not margin > 0:
        raise ValueError(f"equivalence margin must be > 0, got {margin!r}")
    if len(a) != len(b):
        raise ValueError(f"equivalent_paired: arms of different length ({len(a)} and {len(b)}): values must pair")
    if len(_values(a)) != len(a) or len(_values(b)) != len(b):
        raise ValueError("equivalent_paired: a missing (None/NaN) value breaks its pair; drop the pair first")
    a, b = _values(a), _values(b)
    diffs = [x - y for x, y in zip(a, b)]
    out = _base(PAIRED_TOST_TEST, a, b, alpha, float(margin))
    out.update(p_lower=None, p_upper=None, n_pairs=len(diffs), sd_diff=None)
    if len(diffs) < MIN_SEEDS:
        out["note"] = f"needs >= {MIN_SEEDS} pairs"
        return out
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    out.update(sd_diff=sd, df=n - 1, decided=True, ci_level=1 - 2 * alpha)
    if se == 0:
        out["ci"] = [mean, mean]
        p_low = 0.0 if mean > -margin else 1.0
        p_high = 0.0 if mean < margin else 1.0
        out["note"] = "identical differences in every pair: the difference is exact"
    else:
        half = float(stats.t.ppf(1 - alpha, n - 1)) * se
        out["ci"] = [mean - half, mean + half]
        p_low = float(stats.ttest_1samp(diffs, -margin, alternative="greater").pvalue)
        p_high = float(stats.ttest_1samp(diffs, margin, alternative="less").pvalue)
    out.update(p_lower=p_low, p_upper=p_high, p_value=max(p_low, p_high))
    out["pass"] = out["p_value"] < alpha
    return out


# ------------------------------------------------------------------------------------------ power
#: the power a claim's test must have at the pre-registered sd to be decidable (a failed test below it is
#: "undecidable at this budget")
POWER_TARGET = 0.8


def _per_arm(n_a: int, n_b: int | None) -> int:
    """The arm size the power is computed for: the smaller arm (a lower bound for unequal arms)."""
    return int(min(n_a, n_a if n_b is None else n_b))


def _check_power_args(sd: float, alpha: float) -> None:
    if not sd > 0:
        raise ValueError(f"power: the seed sd must be > 0, got {sd!r}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"power: alpha must be in (0, 0.5), got {alpha!r}")


def welch_df_of_ratio(r, n: int):
    """Welch-Satterthwaite df of two arms of ``n`` values whose sample variances split as ``r : 1 - r``:
    ``(n - 1) / (r^2 + (1 - r)^2)`` (between ``n - 1`` and ``2(n - 1)``)."""
    return (n - 1) / (r**2 + (1 - r) ** 2)


#: quadrature nodes: Gauss-Jacobi over the variance split R, Gauss-Legendre over the chi-square of se
_R_NODES, _CHI2_NODES = 48, 96


def _ratio_nodes(n: int):
    """Nodes ``r`` and weights (summing to 1) of ``E[f(R)]`` for ``R ~ Beta((n-1)/2, (n-1)/2)``: Gauss-Jacobi on
    ``x = 2r - 1`` with weight ``(1-x)^(a-1) (1+x)^(a-1)``, ``a = (n-1)/2`` (exact at the Beta(1/2, 1/2) poles)."""
    from scipy.special import roots_jacobi

    a = (n - 1) / 2
    x, w = roots_jacobi(_R_NODES, a - 1, a - 1)
    return (1 + x) / 2, w / w.sum()


def power_beats(effect: float, sd: float, n_a: int, n_b: int | None = None, alpha: float = ALPHA) -> float:
    """Power of :func:`beats` (one-sided Welch, ``p < alpha``) when the true difference is ``effect`` and both arms
    have seed sd ``sd``: ``E_R[ P(T'_{2(n-1), effect / (sd sqrt(2/n))} > t_{1-alpha, df(R)}) ]``, R ~ Beta((n-1)/2,
    (n-1)/2) (the module docstring; ``scipy.stats.nct``); ``n`` = the smaller arm. 0 when an arm has fewer than 2
    values."""
    from scipy import stats

    _check_power_args(sd, alpha)
    n = _per_arm(n_a, n_b)
    if n < MIN_SEEDS:
        return 0.0
    r, weight = _ratio_nodes(n)
    delta = effect / (sd * math.sqrt(2 / n))
    passes = stats.nct.sf(stats.t.ppf(1 - alpha, welch_df_of_ratio(r, n)), 2 * (n - 1), delta)
    return float(min(1.0, max(0.0, weight @ passes)))


def power_equivalent(
    margin: float, sd: float, n_a: int, n_b: int | None = None, alpha: float = ALPHA, true_diff: float = 0.0
) -> float:
    """Power of :func:`equivalent` (TOST within ``+/-margin``, Welch) when the true difference is ``true_diff``
    (default 0) and both arms have seed sd ``sd``: ``E_{R, se}[ max(0, Phi((m - c - theta)/sd_d) -
    Phi((-m + c - theta)/sd_d)) ]``, ``c = t_{1-alpha, df(R)} se`` (the module docstring); ``n`` = the smaller arm.
    0 when an arm has fewer than 2 values."""
    import numpy as np
    from scipy import stats
    from scipy.special import roots_legendre

    _check_power_args(sd, alpha)
    if not margin > 0:
        raise ValueError(f"power: the equivalence margin must be > 0, got {margin!r}")
    n = _per_arm(n_a, n_b)
    if n < MIN_SEEDS:
        return 0.0
    nu = 2 * (n - 1)
    sd_d = sd * math.sqrt(2 / n)
    r, weight = _ratio_nodes(n)
    t_crit = stats.t.ppf(1 - alpha, welch_df_of_ratio(r, n))
    # u = nu se^2 / sd_d^2 ~ chi2(nu); the interval (-m + c, m - c) is empty from u = nu (m / (t_crit sd_d))^2 on,
    # and chi2(nu) holds no mass beyond nu + 12 sqrt(2 nu) + 60 (upper tail < 1e-12)
    top = np.minimum(nu * (margin / (t_crit * sd_d)) ** 2, nu + 12 * math.sqrt(2 * nu) + 60)
    x, w = roots_legendre(_CHI2_NODES)
    u = top[:, None] * (1 + x[None, :]) / 2  # (R node, chi2 node)
    c = t_crit[:, None] * sd_d * np.sqrt(u / nu)
    inside = stats.norm.cdf((margin - c - true_diff) / sd_d) - stats.norm.cdf((-margin + c - true_diff) / sd_d)
    given_ratio = (np.maximum(inside, 0.0) * stats.chi2.pdf(u, nu)) @ w * top / 2
    return float(min(1.0, max(0.0, weight @ given_ratio)))


def seeds_for_power(power_of_n, target: float = POWER_TARGET, n_max: int = 1000) -> int | None:
    """The smallest ``n >= 2`` with ``power_of_n(n) >= target`` (power grows with n: doubling, then bisection);
    None when even ``n_max`` does not reach it."""
    if not 0 < target < 1:
        raise ValueError(f"power target must be in (0, 1), got {target!r}")
    if power_of_n(n_max) < target:
        return None
    low, high = 1, MIN_SEEDS  # invariant: power(low) < target (or low < 2), power(high) checked below
    while power_of_n(high) < target:
        low, high = high, min(2 * high, n_max)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if power_of_n(mid) >= target else (mid, high)
    return high


# ------------------------------------------------------------------------------------------ bootstrap
def bootstrap_ratio(
    num_sums: Sequence[float],
    num_counts: Sequence[float],
    den_sums: Sequence[float],
    den_counts: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap over units (e.g. images) of the pooled ratio of means
    ``R = (sum x_i / sum n_i) / (sum y_i / sum m_i)`` (unit i: sum ``x_i`` over ``n_i`` pixels of one region,
    ``y_i`` over ``m_i`` of the other). Units are drawn with replacement (``numpy.random.default_rng(seed)``);
    resamples where R is undefined (an empty region, a zero denominator) are dropped and counted.

    Returns ``{estimate, ci: [lo, hi] (the (1-c)/2 and (1+c)/2 quantiles), ci_level, units, resamples,
    undefined}``; ``ci`` None with fewer than 2 units or when every resample is undefined."""
    import numpy as np

    arrays = [np.nan_to_num(np.asarray(v, dtype=float)) for v in (num_sums, num_counts, den_sums, den_counts)]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        raise ValueError("bootstrap_ratio: the four per-unit sequences must have one length")
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError(f"bootstrap_ratio: confidence in (0, 1) and resamples >= 1, got {confidence}, {resamples}")
    x, n, y, m = arrays
    units = len(x)

    def ratio(weights):
        with np.errstate(divide="ignore", invalid="ignore"):
            return (weights @ x / (weights @ n)) / (weights @ y / (weights @ m))

    estimate = float(ratio(np.ones(units))) if units else math.nan
    out = {
        "estimate": None if math.isnan(estimate) or math.isinf(estimate) else estimate,
        "ci": None,
        "ci_level": confidence,
        "units": units,
        "resamples": int(resamples),
        "undefined": 0,
    }
    if units < 2:
        return out
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, units, size=(int(resamples), units))
    weights = np.zeros((int(resamples), units))
    np.add.at(weights, (np.arange(int(resamples))[:, None], draws), 1.0)  # how often each unit is drawn
    values = ratio(weights)
    finite = values[np.isfinite(values)]
    out["undefined"] = int(resamples - finite.size)
    if finite.size:
        lo, hi = np.quantile(finite, [(1 - confidence) / 2, (1 + confidence) / 2])
        out["ci"] = [float(lo), float(hi)]
    return out
