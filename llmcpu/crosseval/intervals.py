"""Bootstrap intervals over documents — resampled by cluster — for statistics that are functions of per-document sums.

Every figure of a cell is a function of sums over documents: bits per byte is Σ NLL / Σ bytes, relevance a ratio of
pooled PMI per byte, fluency a geometric mean of pooled ratios, exact match a mean of 0/1. So a cell keeps one row per
document of additive columns (``[n_docs, k]``) and a statistic ``f(sums[..., k]) -> value[...]``; resampling documents
with replacement is then a matrix product of resample counts with that table, vectorised over every resample.

Documents are not independent when they share a source (the parts of one python_docs module, the windows of one
document): the default is the **two-stage cluster bootstrap** (Davison & Hinkley 1997, §3.8, strategy 2): draw K
clusters with replacement out of the K, then within each drawn cluster draw its n_c documents with replacement.
``clusters`` gives each document's cluster id; with one cluster per document (``clusters=None``) it is exactly the
ordinary bootstrap over documents, with the same random stream as before clusters existed.

The interval is the bias-corrected and accelerated (BCa) bootstrap (Efron & Tibshirani 1993, §14.3) with the
acceleration from the **jackknife over clusters** (leave one cluster out; over documents when each is its own
cluster, as ``scipy.stats.bootstrap(..., paired=True, method="BCa")`` computes it — the tests compare the two); the
percentile interval is the fallback where BCa is undefined (a constant or one-sided bootstrap distribution, or a
leave-one-cluster-out statistic that is undefined). Resamples on which the statistic is undefined (NaN: e.g. no
byte drawn) are counted (``Interval.undefined``) and the interval is read from the others; above ``MAX_UNDEFINED``
of them there is no interval, and the count still says why.

``tost`` reads a verdict off the same draws: the two one-sided tests of equivalence to 0 at a stated margin
(Schuirmann 1987), on the (1 − 2α) percentile/BCa interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import ndtr, ndtri

CONFIDENCE = 0.95
RESAMPLES = 4999
MAX_UNDEFINED = 0.1  # above this share of undefined resamples there is no honest interval
EQUIVALENCE_MARGIN = 0.1  # TOST: |relevance| below this counts as 0
EQUIVALENCE_ALPHA = 0.05  # each one-sided test; read on the 90% interval
_CHUNK = 1000  # resamples per matrix product: bounds memory to CHUNK × n_docs counts

Statistic = Callable[[np.ndarray], np.ndarray]  # sums [..., k] -> value [...]


class Interval(tuple):
  """``(lo, hi)`` — a plain pair to every caller — that also says how it was drawn: ``clusters`` resampled,
  ``undefined`` resamples (of ``resamples``) where the statistic had no value."""

  clusters: int
  undefined: int
  resamples: int

  def __new__(cls, lo: float, hi: float, *, clusters: int, undefined: int = 0, resamples: int = RESAMPLES):
    self = super().__new__(cls, (float(lo), float(hi)))
    self.clusters, self.undefined, self.resamples = int(clusters), int(undefined), int(resamples)
    return self

  def info(self) -> dict:
    return {"clusters": self.clusters, "undefined": self.undefined, "resamples": self.resamples}


@dataclasses.dataclass(frozen=True)
class Draws:
  """The bootstrap distribution of one statistic: what every interval and test of it is read from."""

  theta: float  # the statistic on the data
  theta_b: np.ndarray  # its finite values over the resamples
  undefined: int  # resamples where it was not finite
  resamples: int
  clusters: int
  jack: np.ndarray | None  # leave-one-cluster-out values (None when one is undefined)

  def info(self) -> dict:
    return {"clusters": self.clusters, "undefined": self.undefined, "resamples": self.resamples}

  def interval(self, confidence: float = CONFIDENCE) -> Interval | None:
    """The BCa interval (percentile where BCa is undefined); None when too many resamples were undefined."""
    if not len(self.theta_b) or self.undefined > MAX_UNDEFINED * self.resamples:
      return None
    alpha = (1.0 - confidence) / 2.0
    levels = _bca_levels(self.theta, self.theta_b, self.jack, alpha) or (alpha, 1.0 - alpha)
    lo, hi = np.percentile(self.theta_b, [100.0 * levels[0], 100.0 * levels[1]])
    return Interval(lo, hi, clusters=self.clusters, undefined=self.undefined, resamples=self.resamples)


def cluster_index(clusters: Sequence | np.ndarray | None, n: int) -> np.ndarray:
  """Each document's cluster as 0..K−1 (in order of first appearance); one cluster per document when None."""
  if clusters is None:
    return np.arange(n)
  clusters = list(clusters)
  if len(clusters) != n:
    raise ValueError(f"{len(clusters)} cluster ids for {n} documents")
  first: dict = {}
  return np.array([first.setdefault(c, len(first)) for c in clusters], np.int64)


def draws(
  table: np.ndarray,
  statistic: Statistic,
  *,
  clusters: Sequence | np.ndarray | None = None,
  resamples: int = RESAMPLES,
  seed: int = 0,
) -> Draws | None:
  """The cluster bootstrap distribution of ``statistic(table.sum(0))`` (rows of ``table`` [n, k] = documents).

  None when there are fewer than two clusters or the statistic is undefined on the data itself.
  """
  table = np.asarray(table, np.float64)
  if table.ndim == 1:
    table = table[:, None]
  n = len(table)
  index = cluster_index(clusters, n)
  k = int(index.max()) + 1 if n else 0
  total = table.sum(0)
  theta = float(statistic(total))
  if k < 2 or not np.isfinite(theta):
    return None
  rng = np.random.default_rng([seed, n])
  members = [np.flatnonzero(index == c) for c in range(k)]
  values = []
  for start in range(0, resamples, _CHUNK):
    size = min(_CHUNK, resamples - start)
    counts = _iid_counts(rng, n, size) if k == n else _cluster_counts(rng, members, n, size)
    values.append(statistic(counts @ table))
  theta_b = np.concatenate(values)
  finite = np.isfinite(theta_b)
  sums = np.stack([table[m].sum(0) for m in members])
  jack = statistic(total[None, :] - sums)  # leave one cluster out, every cluster at once
  jack = jack if np.all(np.isfinite(jack)) else None
  return Draws(theta, theta_b[finite], int(np.count_nonzero(~finite)), resamples, k, jack)


def _iid_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  return rng.multinomial(n, np.full(n, 1.0 / n), size=size)


def _cluster_counts(rng: np.random.Generator, members: list[np.ndarray], n: int, size: int) -> np.ndarray:
  """[size, n] times each document is drawn: K clusters with replacement, then each drawn cluster's n_c documents
  with replacement. A cluster drawn c times contributes c·n_c draws spread uniformly over its documents, i.e.
  Multinomial(c · n_c, 1/n_c): one call per cluster, vectorised over the resamples."""
  k = len(members)
  picks = rng.multinomial(k, np.full(k, 1.0 / k), size=size)  # [size, K]
  counts = np.zeros((size, n), np.int64)
  for c, docs in enumerate(members):
    counts[:, docs] = rng.multinomial(picks[:, c] * len(docs), np.full(len(docs), 1.0 / len(docs)))
  return counts


def bootstrap(
  table: np.ndarray,
  statistic: Statistic,
  *,
  clusters: Sequence | np.ndarray | None = None,
  confidence: float = CONFIDENCE,
  resamples: int = RESAMPLES,
  seed: int = 0,
) -> Interval | None:
  """The BCa interval of ``statistic(table.sum(0))``, resampling clusters of documents (see the module docstring).

  None when there are fewer than two clusters, the statistic is undefined on the data itself, or it is undefined on
  more than ``MAX_UNDEFINED`` of the resamples (``bootstrap_info`` says which).
  """
  d = draws(table, statistic, clusters=clusters, resamples=resamples, seed=seed)
  return d.interval(confidence) if d is not None else None


def bootstrap_info(
  table: np.ndarray,
  statistic: Statistic,
  *,
  clusters: Sequence | np.ndarray | None = None,
  resamples: int = RESAMPLES,
  seed: int = 0,
  margin: float | None = None,
) -> dict:
  """``{"ci": [lo, hi] | None, "ci90": …, "info": {clusters, undefined, resamples}, "verdict": …}`` for one figure
  (``verdict`` only with an equivalence ``margin``): what a row stores, with the reason when there is no interval."""
  d = draws(table, statistic, clusters=clusters, resamples=resamples, seed=seed)
  if d is None:
    k = int(cluster_index(clusters, len(np.atleast_1d(table))).max(initial=-1)) + 1
    out = {"ci": None, "ci90": None, "info": {"clusters": k, "undefined": None, "resamples": 0}}
  else:
    ci, ci90 = d.interval(CONFIDENCE), d.interval(1.0 - 2.0 * EQUIVALENCE_ALPHA)
    out = {"ci": list(ci) if ci else None, "ci90": list(ci90) if ci90 else None, "info": d.info()}
  if margin is not None:
    out["verdict"] = tost(out["ci90"], margin)
  return out


def store(
  row: dict,
  key: str,
  table: np.ndarray,
  statistic: Statistic,
  *,
  clusters: Sequence | np.ndarray | None = None,
  seed: int = 0,
  margin: float | None = None,
) -> None:
  """Writes one figure's interval into ``row``: ``<key>_ci`` ([lo, hi] or None) and ``<key>_ci_info`` (clusters,
  undefined resamples); with an equivalence ``margin`` also ``<key>_ci90``, ``<key>_verdict`` (``tost``) and
  ``equivalence_margin``."""
  b = bootstrap_info(table, statistic, clusters=clusters, seed=seed, margin=margin)
  row[f"{key}_ci"], row[f"{key}_ci_info"] = b["ci"], b["info"]
  if margin is not None:
    row[f"{key}_ci90"], row[f"{key}_verdict"], row["equivalence_margin"] = b["ci90"], b["verdict"], margin


def _bca_levels(theta, theta_b, jack, alpha) -> tuple[float, float] | None:
  below = (np.count_nonzero(theta_b < theta) + np.count_nonzero(theta_b <= theta)) / (2.0 * len(theta_b))
  if not 0.0 < below < 1.0 or jack is None:
    return None
  z0 = float(ndtri(below))
  u = jack.mean() - jack
  den = float(np.sum(u**2))
  if den <= 0.0:
    return None
  a = float(np.sum(u**3)) / (6.0 * den**1.5)
  levels = []
  for z in (float(ndtri(alpha)), float(ndtri(1.0 - alpha))):
    levels.append(float(ndtr(z0 + (z0 + z) / (1.0 - a * (z0 + z)))))
  return levels[0], levels[1]


# ------------------------------------------------------------------------------------------------- equivalence

EXECUTES = "executes"
EQUIVALENT = "does not execute (equivalent to 0)"
BELOW = "does not execute (below 0)"
UNDECIDED = "undecided"


def tost(ci90: Sequence[float] | None, margin: float = EQUIVALENCE_MARGIN) -> str:
  """The verdict on a figure whose 0 means "not executed" (relevance), from its 90% interval ``(L, U)``, i.e. two
  one-sided tests at α = 0.05 each:

  * ``EQUIVALENT`` — TOST rejects both |θ| ≥ margin hypotheses: −margin < L and U < margin (checked first: a figure
    shown to lie within the margin is not execution, even when it is significantly above 0);
  * ``EXECUTES`` — the one-sided test of θ ≤ 0 rejects: L > 0 (and the interval is not inside the margin);
  * ``BELOW`` — θ ≥ 0 rejected: U < 0, outside the margin;
  * ``UNDECIDED`` — none of these at this many prompts (also when there is no interval).
  """
  if margin <= 0:
    raise ValueError(f"equivalence margin must be > 0, got {margin}")
  if not ci90:
    return UNDECIDED
  lo, hi = float(ci90[0]), float(ci90[1])
  if -margin < lo and hi < margin:
    return EQUIVALENT
  if lo > 0:
    return EXECUTES
  if hi < 0:
    return BELOW
  return UNDECIDED


def describe(ci: Sequence[float] | None, info: dict | None, digits: int = 3) -> str:
  """`` (0.310–0.470, 23 clusters)``, with `` 12/4999 resamples undefined`` when any were; '' without either."""
  if ci is None and not info:
    return ""
  parts = [f"{ci[0]:.{digits}f}–{ci[1]:.{digits}f}" if ci is not None else "no interval"]
  if info:
    parts.append(f"{info['clusters']} clusters")
    if info.get("undefined"):
      parts.append(f"{info['undefined']}/{info['resamples']} resamples undefined")
  return " (" + ", ".join(parts) + ")"


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
