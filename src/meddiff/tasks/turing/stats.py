"""Statistics of a reading study: Wilson interval, exact binomial test, Fleiss' kappa, accuracy summaries.

Pure Python (``math`` only) so that the formulas are visible; the tests check them against scipy and against
the worked Fleiss example of Wikipedia (kappa 0.210).

>>> round(wilson_interval(20, 40)[0], 4), round(wilson_interval(20, 40)[1], 4)
(0.352, 0.648)
>>> round(binomial_test(30, 40), 5)
0.00222
"""

from __future__ import annotations

import math
from typing import Sequence

from meddiff.errors import MeddiffError

Z95 = 1.959963984540054  # the 0.975 quantile of N(0, 1)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927, eq. as in Brown, Cai & DasGupta 2001, eq. 4).

    p = successes / n;  centre = (p + z^2 / 2n) / (1 + z^2 / n);
    half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2).  ``n == 0`` gives (0, 1).
    """
    if n < 0 or not 0 <= successes <= n:
        raise MeddiffError(f"wilson_interval: need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _log_pmf(k: int, n: int, p: float) -> float:
    if p in (0.0, 1.0):
        return 0.0 if k == (n if p == 1.0 else 0) else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def binomial_test(successes: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test of H0: success probability ``p``; returns the p-value.

    Two-sided as in R's binom.test and scipy.stats.binomtest: the total probability, under H0, of every outcome
    no more likely than the one observed (pmf(i) <= pmf(k) * (1 + 1e-7)).
    """
    if n <= 0 or not 0 <= successes <= n:
        raise MeddiffError(f"binomial_test: need 0 <= successes <= n and n > 0, got {successes} of {n}")
    if not 0 <= p <= 1:
        raise MeddiffError(f"binomial_test: p={p} must lie in [0, 1]")
    logs = [_log_pmf(i, n, p) for i in range(n + 1)]
    cut = logs[successes] + math.log1p(1e-7)
    return min(1.0, sum(math.exp(v) for v in logs if v <= cut))


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa (Fleiss 1971) of ``counts[i][j]``: raters who put subject i in category j, the same number
    of raters m for every subject.

    P_i = (sum_j n_ij^2 - m) / (m (m - 1));  P_bar = mean_i P_i;  p_j = sum_i n_ij / (N m);
    P_e = sum_j p_j^2;  kappa = (P_bar - P_e) / (1 - P_e).  Returns NaN when P_e == 1 (every rating in one
    category: agreement is undefined).
    """
    rows = [list(map(int, r)) for r in counts]
    if not rows:
        raise MeddiffError("fleiss_kappa: no subjects")
    m = sum(rows[0])
    if m < 2 or any(sum(r) != m for r in rows):
        raise MeddiffError("fleiss_kappa: every subject needs the same number (>= 2) of ratings")
    n_subjects, n_categories = len(rows), len(rows[0])
    p_bar = sum((sum(c * c for c in r) - m) / (m * (m - 1)) for r in rows) / n_subjects
    p_j = [sum(r[j] for r in rows) / (n_subjects * m) for j in range(n_categories)]
    p_e = sum(v * v for v in p_j)
    if p_e >= 1.0:
        return float("nan")
    return (p_bar - p_e) / (1 - p_e)


def proportion(successes: int, n: int) -> dict:
    """{"n", "correct", "accuracy", "ci95": [lo, hi]} (accuracy None when n == 0)."""
    lo, hi = wilson_interval(successes, n)
    return {"n": n, "correct": successes, "accuracy": successes / n if n else None, "ci95": [lo, hi]}


def accuracy_summary(pairs: Sequence[tuple[str, str]]) -> dict:
    """``pairs`` of (truth, answer), each "real" or "synthetic" -> accuracy with its Wilson interval, the exact
    binomial p-value against 50 %, sensitivity (synthetic images called synthetic) and specificity (real images
    called real), each with its interval."""
    correct = sum(t == a for t, a in pairs)
    synthetic = [a for t, a in pairs if t == "synthetic"]
    real = [a for t, a in pairs if t == "real"]
    out = proportion(correct, len(pairs))
    out["p_value_vs_50"] = binomial_test(correct, len(pairs)) if pairs else None
    out["sensitivity"] = proportion(sum(a == "synthetic" for a in synthetic), len(synthetic))
    out["specificity"] = proportion(sum(a == "real" for a in real), len(real))
    return out
