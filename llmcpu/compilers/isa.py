"""ISAs: id → piece tables, their fingerprints, permutation transforms and compatibility."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from llmcpu import specials


def fingerprint(pieces: Sequence[str]) -> str:
  """Hash of the id → piece table: two compilers with equal fingerprints emit the same machine code."""
  h = hashlib.sha256()
  for p in pieces:
    h.update(p.encode("utf-8", "surrogatepass"))
    h.update(b"\x00")
  return h.hexdigest()[:16]


def permutation(vocab_size: int, seed: int, fraction: float = 1.0) -> np.ndarray:
  """A bijection of ids that fixes the special ids and moves exactly ``round(fraction × regular ids)`` of the rest.

  The chosen ids are shuffled and each is mapped to the next one in a cycle, so no chosen id stays put: the
  overlap between an ISA and its permuted variant is exactly ``1 - fraction`` over the regular ids.
  """
  first = specials.FIRST_REGULAR_ID
  n = vocab_size - first
  k = int(round(fraction * n))
  perm = np.arange(vocab_size, dtype=np.int32)
  if k >= 2:
    chosen = first + np.random.default_rng(seed).permutation(n)[:k].astype(np.int32)
    perm[chosen] = np.roll(chosen, -1)
  return perm


def inverse(perm: np.ndarray) -> np.ndarray:
  inv = np.empty_like(perm)
  inv[perm] = np.arange(len(perm), dtype=perm.dtype)
  return inv


def permute_table(pieces: Sequence[str], perm: np.ndarray) -> list[str]:
  """The table after ``new_id = perm[old_id]``."""
  table = [""] * len(pieces)
  for old, new in enumerate(perm.tolist()):
    table[new] = pieces[old]
  return table


def overlap(pieces_a: Sequence, pieces_b: Sequence, first: int = specials.FIRST_REGULAR_ID) -> float:
  """Share of regular ids (from ``first`` on) that decode to the same piece in both ISAs (over the larger vocabulary).

  The project's special ids are equal in all its ISAs by construction, so they are left out: 1.0 means the same
  regular opcodes, 0.0 means no regular opcode in common. An ISA from a tokenizer file has no fixed specials: every
  id counts (``first=0``).
  """
  n = max(len(pieces_a), len(pieces_b)) - first
  if n <= 0:
    return 1.0
  common = min(len(pieces_a), len(pieces_b))
  same = sum(1 for i in range(first, common) if pieces_a[i] == pieces_b[i])
  return same / n
