"""Statistics of the visual Turing test (issue 29) against scipy and a worked textbook example."""

import math

import pytest
from scipy.stats import binomtest

from meddiff.errors import MeddiffError
from meddiff.tasks.turing.score import verdict
from meddiff.tasks.turing.stats import accuracy_summary, binomial_test, fleiss_kappa, wilson_interval

CASES = [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (20, 40), (22, 40), (30, 40), (7, 13), (51, 100), (480, 1000)]


@pytest.mark.parametrize("k,n", CASES)
def test_wilson_interval_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


@pytest.mark.parametrize("k,n", CASES + [(5, 37), (0, 200), (200, 200)])
@pytest.mark.parametrize("p", [0.5, 0.3, 0.9])
def test_binomial_test_matches_scipy(k, n, p):
    assert binomial_test(k, n, p) == pytest.approx(binomtest(k, n, p).pvalue, rel=1e-9, abs=1e-300)


def test_fleiss_kappa_wikipedia_example():
    # Fleiss' kappa, Wikipedia "Worked example": 10 subjects, 14 raters, 5 categories; P_bar 0.378, P_e 0.213.
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert round(fleiss_kappa(counts), 3) == 0.210
    # by hand from the definitions: P_bar = 53.4 / 140 ... = 0.37802, P_e = 0.21347
    p_bar = sum((sum(c * c for c in r) - 14) / (14 * 13) for r in counts) / 10
    p_e = sum((sum(r[j] for r in counts) / 140) ** 2 for j in range(5))
    assert round(p_bar, 3) == 0.378 and round(p_e, 3) == 0.213


def test_fleiss_kappa_edges():
    assert fleiss_kappa([[3, 0], [0, 3], [3, 0]]) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa([[2, 0], [2, 0]]))  # every rating alike: undefined
    # two raters who always disagree on a balanced set: kappa = (0 - 0.5) / 0.5 = -1
    assert fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0)
    with pytest.raises(MeddiffError, match="same number"):
        fleiss_kappa([[2, 0], [1, 0]])


def test_wilson_and_binomial_refuse_bad_counts():
    with pytest.raises(MeddiffError, match="successes"):
        wilson_interval(5, 4)
    with pytest.raises(MeddiffError, match="n > 0"):
        binomial_test(0, 0)


def test_accuracy_summary_sensitivity_specificity():
    pairs = [("synthetic", "synthetic")] * 3 + [("synthetic", "real")] + [("real", "real")] * 2 + [("real", "synthetic")] * 2
    s = accuracy_summary(pairs)
    assert (s["correct"], s["n"]) == (5, 8)
    assert s["sensitivity"]["accuracy"] == 0.75 and s["specificity"]["accuracy"] == 0.5
    assert s["p_value_vs_50"] == pytest.approx(binomtest(5, 8).pvalue)


def test_verdict_in_the_seeds_terms():
    def pooled(k, n):
        return {"accuracy": k / n, "ci95": list(wilson_interval(k, n))}

    v = verdict(pooled(200, 400))
    assert v["passes"] and v["ci_includes_50"] and v["text"].startswith("passes")
    v = verdict(pooled(350, 400))
    assert not v["passes"] and not v["ci_includes_50"] and v["text"].startswith("fails")
    v = verdict(pooled(21, 40))  # 52.5 % but the interval reaches far above 55 %
    assert v["passes"] and v["ci_includes_50"] and "more answers" in v["text"]
