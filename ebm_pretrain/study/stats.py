"""The statistics the claims are judged by, in plain Python (no SciPy at run
time; ``tests/test_study_stats.py`` checks them against SciPy).

* "A beats B": Welch's t-test (unequal variances, Welch–Satterthwaite degrees
  of freedom), two-sided.
* "A matches or beats B": a one-sided non-inferiority test with margin δ:
  H0 mean(A) − mean(B) ≤ −δ against H1 mean(A) − mean(B) > −δ.
* Holm–Bonferroni over the evaluations of one claim.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence


def _betacf(a: float, b: float, x: float) -> float:
  """The continued fraction of the incomplete beta function (Lentz's method)."""
  tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
  c, d = 1.0, 1.0 - qab * x / qap
  d = 1.0 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, 500):
    m2 = 2 * m
    aa = m * (b - m) * x / ((qam + m2) * (a + m2))
    d = 1.0 + aa * d
    d = 1.0 / (d if abs(d) > tiny else tiny)
    c = 1.0 + aa / c
    c = c if abs(c) > tiny else tiny
    h *= d * c
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
    d = 1.0 + aa * d
    d = 1.0 / (d if abs(d) > tiny else tiny)
    c = 1.0 + aa / c
    c = c if abs(c) > tiny else tiny
    delta = d * c
    h *= delta
    if abs(delta - 1.0) < 1e-15:
      break
  return h


def betainc(a: float, b: float, x: float) -> float:
  """The regularised incomplete beta function I_x(a, b)."""
  if x <= 0.0:
    return 0.0
  if x >= 1.0:
    return 1.0
  log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
               + a * math.log(x) + b * math.log1p(-x))
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(log_front) * _betacf(a, b, x) / a
  return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
  """P(T > t) for Student's t with ``df`` (real) degrees of freedom."""
  tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
  return tail if t >= 0 else 1.0 - tail


def t_ppf(q: float, df: float) -> float:
  """The ``q`` quantile of Student's t (bisection on :func:`t_sf`)."""
  lo, hi = -1e3, 1e3
  for _ in range(200):
    mid = (lo + hi) / 2
    if 1.0 - t_sf(mid, df) < q:
      lo = mid
    else:
      hi = mid
  return (lo + hi) / 2


class Comparison(NamedTuple):
  diff: float        # mean(a) − mean(b)
  se: float          # its standard error
  df: float          # Welch–Satterthwaite degrees of freedom
  ci: tuple[float, float]  # 95% confidence interval of diff
  p: float           # the test's p-value (unadjusted)


def _mean_var(v: Sequence[float]) -> tuple[float, float]:
  m = sum(v) / len(v)
  return m, sum((x - m) ** 2 for x in v) / (len(v) - 1)


def welch(a: Sequence[float], b: Sequence[float], margin: float | None = None) -> Comparison:
  """Welch's comparison of two samples (each of 2+ values). ``margin`` None: the
  two-sided test of equal means; else the one-sided non-inferiority test of
  mean(a) − mean(b) > −margin."""
  (ma, va), (mb, vb) = _mean_var(a), _mean_var(b)
  qa, qb = va / len(a), vb / len(b)
  se = math.sqrt(qa + qb)
  diff = ma - mb
  if se == 0.0:
    df = float(len(a) + len(b) - 2)
    centre = diff if margin is None else diff + margin
    p = (0.0 if centre != 0 else 1.0) if margin is None else (0.0 if centre > 0 else 1.0)
    return Comparison(diff, 0.0, df, (diff, diff), p)
  df = (qa + qb) ** 2 / (qa ** 2 / (len(a) - 1) + qb ** 2 / (len(b) - 1))
  half = t_ppf(0.975, df) * se
  if margin is None:
    p = min(1.0, 2.0 * t_sf(abs(diff) / se, df))
  else:
    p = t_sf((diff + margin) / se, df)
  return Comparison(diff, se, df, (diff - half, diff + half), p)


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm–Bonferroni adjusted p-values, in the order given."""
  order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
  out, running = [0.0] * len(pvalues), 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
    out[i] = running
  return out
