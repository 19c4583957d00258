"""95% bootstrap intervals over documents, for statistics that are functions of per-document sums.

Every figure of a cell is a function of sums over documents: bits per byte is Σ NLL / Σ bytes, relevance a ratio of
pooled PMI per byte, fluency a geometric mean of pooled ratios, exact match a mean of 0/1. So a cell keeps one row per
document of additive columns (``[n_docs, k]``) and a statistic ``f(sums[..., k]) -> value[...]``; resampling documents
with replacement is then a matrix product of multinomial counts with that table, vectorised over every resample.

The interval is the bias-corrected and accelerated (BCa) bootstrap (Efron & Tibshirani 1993, §14.3), as
``scipy.stats.bootstrap(..., paired=True, method="BCa")`` computes it (the tests compare the two); the percentile
interval is the fallback where BCa is undefined (a constant or one-sided bootstrap distribution).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import ndtr, ndtri

CONFIDENCE = 0.95
RESAMPLES = 4999
_CHUNK = 1000  # resamples per matrix product: bounds memory to CHUNK × n_docs counts

Statistic = Callable[[np.ndarray], np.ndarray]  # sums [..., k] -> value [...]


def bootstrap(
  table: np.ndarray,
  statistic: Statistic,
  *,
  confidence: float = CONFIDENCE,
  resamples: int = RESAMPLES,
  seed: int = 0,
) -> tuple[float, float] | None:
  """The BCa interval of ``statistic(table.sum(0))`` resampling the rows (documents) of ``table`` [n, k].

  None when there are fewer than two documents or the statistic is undefined on the data itself.
  """
  table = np.asarray(table, np.float64)
  if table.ndim == 1:
    table = table[:, None]
  n = len(table)
  total = table.sum(0)
  theta = float(statistic(total))
  if n < 2 or not np.isfinite(theta):
    return None
  rng = np.random.default_rng([seed, n])
  draws = []
  for start in range(0, resamples, _CHUNK):
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(_CHUNK, resamples - start))
    draws.append(statistic(counts @ table))
  theta_b = np.concatenate(draws)
  theta_b = theta_b[np.isfinite(theta_b)]
  if len(theta_b) < 0.9 * resamples:  # the statistic is undefined on many resamples: no honest interval
    return None
  alpha = (1.0 - confidence) / 2.0
  levels = _bca_levels(table, total, statistic, theta, theta_b, alpha)
  if levels is None:
    levels = (alpha, 1.0 - alpha)
  lo, hi = np.percentile(theta_b, [100.0 * levels[0], 100.0 * levels[1]])
  return float(lo), float(hi)


def _bca_levels(table, total, statistic, theta, theta_b, alpha) -> tuple[float, float] | None:
  below = (np.count_nonzero(theta_b < theta) + np.count_nonzero(theta_b <= theta)) / (2.0 * len(theta_b))
  if not 0.0 < below < 1.0:
    return None
  z0 = float(ndtri(below))
  jack = statistic(total[None, :] - table)  # leave one document out, every document at once
  if not np.all(np.isfinite(jack)):
    return None
  u = jack.mean() - jack
  den = float(np.sum(u**2))
  if den <= 0.0:
    return None
  a = float(np.sum(u**3)) / (6.0 * den**1.5)
  levels = []
  for z in (float(ndtri(alpha)), float(ndtri(1.0 - alpha))):
    levels.append(float(ndtr(z0 + (z0 + z) / (1.0 - a * (z0 + z)))))
  return levels[0], levels[1]


# ------------------------------------------------------------------------------------------------- statistics


def ratio(num: int, den: int, scale: float = 1.0) -> Statistic:
  """``scale · sums[num] / sums[den]`` (NaN where the denominator is 0)."""

  def f(sums: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
      return scale * sums[..., num] / np.where(sums[..., den] == 0, np.nan, sums[..., den])

  return f


def mean_std(values) -> tuple[float | None, float | None]:
  """(mean, sample standard deviation) of the finite values; std is None below two values."""
  xs = np.array([v for v in values if v is not None and np.isfinite(v)], np.float64)
  if not len(xs):
    return None, None
  return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else None
