"""Ports that borrow from a *donor*: a CPU trained natively on ISA B, whose table knows how B's pieces relate.

Both methods keep align's rows where align copies (the specials and every piece A and B share, bit-exactly) and
replace only the rows of the pieces A lacks:

  ``omp``         each missing piece's donor row as a sparse code (``k`` atoms, orthogonal matching pursuit) over the
                  donor's rows of the shared pieces; the code applied to the source's rows of the same pieces
                  (tokensurgeon, mergekit 2025).
  ``procrustes``  the donor's row mapped into the source's space by the orthogonal map (plus translation) fitted on
                  the shared pieces (WECHSEL-style cross-space alignment).

Tables are [V, ...] with the vocabulary first (a head's kernel is passed transposed); trailing axes are flattened.
Everything is computed in float64 and rounded once to the source's dtype. The donor may be of another width (an LLM
of ISA B, e.g. SmolLM2's 576 for GPT-2's 768): an OMP code is a set of weights over shared pieces, the same in either
space; Procrustes is then semi-orthogonal (``linalg.fit_procrustes``).
"""

from __future__ import annotations

import numpy as np

from llmcpu import linalg, specials
from llmcpu.compilers import Compiler
from llmcpu.errors import UserError

DONOR_METHODS = ("omp", "procrustes")
DEFAULT_ATOMS = 8


def char_ids(compiler: Compiler) -> dict[int, int]:
  """ASCII byte → the one regular id ``compiler`` emits for that character alone (a subword ISA's character piece,
  a byte-level ISA's byte piece); characters it encodes otherwise are left out."""
  ids = compiler.encode_batch([chr(b) for b in range(0x80)])
  return {b: x[0] for b, x in enumerate(ids) if len(x) == 1 and compiler.piece_raw[x[0]] == bytes([b])}


def one_byte_ids(compiler: Compiler) -> dict[int, int]:
  """Byte → the id that stands for it alone: what the compiler emits for the character (ASCII), else a piece of
  that one byte in the ISA's text notation, else its byte piece ``<0xNN>``."""
  out: dict[int, int] = {}
  for i, raw in enumerate(compiler.piece_raw):
    if raw is not None and len(raw) == 1 and (raw[0] not in out or _notation_byte(compiler, out[raw[0]])):
      out[raw[0]] = i
  return out | char_ids(compiler)


def _notation_byte(compiler: Compiler, i: int) -> bool:
  p = compiler.pieces[i]
  return p.startswith("<0x") and len(p) == 6 and p.endswith(">")


def is_ascii_byte(raw: bytes | None) -> bool:
  return raw is not None and len(raw) == 1 and raw[0] < 0x80


def by_bytes(compiler: Compiler) -> dict[bytes, int]:
  """The bytes of each regular piece but a lone ASCII byte (see ``char_ids``) → its id (the lowest, if several)."""
  raws = compiler.piece_raw
  return {raws[i]: i for i in reversed(range(len(raws))) if raws[i] is not None and not is_ascii_byte(raws[i])}


def regular_ids(compiler: Compiler) -> np.ndarray:
  """The ids that stand for text (not a special, not UNK): ids ≥ FIRST_REGULAR_ID in the project's own ISAs."""
  return np.array([i for i, raw in enumerate(compiler.piece_raw) if raw is not None], np.int64)


def shared_ids(compiler_a: Compiler, compiler_b: Compiler) -> tuple[np.ndarray, np.ndarray]:
  """(ids in B, ids in A) of the regular pieces both ISAs hold for the same text, in B's id order: the same piece
  string (the same bytes where either ISA comes from a tokenizer file, whose notation differs: GPT-2's ``Ġthe`` is
  ``▁the``), except that an ASCII byte piece counts only through ``char_ids`` (what each ISA emits for the
  character: a byte-level ISA's ``<0x61>`` pairs with a subword ISA's ``a``; a byte-fallback piece never emitted
  pairs with nothing). These are the anchors of omp and procrustes, and align's rows for them are copies."""
  if compiler_a.roles.own and compiler_b.roles.own:
    first = specials.FIRST_REGULAR_ID
    ascii_bytes = {f"<0x{b:02X}>" for b in range(0x80)}
    a_ids = {p: i for i, p in enumerate(compiler_a.pieces) if i >= first and p not in ascii_bytes}
    pairs = {j: a_ids[p] for j, p in enumerate(compiler_b.pieces) if j >= first and p in a_ids}
  else:
    a_raw = by_bytes(compiler_a)
    pairs = {j: a_raw[r] for j, r in enumerate(compiler_b.piece_raw) if r in a_raw and not is_ascii_byte(r)}
  a_chars = char_ids(compiler_a)
  pairs |= {j: a_chars[b] for b, j in char_ids(compiler_b).items() if b in a_chars}
  ids_b = np.array(sorted(pairs), np.int64)
  return ids_b, np.array([pairs[j] for j in ids_b.tolist()], np.int64)


def missing_ids(compiler_a: Compiler, compiler_b: Compiler, anchors: np.ndarray) -> np.ndarray:
  """B's regular ids that are neither anchors nor byte pieces: the rows a donor method replaces and distill fits
  (a byte piece keeps align's row: A's same byte, or an unused row; see transplant)."""
  regular = regular_ids(compiler_b)
  is_byte = np.array([_is_byte_piece(compiler_b, i) for i in regular], bool)
  return np.setdiff1d(regular[~is_byte], anchors)


def _is_byte_piece(compiler: Compiler, i: int) -> bool:
  """A piece that stands for one byte as such: ``<0xNN>``, or a byte-level ISA's piece of one byte."""
  return _notation_byte(compiler, i) or (
    not compiler.roles.own and getattr(compiler.backend, "mode", "") == "byte_level" and compiler.piece_bytes[i] == 1
  )


def omp_codes(atoms: np.ndarray, targets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Orthogonal matching pursuit of every target at once: atoms [N, D], targets [M, D] → (indices [M, k] into the
  atoms, coefficients [M, k]) with ``targets ≈ Σ coef · atoms[index]``.

  Each of ``k`` steps picks, per target, the unused atom of largest |correlation| with the residual (atoms compared
  at unit norm), then refits the coefficients of all atoms picked so far by least squares (a pseudo-inverse, so a
  target already matched exactly gets zero weight on later atoms) and recomputes the residual.
  """
  atoms, targets = np.asarray(atoms, np.float64), np.asarray(targets, np.float64)
  if atoms.ndim != 2 or targets.ndim != 2 or atoms.shape[1] != targets.shape[1]:
    raise ValueError(f"omp_codes needs atoms [N, D] and targets [M, D], got {atoms.shape} and {targets.shape}")
  if not 1 <= k <= len(atoms):
    raise UserError(f"omp needs 1 ≤ k ≤ the {len(atoms)} shared pieces, got k={k}; set --config.omp_atoms")
  norms = np.linalg.norm(atoms, axis=1)
  unit = atoms / np.where(norms > 0, norms, 1.0)[:, None]
  m = len(targets)
  chosen = np.zeros((m, k), np.int64)
  coefs = np.zeros((m, 0))
  residual = targets.copy()
  taken = np.zeros((m, len(atoms)), bool)
  rows = np.arange(m)
  for step in range(k):
    score = np.abs(residual @ unit.T)
    score[taken] = -1.0  # never the same atom twice
    chosen[:, step] = score.argmax(axis=1)
    taken[rows, chosen[:, step]] = True
    basis = np.swapaxes(atoms[chosen[:, : step + 1]], 1, 2)  # [M, D, s]: the picked atoms as columns
    coefs = (np.linalg.pinv(basis) @ targets[:, :, None])[:, :, 0]  # [M, s]
    residual = targets - (basis @ coefs[:, :, None])[:, :, 0]
  return chosen, coefs


def _split(table_a, table_donor, compiler_a: Compiler, compiler_b: Compiler, what: str, base):
  """Checked float64 [V, F] views and the shared / missing ids; the output starts as ``base`` (align's rows)."""
  table_a, table_donor = np.asarray(table_a), np.asarray(table_donor)
  if table_a.shape[0] != compiler_a.vocab_size or table_donor.shape[0] != compiler_b.vocab_size:
    raise ValueError(f"{what}: tables have {table_a.shape[0]} / {table_donor.shape[0]} rows, the ISAs "
                     f"{compiler_a.vocab_size} / {compiler_b.vocab_size} ids")  # fmt: skip
  ids_b, ids_a = shared_ids(compiler_a, compiler_b)
  if len(ids_b) < 2:
    raise UserError(f"{what}: ISAs {compiler_a.name} and {compiler_b.name} share {len(ids_b)} pieces; a donor "
                    "method needs shared pieces to anchor on (use align or fvt)")  # fmt: skip
  missing = missing_ids(compiler_a, compiler_b, ids_b)
  if np.shape(base) != (compiler_b.vocab_size,) + table_a.shape[1:]:
    raise ValueError(f"{what}: align's rows have shape {np.shape(base)}, not [{compiler_b.vocab_size}, ...]")
  out = np.array(base, table_a.dtype)  # specials, anchors and byte pieces keep align's rows
  return _flat(table_a), _flat(table_donor), ids_a, ids_b, missing, out


def _flat(table: np.ndarray) -> np.ndarray:
  """[V, ...] → [V, F] float64: a row is a vector whatever the parameter's trailing shape."""
  return table.reshape(len(table), -1).astype(np.float64)


def omp_rows(table_a, table_donor, compiler_a: Compiler, compiler_b: Compiler, k: int = DEFAULT_ATOMS, *, base):
  """``omp`` (module docstring): ([V_b, ...] rows in the source's dtype, counts); ``base``: align's rows
  (``transplant.omp_rows`` computes them)."""
  src, donor, ids_a, ids_b, missing, out = _split(table_a, table_donor, compiler_a, compiler_b, "omp", base)
  if len(missing):
    index, coef = omp_codes(donor[ids_b], donor[missing], k)
    rows = np.einsum("mk,mkf->mf", coef, src[ids_a][index])
    out[missing] = rows.reshape((len(missing),) + out.shape[1:]).astype(out.dtype)
  return out, _counts(compiler_b, ids_b, missing, "omp")


def procrustes_rows(table_a, table_donor, compiler_a: Compiler, compiler_b: Compiler, *, base):
  """``procrustes`` (module docstring): ([V_b, ...] rows in the source's dtype, counts); ``base``: align's rows."""
  src, donor, ids_a, ids_b, missing, out = _split(table_a, table_donor, compiler_a, compiler_b, "procrustes", base)
  if len(missing):
    rotation, bias = linalg.fit_procrustes(donor[ids_b], src[ids_a])
    out[missing] = (donor[missing] @ rotation + bias).reshape((len(missing),) + out.shape[1:]).astype(out.dtype)
  return out, _counts(compiler_b, ids_b, missing, "procrustes")


def _counts(compiler_b: Compiler, ids_b: np.ndarray, missing: np.ndarray, method: str) -> dict[str, int]:
  """How B's ids were filled (summing to B's vocab size): specials, align's rows kept (anchors and byte pieces),
  and the missing ones."""
  special = compiler_b.vocab_size - len(regular_ids(compiler_b))
  return {"special": special, "copied": compiler_b.vocab_size - special - len(missing), method: len(missing)}


def donor_rows(method: str, table_a, table_donor, compiler_a: Compiler, compiler_b: Compiler, k: int, *, base):
  """``omp_rows`` or ``procrustes_rows`` by name."""
  if method == "omp":
    return omp_rows(table_a, table_donor, compiler_a, compiler_b, k, base=base)
  if method == "procrustes":
    return procrustes_rows(table_a, table_donor, compiler_a, compiler_b, base=base)
  raise UserError(f"unknown donor method {method!r}; choose one of {', '.join(DONOR_METHODS)}")
