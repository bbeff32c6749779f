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
