"""The claims' statistics (study/stats.py, study/report.py) against SciPy's on
fixed numbers: Welch's t-test and its degrees of freedom, the non-inferiority
test, the 95% interval, Holm–Bonferroni; and the verdicts they give."""
import numpy as np
import pytest
from scipy import special, stats as sp

from ebm_pretrain.study import stats
from ebm_pretrain.study.report import claims_table, compare_row

# Top-1 (%) of three seeds: the committed test split's mixed and scratch, 10% labels.
MIXED = [83.30, 82.91, 83.69]
SCRATCH = [80.97, 80.63, 81.31]


def test_incomplete_beta_and_t_distribution_match_scipy():
  for a, b, x in [(0.5, 0.5, 0.3), (1.7, 0.5, 0.99), (3.2, 11.0, 0.2), (20.0, 0.5, 0.95)]:
    assert stats.betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), abs=1e-12)
  for df in (1.5, 2.0, 3.88, 9.0, 40.0):
    for t in (-6.0, -1.2, 0.0, 0.7, 3.1):
      assert stats.t_sf(t, df) == pytest.approx(sp.t.sf(t, df), abs=1e-12)
    assert stats.t_ppf(0.975, df) == pytest.approx(sp.t.ppf(0.975, df), abs=1e-7)


@pytest.mark.parametrize("a,b", [(MIXED, SCRATCH), ([74.0, 75.2, 73.1], [74.5, 74.9, 76.8]),
                                 ([1.0, 2.0, 4.0, 8.0, 3.0], [2.5, 2.0, 2.2])])
def test_welch_matches_scipy(a, b):
  ours = stats.welch(a, b)
  ref = sp.ttest_ind(a, b, equal_var=False)
  assert ours.p == pytest.approx(ref.pvalue, rel=1e-9)
  assert ours.df == pytest.approx(ref.df, rel=1e-9)
  assert ours.diff == pytest.approx(np.mean(a) - np.mean(b))
  ci = ref.confidence_interval(0.95)
  assert ours.ci == pytest.approx((ci.low, ci.high), abs=1e-6)
  # Non-inferiority at margin m: Welch's one-sided test of a + m against b.
  m = 0.5
  ni = stats.welch(a, b, margin=m)
  ref = sp.ttest_ind(np.add(a, m), b, equal_var=False, alternative="greater")
  assert ni.p == pytest.approx(ref.pvalue, rel=1e-9)


def test_holm_matches_the_textbook_procedure():
  p = [0.01, 0.04, 0.03, 0.2]
  assert stats.holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.2])
  assert stats.holm([0.5]) == [0.5]


def _frac(top1):
  """Top-1 given in % as the cells hold it: fractions."""
  return [x / 100 for x in top1]


def _row(a, b, kind):
  """compare_row on top-1 given in %."""
  frac = lambda d: {k: _frac(v) for k, v in d.items()}
  return compare_row(frac(a), frac(b), kind)


def test_verdicts():
  beats = _row({"e": MIXED, "f": MIXED, "g": [80.0]}, {"e": SCRATCH, "f": MIXED, "g": [79.0]},
               "beats")
  assert beats[0].endswith("holds") and "p=0.003" in beats[0]   # 2 tests: p x 2
  assert beats[1].endswith("not shown")                          # equal
  assert beats[2] == "needs seeds (1 of 3)"                      # no borrowed spread
  reversed_ = _row({"e": SCRATCH}, {"e": MIXED}, "beats")
  assert reversed_[0].endswith("reversed")
  # Matches: within the margin and tight holds; far below is reversed; wide is not shown.
  close = _row({"e": [80.0, 80.1, 79.9]}, {"e": [80.1, 80.2, 80.0]}, "matches")
  assert close[0].endswith("holds")
  below = _row({"e": [78.0, 78.1, 77.9]}, {"e": [80.1, 80.2, 80.0]}, "matches")
  assert below[0].endswith("reversed")
  wide = _row({"e": [78.0, 82.0, 80.0]}, {"e": [80.1, 80.2, 80.0]}, "matches")
  assert wide[0].endswith("not shown")


def test_a_claims_row_names_its_reversals():
  s = {"up": {"a": _frac(MIXED), "b": _frac(SCRATCH)},
       "down": {"a": _frac(SCRATCH), "b": _frac(MIXED)},
       "same": {"a": _frac(MIXED), "b": _frac(MIXED)}}
  row = lambda evals: claims_table(s, evals, [dict(claim="c", method="a", than=["b"],
                                                   kind="beats")]).splitlines()[-1]
  assert row(["up", "down"]).endswith("| partly (1 of 2, 1 reversed) |")
  assert row(["up", "same"]).endswith("| partly (1 of 2) |")
  assert row(["down", "same"]).endswith("| does not hold (1 of 2 reversed) |")
  assert row(["same"]).endswith("| does not hold |")
  assert row(["up"]).endswith("| holds |")
