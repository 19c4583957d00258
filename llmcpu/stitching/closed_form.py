"""Closed-form maps between two CPUs' hidden spaces, fitted on parallel anchors, and the two references they are
judged against.

A stitch reads B's encoder output ``x`` [N, Db] with A's decoder, through ``y ≈ x @ W + b`` [N, Da]:

* ``fit_linear``      — ordinary least squares (affine by default): the best any linear stitch can start from.
* ``fit_procrustes``  — orthogonal Procrustes (Schönemann 1966): a rotation (semi-orthogonal when Db ≠ Da) plus a
  translation; it can only re-orient B's space, so it tests whether the two spaces are the same up to a rotation.
* ``relative``        — relative representations (Moschella et al. 2023): each row described by its cosine to K
  shared anchors, a description invariant to any rotation (and scale) of the space, so needing no map at all.
* ``padded_ids``      — the control "ids are not an embedding": the raw token ids themselves, zero-padded to the
  embedding width. A decoder that reconstructs text from these has learned to read an ISA, not a representation.

Everything is computed in float64; the fits refuse underdetermined or non-finite inputs with one ``UserError``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmcpu.errors import UserError
from llmcpu.linalg import checked_pair as _pair
from llmcpu.linalg import fit_procrustes as fit_procrustes  # re-exported: moved down a layer for porting

EPS = 1e-12  # norm floor: a zero row has cosine 0 to everything instead of NaN
FLOAT32_EXACT = 2**24  # every integer below this is exactly a float32


def fit_linear(x, y, *, bias: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Least squares ``y ≈ x @ W + b``: (W [Db, Da], b [Da]) in float64 (b = 0 without ``bias``).

  Solved on centred data, then ``b = mean(y) − mean(x) @ W`` (the same optimum as the augmented system [x, 1], better
  conditioned). Refuses fewer anchors than unknowns per output column (N < Db + bias): the fit would be a choice,
  not a measurement.
  """
  x, y = _pair(x, y, "fit_linear")
  n, db = x.shape
  if n < db + int(bias):
    raise UserError(f"fit_linear needs at least Db + bias = {db + int(bias)} anchor rows, got {n}; add anchors")
  if not bias:
    return np.linalg.lstsq(x, y, rcond=None)[0], np.zeros(y.shape[1])
  mx, my = x.mean(0), y.mean(0)
  w = np.linalg.lstsq(x - mx, y - my, rcond=None)[0]
  return w, my - mx @ w


def apply(x, w: np.ndarray, b: np.ndarray) -> np.ndarray:
  """``x @ W + b`` in float64, returned in x's float dtype (float64 for integer x)."""
  x = np.asarray(x)
  out = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
  return out.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)


def _unit(rows: np.ndarray) -> np.ndarray:
  return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), EPS)


def relative(x, anchors) -> np.ndarray:
  """[N, K] float64: cosine of each row of ``x`` [N, D] to each anchor [K, D] (0 for a zero row or anchor)."""
  x, anchors = np.asarray(x, np.float64), np.asarray(anchors, np.float64)
  if x.ndim != 2 or anchors.ndim != 2 or x.shape[1] != anchors.shape[1]:
    raise UserError(f"relative needs x [N, D] and anchors [K, D] of the same D, got {x.shape} and {anchors.shape}")
  return _unit(x) @ _unit(anchors).T


def padded_ids(ids_per_row: Sequence[Sequence[int]], width: int) -> tuple[np.ndarray, int]:
  """The control "ids are not an embedding": ([B, width] float32, rows truncated).

  Row i is the token ids of document i as numbers, then zeros (the pad id) up to ``width``; a document longer than
  ``width`` keeps its first ``width`` ids and is counted in the second value. Ids must be 0 ≤ id < 2**24 so float32
  holds them exactly.
  """
  if width < 1:
    raise UserError(f"padded_ids needs a width of at least 1, got {width}")
  out = np.zeros((len(ids_per_row), width), np.float32)
  truncated = 0
  for i, ids in enumerate(ids_per_row):
    row = np.asarray(ids, np.int64).reshape(-1)
    if row.size and (row.min() < 0 or row.max() >= FLOAT32_EXACT):
      raise UserError(f"padded_ids row {i} has an id outside [0, 2**24): float32 cannot hold it exactly")
    truncated += row.size > width
    out[i, : min(row.size, width)] = row[:width]
  return out, int(truncated)
