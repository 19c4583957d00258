"""Bootstrap intervals over documents: against scipy.stats.bootstrap (BCa, paired), a plain cluster-resampling loop,
analytic widths for perfectly correlated clusters; undefined resamples counted; TOST verdicts with known answers."""

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


# ------------------------------------------------------------------------------------------------- clusters


def _naive_cluster_means(x, clusters, resamples, seed):
  """The two-stage cluster bootstrap of a mean written as a plain loop: draw K clusters with replacement, then each
  drawn cluster's documents with replacement."""
  rng = np.random.default_rng(seed)
  groups = [x[clusters == c] for c in np.unique(clusters)]
  out = np.empty(resamples)
  for r in range(resamples):
    picked = [groups[i] for i in rng.integers(len(groups), size=len(groups))]
    out[r] = np.concatenate([g[rng.integers(len(g), size=len(g))] for g in picked]).mean()
  return out


def _clustered_data(k=25, seed=0):
  rng = np.random.default_rng(seed)
  sizes = rng.integers(2, 15, k)
  clusters = np.repeat(np.arange(k), sizes)
  x = rng.normal(0, 1, k)[clusters] + rng.normal(0, 0.5, len(clusters))  # a shared effect per cluster
  return x, clusters


def test_cluster_bootstrap_distribution_matches_a_plain_loop():
  x, clusters = _clustered_data()
  n = len(x)
  ref = _naive_cluster_means(x, clusters, 8000, seed=2)
  # "The mean of the drawn documents" is a ratio of sums (a resample holds a varying number of documents).
  table = np.stack([x, np.ones(n)], 1)
  ours = intervals.draws(table, intervals.ratio(0, 1), clusters=clusters, resamples=8000, seed=1)
  assert ours.undefined == 0 and ours.clusters == 25
  for q in (2.5, 16, 50, 84, 97.5):
    assert np.percentile(ours.theta_b, q) == pytest.approx(np.percentile(ref, q), abs=0.04)
  assert ours.theta_b.std() == pytest.approx(ref.std(), rel=0.05)


def test_perfectly_correlated_clusters_widen_the_interval_as_the_cluster_count_says():
  k, size = 30, 10
  values = np.random.default_rng(4).normal(0.0, 1.0, k)
  clusters = np.repeat(np.arange(k), size)
  x = values[clusters]  # every document of a cluster is the same: k independent values, not k·size
  table = np.stack([x, np.ones_like(x)], 1)
  iid = intervals.bootstrap(table, intervals.ratio(0, 1), resamples=20000)
  clustered = intervals.bootstrap(table, intervals.ratio(0, 1), clusters=clusters, resamples=20000)
  assert clustered.clusters == k and iid.clusters == k * size
  # Then the cluster bootstrap is the bootstrap of the k cluster values: BCa over them (scipy) is the reference.
  ref = _scipy([values], lambda a, axis: a.mean(axis=axis))
  width = ref[1] - ref[0]
  assert clustered[0] == pytest.approx(ref[0], abs=0.06 * width)
  assert clustered[1] == pytest.approx(ref[1], abs=0.06 * width)
  # and about √size wider than the interval that takes the k·size documents for independent ones.
  assert (clustered[1] - clustered[0]) / (iid[1] - iid[0]) == pytest.approx(np.sqrt(size), rel=0.15)


def test_one_cluster_per_document_is_the_plain_bootstrap():
  x = np.random.default_rng(5).lognormal(0.0, 1.0, 50)
  plain = intervals.bootstrap(x[:, None], lambda s: s[..., 0] / 50, seed=3)
  named = intervals.bootstrap(x[:, None], lambda s: s[..., 0] / 50, clusters=[f"d{i}" for i in range(50)], seed=3)
  assert plain == named and plain.clusters == named.clusters == 50
  one = intervals.bootstrap(x[:, None], lambda s: s[..., 0] / 50, clusters=["a"] * 50)
  assert one is None  # one cluster: nothing to resample


def test_undefined_resamples_are_counted_not_dropped():
  n = 20
  table = np.zeros((n, 2))
  table[:, 0] = 1.0
  table[7, 1] = 1.0  # the denominator lives in one document: a resample without it is undefined
  d = intervals.draws(table, intervals.ratio(0, 1), resamples=4999, seed=0)
  expected = 4999 * (1 - 1 / n) ** n  # P(document 7 never drawn in n draws)
  sd = np.sqrt(4999 * (1 - 1 / n) ** n * (1 - (1 - 1 / n) ** n))
  assert abs(d.undefined - expected) < 4 * sd
  assert len(d.theta_b) + d.undefined == 4999
  # Over a tenth undefined: no interval, and the stored info says why.
  info = intervals.bootstrap_info(table, intervals.ratio(0, 1), resamples=4999)
  assert info["ci"] is None and info["info"]["undefined"] == d.undefined
  assert f"{d.undefined}/4999 resamples undefined" in intervals.describe(info["ci"], info["info"])
  # A few undefined: an interval from the rest, carrying its count.
  table = np.zeros((120, 2))
  table[:, 0] = np.arange(120)
  table[:6, 1] = 1.0  # P(none of 6 of 120 drawn) ≈ 0.0024
  ci = intervals.bootstrap(table, intervals.ratio(0, 1), resamples=4999, seed=1)
  assert ci is not None and 0 < ci.undefined < 0.01 * 4999
  assert intervals.describe(ci, ci.info()).endswith(f"120 clusters, {ci.undefined}/4999 resamples undefined)")


# ------------------------------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
  ("ci90", "verdict"),
  [
    ((0.05, 0.30), intervals.EXECUTES),
    ((0.12, 0.50), intervals.EXECUTES),
    ((0.02, 0.08), intervals.EQUIVALENT),  # above 0, but shown to be smaller than the margin
    ((-0.09, 0.09), intervals.EQUIVALENT),
    ((-0.05, 0.20), intervals.UNDECIDED),
    ((-0.30, 0.05), intervals.UNDECIDED),
    ((-0.40, -0.15), intervals.BELOW),
    (None, intervals.UNDECIDED),
  ],
)
def test_tost_verdicts_on_hand_made_intervals(ci90, verdict):
  assert intervals.tost(ci90, 0.1) == verdict


@pytest.mark.parametrize(
  ("mean", "sd", "n", "verdict"),
  [(0.5, 0.3, 200, intervals.EXECUTES), (0.0, 0.2, 400, intervals.EQUIVALENT), (0.0, 1.0, 12, intervals.UNDECIDED)],
)
def test_tost_verdicts_on_tables_with_known_answers(mean, sd, n, verdict):
  # Per-prompt values centred exactly on `mean` with spread `sd`: the 90% interval is ≈ mean ± 1.645·sd/√n.
  z = np.random.default_rng(n).normal(0.0, 1.0, n)
  x = mean + sd * (z - z.mean()) / z.std()
  table = np.stack([x, np.ones(n)], 1)
  out = intervals.bootstrap_info(table, intervals.ratio(0, 1), margin=0.1)
  half = 1.645 * sd / np.sqrt(n)
  assert out["ci90"][0] == pytest.approx(mean - half, abs=0.25 * half)
  assert out["ci90"][1] == pytest.approx(mean + half, abs=0.25 * half)
  assert out["verdict"] == verdict
  with pytest.raises(ValueError):
    intervals.tost((0.0, 0.1), 0.0)
