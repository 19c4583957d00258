"""Bootstrap intervals over documents, against scipy.stats.bootstrap (BCa, paired) on the same data."""

import numpy as np
import pytest
import scipy.stats

from llmcpu.crosseval import intervals


def _scipy(columns, statistic, n_resamples=20000):
  res = scipy.stats.bootstrap(
    tuple(columns), statistic, paired=True, vectorized=True, method="BCa", n_resamples=n_resamples, rng=1
  )
  return res.confidence_interval.low, res.confidence_interval.high


@pytest.mark.parametrize("n", [12, 200])
def test_bca_interval_of_a_mean_matches_scipy(n):
  x = np.random.default_rng(n).lognormal(0.0, 1.0, n)  # skewed: BCa and percentile differ
  ours = intervals.bootstrap(x[:, None], lambda s: s[..., 0] / n, resamples=20000)
  ref = _scipy([x], lambda a, axis: a.mean(axis=axis))
  width = ref[1] - ref[0]
  assert ours[0] == pytest.approx(ref[0], abs=0.06 * width)
  assert ours[1] == pytest.approx(ref[1], abs=0.06 * width)


def test_bca_interval_of_a_ratio_of_sums_matches_scipy():
  rng = np.random.default_rng(3)
  nbytes = rng.integers(200, 5000, 150).astype(float)  # documents of very different sizes
  bits = nbytes * rng.normal(2.5, 0.4, 150)
  ours = intervals.bootstrap(np.stack([bits, nbytes], 1), intervals.ratio(0, 1), resamples=20000)
  ref = _scipy([bits, nbytes], lambda b, y, axis: b.sum(axis=axis) / y.sum(axis=axis))
  width = ref[1] - ref[0]
  assert ours[0] == pytest.approx(ref[0], abs=0.06 * width)
  assert ours[1] == pytest.approx(ref[1], abs=0.06 * width)
  point = bits.sum() / nbytes.sum()
  assert ours[0] < point < ours[1]


def test_coverage_of_the_mean_is_about_95_percent():
  rng = np.random.default_rng(0)
  hits = 0
  for _ in range(200):
    x = rng.exponential(1.0, 40)  # true mean 1
    lo, hi = intervals.bootstrap(x[:, None], lambda s: s[..., 0] / 40, resamples=999, seed=int(rng.integers(1 << 30)))
    hits += lo <= 1.0 <= hi
  assert 0.88 <= hits / 200 <= 0.99


def test_degenerate_data():
  assert intervals.bootstrap(np.ones((1, 1)), lambda s: s[..., 0]) is None  # one document
  lo, hi = intervals.bootstrap(np.ones((10, 1)), lambda s: s[..., 0] / 10)  # constant: no spread
  assert lo == hi == pytest.approx(1.0)
  zeros = np.zeros((10, 2))
  assert intervals.bootstrap(zeros, intervals.ratio(0, 1)) is None  # undefined statistic
  assert intervals.mean_std([1.0, 2.0, 3.0]) == (2.0, pytest.approx(1.0))
  assert intervals.mean_std([1.0, None]) == (1.0, None)
  assert intervals.mean_std([]) == (None, None)
