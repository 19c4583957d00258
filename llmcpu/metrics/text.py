"""Text metrics over paired hypotheses and references: the one implementation of each (exact match, chrF, BLEU, token
F1), read by the cross-evaluation (``llmcpu.crosseval``) and the stitching scores (``llmcpu.stitching``).

They include the figures vec2text (Morris et al. 2023) reports for a decoder reconstructing text from one embedding,
per evaluation set: BLEU as the *mean of per-pair* sacrebleu scores (``bleu_items``; its
``bleu_score``), token-set F1 over nltk word tokens, exact match, and the cosine between the embeddings of the
reconstruction and of the original. Here:

* ``bleu``         corpus BLEU (sacrebleu defaults, one reference per hypothesis); ``bleu_items`` the per-pair scores,
                   each a one-pair corpus BLEU exactly as vec2text computes them (no effective order).
* ``chrf``         corpus chrF (sacrebleu defaults, 0–100).
* ``token_f1``     mean over pairs of the F1 of whitespace tokens counted as multisets (a repeated word must be
                   reconstructed as often as it occurs); ``sets=True`` gives vec2text's set version, on whitespace
                   tokens rather than nltk's.
* ``exact_match``  share of pairs equal after ``strip()``.
* ``cosine_rows``  per-row cosine of two embedding matrices.

Every mean comes with its per-item array (``*_items``) so a caller can bootstrap it (``llmcpu.crosseval.intervals``).
Empty cases: two empty texts have token F1 1 (nothing to reconstruct, nothing added), one empty text 0; an empty
corpus scores 0 everywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

EPS = 1e-12  # norm floor: a zero row has cosine 0


def _checked(hyps: Sequence[str], refs: Sequence[str]) -> tuple[list[str], list[str]]:
  if len(hyps) != len(refs):
    raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references: need one reference per hypothesis")
  return list(hyps), list(refs)


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
  """Corpus BLEU (sacrebleu, 0–100; 0 for an empty corpus)."""
  hyps, refs = _checked(hyps, refs)
  return float(BLEU().corpus_score(hyps, [refs]).score) if hyps else 0.0


def bleu_items(hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
  """float64 [N]: each pair's BLEU (0–100) as a one-pair corpus; the mean is vec2text's ``bleu_score``."""
  hyps, refs = _checked(hyps, refs)
  metric = BLEU()
  return np.array([metric.corpus_score([h], [[r]]).score for h, r in zip(hyps, refs, strict=True)], np.float64)


def chrf(hyps: Sequence[str], refs: Sequence[str]) -> float:
  """Corpus chrF (sacrebleu, 0–100; 0 for an empty corpus)."""
  hyps, refs = _checked(hyps, refs)
  return float(CHRF().corpus_score(hyps, [refs]).score) if hyps else 0.0


def _f1(hyp: str, ref: str, sets: bool) -> float:
  h, r = hyp.split(), ref.split()
  if not h and not r:
    return 1.0
  if sets:
    hits, n_h, n_r = len(set(h) & set(r)), len(set(h)), len(set(r))
  else:
    hits, n_h, n_r = sum((Counter(h) & Counter(r)).values()), len(h), len(r)
  return 2.0 * hits / (n_h + n_r)  # = 2PR / (P + R), and 0 when either side is empty


def token_f1_items(hyps: Sequence[str], refs: Sequence[str], *, sets: bool = False) -> np.ndarray:
  """float64 [N]: each pair's whitespace-token F1 (multisets; sets with ``sets``), in [0, 1]."""
  hyps, refs = _checked(hyps, refs)
  return np.array([_f1(h, r, sets) for h, r in zip(hyps, refs, strict=True)], np.float64)


def token_f1(hyps: Sequence[str], refs: Sequence[str], *, sets: bool = False) -> float:
  """Mean of ``token_f1_items`` (0 for an empty corpus)."""
  items = token_f1_items(hyps, refs, sets=sets)
  return float(items.mean()) if items.size else 0.0


def exact_match_items(hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
  """float64 [N]: 1 where the pair is equal after ``strip()``, else 0."""
  hyps, refs = _checked(hyps, refs)
  return np.array([h.strip() == r.strip() for h, r in zip(hyps, refs, strict=True)], np.float64)


def exact_match(hyps: Sequence[str], refs: Sequence[str]) -> float:
  """Share of pairs equal after ``strip()`` (0 for an empty corpus)."""
  items = exact_match_items(hyps, refs)
  return float(items.mean()) if items.size else 0.0


def cosine_rows(a, b) -> np.ndarray:
  """float64 [N]: cosine of row i of ``a`` [N, D] with row i of ``b`` [N, D] (0 where either row is zero)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f"cosine_rows needs two [N, D] arrays of the same shape, got {a.shape} and {b.shape}")
  norms = np.maximum(np.linalg.norm(a, axis=1), EPS) * np.maximum(np.linalg.norm(b, axis=1), EPS)
  return np.einsum("nd,nd->n", a, b) / norms
