"""Words found in machine code: the byte spans that objectives choose, the same in every ISA.

A **unit** is a run of text that starts where a space follows a non-space (or where a document or field starts) and
runs to the next such place: ``"The quick  brown"`` is ``"The"``, ``" quick"``, ``"  brown"``. Every compiler here
puts a token boundary there — SentencePiece splits at whitespace (a piece holds a space only at its start), char and
byte ISAs at every character — so the units of a document are the same bytes in every ISA, and an objective that
chooses units (masked LM's words, prefix LM's cut) scores the same bytes with the same visible text in every column.

Units are found from the ids alone, with the ISA's ``Compiler.piece_spaces`` (does a piece start or end with a
space): a token starts a unit when it starts with a space and the token before it does not end with one. A piece
holding a space after a non-space (``SPACE_INSIDE``, or ``SPACE_LAST`` on a piece that is not all spaces) would hold
a unit start inside it: that token is kept whole in the unit it begins in (the policy for a token straddling a
chosen span: masked or cut with it, its bytes counted once), so such an ISA's units merge two words. No compiler
built here has such a piece (checked for every quickstart ISA by tests/test_objective_bytes.py).
"""

from __future__ import annotations

import numpy as np

from llmcpu.compilers.compiler import SPACE_FIRST, SPACE_LAST


def unit_starts(tokens: np.ndarray, offsets: np.ndarray, piece_spaces: np.ndarray | None) -> np.ndarray:
  """bool [T] over a field's concatenated documents: whether each token starts a unit. Without ``piece_spaces``
  (a split built by hand) every token is its own unit."""
  tokens = np.asarray(tokens)
  if piece_spaces is None:
    return np.ones(len(tokens), bool)
  flags = np.asarray(piece_spaces)[tokens]
  starts = (flags & SPACE_FIRST) > 0
  starts[1:] &= (flags[:-1] & SPACE_LAST) == 0
  firsts = np.asarray(offsets[:-1])
  starts[firsts[firsts < len(tokens)]] = True  # every document starts a unit
  return starts


def unit_index(starts: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(int64 [T] each token's unit within its document, int64 [N] units per document)."""
  offsets = np.asarray(offsets)
  count = np.concatenate([[0], np.cumsum(starts)])
  per_doc = count[offsets[1:]] - count[offsets[:-1]]
  doc_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
  return count[1:] - 1 - count[offsets[:-1]][doc_of], per_doc
