"""Closed-form linear algebra shared by layers that may not import each other (stitching, porting): numpy, float64.

* ``checked_pair``    — x [N, Db], y [N, Da] as float64, refused (one ``UserError``) unless 2-D, parallel, finite.
* ``fit_procrustes``  — orthogonal Procrustes (Schönemann 1966): ``y ≈ x @ R + b`` with R (semi-)orthogonal.
"""

from __future__ import annotations

import numpy as np

from llmcpu.errors import UserError


def checked_pair(x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
  """x [N, Db], y [N, Da] as float64, checked: 2-D, the same N, finite."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.ndim != 2 or y.ndim != 2:
    raise UserError(f"{what} needs x [N, Db] and y [N, Da], got shapes {x.shape} and {y.shape}")
  if len(x) != len(y):
    raise UserError(f"{what} needs as many rows of x as of y (parallel anchors), got {len(x)} and {len(y)}")
  if not (np.isfinite(x).all() and np.isfinite(y).all()):
    raise UserError(f"{what} got non-finite values (NaN or inf) in the anchors; drop or fix those rows")
  return x, y


def fit_procrustes(x, y, *, center: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Orthogonal Procrustes ``y ≈ x @ R + b``: (R [Db, Da], b [Da]) in float64.

  ``R = U Vᵀ`` from the thin SVD ``x_cᵀ y_c = U S Vᵀ``: the orthogonal matrix (Db = Da) or, when Db ≠ Da, the
  semi-orthogonal one (orthonormal rows if Db < Da, orthonormal columns if Db > Da) that maximises ``tr(Rᵀ x_cᵀ y_c)``
  i.e. minimises ``‖x_c R − y_c‖``. With ``center``, x_c and y_c are centred and ``b = mean(y) − mean(x) @ R``;
  without, b = 0 (a pure rotation about the origin).
  """
  x, y = checked_pair(x, y, "fit_procrustes")
  if len(x) < 1 + int(center):
    raise UserError(f"fit_procrustes needs at least {1 + int(center)} anchor rows, got {len(x)}")
  mx, my = (x.mean(0), y.mean(0)) if center else (np.zeros(x.shape[1]), np.zeros(y.shape[1]))
  u, _, vt = np.linalg.svd((x - mx).T @ (y - my), full_matrices=False)
  r = u @ vt
  return r, my - mx @ r
