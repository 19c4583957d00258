"""Token-level parallel anchors: the same text compiled by two ISAs, each token of B paired with a token of A.

Compiling is lossless, so both id sequences of a document cover the same UTF-8 bytes; a token's span is fixed by the
bytes of the pieces before it (``piece_bytes``, as ``Compiler.piece_bytes`` / ``CompiledSplit.piece_bytes``: special
ids count 0, a byte piece ``<0xNN>`` 1). Token j of B is paired with the token of A that contains B's last byte:
the position where a causal CPU for A has first read every byte B's CPU has read at j (and perhaps a few more, up to
the end of A's token). These pairs of hidden states are the anchors ``closed_form`` fits a stitch on.

Tokens of 0 bytes in B (pad, bos, eos, sentinels) cover no text, so they have no partner: ``align`` marks them -1
and ``pairs`` skips them (padding in a batch is dropped that way too). A 0-byte token of A is never a partner.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmcpu.errors import UserError

NO_PARTNER = -1  # ``align``'s value for a token of B that covers no bytes


def token_ends(ids, piece_bytes: np.ndarray) -> np.ndarray:
  """int64 [len(ids)]: the UTF-8 byte offset just past each token (cumulative piece bytes)."""
  ids = np.asarray(ids, np.int64).reshape(-1)
  piece_bytes = np.asarray(piece_bytes, np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= len(piece_bytes)):
    raise UserError(f"token ids must lie in [0, {len(piece_bytes)}) (the ISA's vocab), got {ids.min()}..{ids.max()}")
  return np.cumsum(piece_bytes[ids])


def align(ids_b, ids_a, piece_bytes_b: np.ndarray, piece_bytes_a: np.ndarray) -> np.ndarray:
  """int64 [len(ids_b)]: for each token of B, the index in ``ids_a`` of the token containing B's token's last
  byte; ``NO_PARTNER`` (-1) for a token of B of 0 bytes. Refuses two sequences that do not cover the same number
  of bytes (not the same text)."""
  ends_b, ends_a = token_ends(ids_b, piece_bytes_b), token_ends(ids_a, piece_bytes_a)
  total_b, total_a = int(ends_b[-1]) if ends_b.size else 0, int(ends_a[-1]) if ends_a.size else 0
  if total_b != total_a:
    raise UserError(f"the two id sequences cover {total_b} and {total_a} bytes: they are not the same text")
  sizes_b = np.diff(ends_b, prepend=0)
  # Token k of A holds bytes [ends_a[k-1], ends_a[k]): the first k with ends_a[k] > byte. A 0-byte token ends where
  # the one before it does, so it is never the first to pass a byte.
  partner = np.searchsorted(ends_a, ends_b - 1, side="right")
  return np.where(sizes_b > 0, partner, NO_PARTNER).astype(np.int64)


def pairs(
  hidden_b_list: Sequence[np.ndarray],
  hidden_a_list: Sequence[np.ndarray],
  ids_b_list: Sequence[Sequence[int]],
  ids_a_list: Sequence[Sequence[int]],
  pb_b: np.ndarray,
  pb_a: np.ndarray,
  *,
  max_pairs: int,
  seed: int,
) -> tuple[np.ndarray, np.ndarray]:
  """(x [N, Db], y [N, Da]): the hidden states of every aligned token pair of every document (B's row, A's row),
  N ≤ ``max_pairs``. Document i's hidden states are one row per id (``len(hidden_b_list[i]) == len(ids_b_list[i])``,
  padding included: pad ids are 0 bytes and dropped). Over ``max_pairs``, a uniform subsample without replacement
  from ``seed``, kept in document order; the same inputs and seed give the same rows."""
  docs = (hidden_b_list, hidden_a_list, ids_b_list, ids_a_list)
  if len({len(d) for d in docs}) != 1:
    raise UserError(f"pairs needs one entry per document in each list, got lengths {[len(d) for d in docs]}")
  if max_pairs < 1:
    raise UserError(f"pairs needs max_pairs >= 1, got {max_pairs}")
  where: list[np.ndarray] = []  # per document: [n, 2] rows (token of B, token of A)
  for i, (hb, ha, ib, ia) in enumerate(zip(*docs, strict=True)):
    if len(hb) != len(ib) or len(ha) != len(ia):
      raise UserError(
        f"document {i}: {len(hb)} and {len(ha)} hidden rows for {len(ib)} and {len(ia)} ids; need one row per id"
      )
    partner = align(ib, ia, pb_b, pb_a)
    keep = np.flatnonzero(partner != NO_PARTNER)
    where.append(np.stack([keep, partner[keep]], axis=1))
  doc_of = np.repeat(np.arange(len(where)), [len(w) for w in where])
  rows = np.concatenate(where) if where else np.zeros((0, 2), np.int64)
  if len(rows) > max_pairs:
    chosen = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_pairs, replace=False))
    rows, doc_of = rows[chosen], doc_of[chosen]
  if not len(rows):
    raise UserError("pairs found no aligned tokens: every document is empty or all its tokens are 0-byte specials")
  # doc_of is sorted, so each document's rows are one run: read each document's hidden states once.
  used = np.unique(doc_of)
  runs = zip(used, np.searchsorted(doc_of, used, "left"), np.searchsorted(doc_of, used, "right"), strict=True)
  parts = [(np.asarray(hidden_b_list[d])[rows[s:e, 0]], np.asarray(hidden_a_list[d])[rows[s:e, 1]]) for d, s, e in runs]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
