"""Porting a CPU from ISA A to ISA B: rebuild its vocabulary-indexed parameters, copy the rest bit-exactly.

Methods (``ROW_METHODS``), each a rule giving every id of B its row from A's table (embedding rows, head columns):
  ``fvt``    Fast Vocabulary Transfer (Gee et al. 2022): a piece of B gets the mean of A's rows of the ids A's
             compiler encodes the piece's text into.
  ``align``  a piece present in both ISAs (same piece string) keeps A's row bit-exactly; the rest get FVT. A pure
             id permutation (``+perm``) is thus ported exactly: same logits, permuted, with no training.
  ``omp``, ``procrustes``  align's copies; the rest from a donor CPU trained natively on ISA B (``porting.donor``).

Whatever the method: the special ids 0 … FIRST_REGULAR_ID-1 are the same opcodes in every ISA, so they keep A's
rows; a byte piece ``<0xNN>`` of B takes A's byte piece for the same byte, except for ASCII, where what each compiler
*emits* for the character decides (``donor.char_ids``): a byte piece B emits for its character (a byte-level ISA)
takes the row of what A emits for it (a subword A's ``a`` piece, not its never-emitted byte-fallback ``<0x61>``);
one B never emits but A does (B has the character as a piece, A is byte-level) takes A's UNK row (``unused``: an
opcode neither CPU predicts, rather than a copy of A's live row that would split the character's probability
between two ids of B). A piece A can only encode as UNK or as nothing (impossible with byte fallback, counted
anyway) gets the mean of A's regular rows (``fallback``).

Where either ISA comes from a tokenizer file (``hf:``/``spm:``, e.g. a pretrained LLM's) there is no shared block of
specials and the pieces are written in another notation (GPT-2's ``Ġthe`` is ``▁the``): specials go by role (PAD,
BOS, EOS, UNK) and pieces are compared by the bytes they stand for (``Compiler.piece_raw``); see
``_plan_rows_by_bytes``. Between the project's own ISAs the rules above are unchanged.

``translate_ids`` is the other way to run foreign machine code: binary translation (decode with one compiler,
re-encode with the other), the baseline a port has to beat.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from llmcpu import models, specials
from llmcpu.compilers import Compiler
from llmcpu.errors import UserError
from llmcpu.models.trainable import path_name as _path_name
from llmcpu.porting import donor as donor_lib

PLAN_METHODS = ("align", "fvt")  # rows from the source alone (a ``RowPlan``)
ROW_METHODS = (*PLAN_METHODS, *donor_lib.DONOR_METHODS)  # + rows that need a donor CPU of ISA B (porting.donor)
META = "\u2581"  # SentencePiece's space marker: a piece "▁the" is the text " the"
COUNT_KEYS = ("special", "copied", "byte", "unused", "fvt", "fallback")
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")
_FALLBACK: tuple[int, ...] = ()  # a source of no ids: the mean of A's regular rows
_VOCAB_AXIS = "vocab"  # logical axis name of vocabulary-indexed parameter dims (llmcpu.models.layers)


@dataclasses.dataclass(frozen=True)
class RowPlan:
  """Where each id of ISA B gets its row: ``sources[j]`` = the ids of A whose rows are averaged for B's id ``j``
  (one id = a bit-exact copy; ``()`` = fallback, the mean of A's regular rows). ``counts`` says how many ids of B
  were filled each way (keys ``COUNT_KEYS``, summing to B's vocab size). Computed once from the two compilers,
  then applied to every vocabulary-indexed table of a model."""

  method: str
  vocab_a: int
  sources: tuple[tuple[int, ...], ...]
  counts: dict[str, int]
  fallback_ids: tuple[int, ...] | None = None  # A's regular ids, whose mean is the fallback (None: ids ≥ 37)

  def apply(self, table_a: np.ndarray) -> np.ndarray:
    """[V_a, ...] rows indexed by A's ids → [V_b, ...] in the same dtype. Means are summed in float64 and rounded
    once, so a one-id source is an exact copy."""
    table_a = np.asarray(table_a)
    if table_a.shape[0] != self.vocab_a:
      raise ValueError(f"table has {table_a.shape[0]} rows but ISA A has {self.vocab_a} ids")
    wide = table_a.astype(np.float64)
    regular = list(self.fallback_ids) if self.fallback_ids is not None else slice(specials.FIRST_REGULAR_ID, None)
    fallback = wide[regular].mean(axis=0)
    out = np.empty((len(self.sources),) + table_a.shape[1:], table_a.dtype)
    for j, ids in enumerate(self.sources):
      if len(ids) == 1:
        out[j] = table_a[ids[0]]
      elif ids:
        out[j] = wide[list(ids)].mean(axis=0)
      else:
        out[j] = fallback
    return out


def plan_rows(compiler_a: Compiler, compiler_b: Compiler, method: str) -> RowPlan:
  """The ``RowPlan`` of ``method`` (``fvt`` or ``align``) from ISA A to ISA B."""
  if method not in PLAN_METHODS:
    raise UserError(f"unknown porting method {method!r}; choose one of {', '.join(ROW_METHODS)}")
  if not (compiler_a.roles.own and compiler_b.roles.own):
    return _plan_rows_by_bytes(compiler_a, compiler_b, method)
  first = specials.FIRST_REGULAR_ID
  sources: list[tuple[int, ...] | None] = [(i,) for i in range(first)] + [None] * (compiler_b.vocab_size - first)
  counts = dict.fromkeys(COUNT_KEYS, 0)
  counts["special"] = first
  a_ids = {piece: i for i, piece in enumerate(compiler_a.pieces) if i >= first}
  a_chars, b_chars = donor_lib.char_ids(compiler_a), donor_lib.char_ids(compiler_b)
  texts: dict[int, str] = {}
  for j in range(first, compiler_b.vocab_size):
    piece = compiler_b.pieces[j]
    byte = _byte_of(compiler_b, j)
    if byte is not None and byte < 0x80 and b_chars.get(byte) == j:  # B's code for an ASCII character: A's
      sources[j] = _segment(compiler_a, [chr(byte)])[0]
      kind = "copied" if method == "align" and sources[j] == (a_ids.get(piece),) else "byte"
    elif byte is not None and byte < 0x80 and a_ids.get(piece) is not None and a_chars.get(byte) == a_ids[piece]:
      sources[j], kind = (specials.UNK_ID,), "unused"  # A emits this byte piece, B never does: an unused row
    elif method == "align" and piece in a_ids:
      sources[j], kind = (a_ids[piece],), "copied"
    elif byte is not None:
      sources[j], kind = _byte_source(byte, a_ids, compiler_a), "byte"
    else:
      texts[j] = piece.replace(META, " ")
      continue
    counts[kind if sources[j] else "fallback"] += 1
  for j, ids in zip(texts, _segment(compiler_a, list(texts.values())), strict=True):
    sources[j] = ids
    counts["fvt" if ids else "fallback"] += 1
  return RowPlan(method, compiler_a.vocab_size, tuple(sources), counts)


def _plan_rows_by_bytes(compiler_a: Compiler, compiler_b: Compiler, method: str) -> RowPlan:
  """``plan_rows`` where either ISA comes from a tokenizer file: its ids keep no shared special block and its
  pieces another notation, so pieces are compared by the bytes they stand for (``Compiler.piece_raw``).

  B's specials take A's row of the same role (PAD, BOS, EOS, UNK; GPT-2's one ``<|endoftext|>`` is BOS, EOS and
  PAD), any other special the fallback. A regular piece of B that stands for one ASCII byte: B's id for that byte
  (``donor.one_byte_ids``) takes A's, any other (a byte-fallback ``<0x61>`` beside ``a``) A's UNK row (``unused``;
  the fallback where A has no UNK). Under ``align`` a piece with the same bytes in A is copied. Otherwise (FVT) A's
  segmentation of its text, or, for a piece that is part of a character, A's one-byte ids of its bytes (``byte``)."""
  raw_b, roles_a, roles_b = compiler_b.piece_raw, compiler_a.roles, compiler_b.roles
  counts = dict.fromkeys(COUNT_KEYS, 0)
  sources: list[tuple[int, ...] | None] = [None] * compiler_b.vocab_size
  for name in ("eos", "bos", "unk", "pad"):  # an id with several roles (GPT-2's <|endoftext|>) takes the first's row
    j, i = getattr(roles_b, name), getattr(roles_a, name)
    if j is not None and raw_b[j] is None and i is not None and sources[j] is None:
      sources[j] = (i,)
      counts["special"] += 1
  a_same, a_bytes, b_bytes = (
    donor_lib.by_bytes(compiler_a),
    donor_lib.one_byte_ids(compiler_a),
    donor_lib.one_byte_ids(compiler_b),
  )
  unused = (roles_a.unk,) if roles_a.unk is not None else _FALLBACK
  texts: dict[int, str] = {}
  for j, r in enumerate(raw_b):
    if sources[j] is not None:
      continue
    if r is None:
      sources[j], kind = _FALLBACK, "fallback"
    elif donor_lib.is_ascii_byte(r) and b_bytes[r[0]] != j:
      sources[j], kind = unused, "unused"
    elif donor_lib.is_ascii_byte(r):
      sources[j] = (a_bytes[r[0]],) if r[0] in a_bytes else _FALLBACK
      kind = "copied" if method == "align" else "byte"
    elif method == "align" and r in a_same:
      sources[j], kind = (a_same[r],), "copied"
    elif _utf8(r) is None:  # part of a character: A's one-byte ids of its bytes, if A has every one
      sources[j], kind = (tuple(a_bytes[x] for x in r) if all(x in a_bytes for x in r) else _FALLBACK), "byte"
    else:
      texts[j] = _utf8(r)
      continue
    counts[kind if sources[j] else "fallback"] += 1
  for j, ids in zip(texts, _segment_bytes(compiler_a, [raw_b[j] for j in texts]), strict=True):
    sources[j] = ids
    counts["fvt" if ids else "fallback"] += 1
  regular_a = tuple(int(i) for i in donor_lib.regular_ids(compiler_a))
  return RowPlan(method, compiler_a.vocab_size, tuple(sources), counts, fallback_ids=regular_a)


def _utf8(raw: bytes) -> str | None:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    return None


def _segment_bytes(compiler_a: Compiler, raws: list[bytes]) -> list[tuple[int, ...]]:
  """A's ids for each piece's text, kept when they stand for exactly its bytes (a file's dummy-prefix space or a
  normaliser can make them differ, and an UNK has no bytes): else the fallback."""
  texts = [r.decode("utf-8") for r in raws]
  out = []
  for raw, ids in zip(raws, compiler_a.encode_batch(texts) if texts else [], strict=True):
    pieces = [compiler_a.piece_raw[i] for i in ids]
    ok = ids and all(p is not None for p in pieces) and b"".join(pieces) == raw
    out.append(tuple(ids) if ok else _FALLBACK)
  return out


def _byte_of(compiler: Compiler, i: int) -> int | None:
  """The byte a byte piece ``<0xNN>`` stands for (it decodes to one byte), else None."""
  m = _BYTE_PIECE.fullmatch(compiler.pieces[i])
  return int(m[1], 16) if m and compiler.piece_bytes[i] == 1 else None


def _byte_source(byte: int, a_ids: dict[str, int], compiler_a: Compiler) -> tuple[int, ...]:
  """A's byte piece for ``byte``; else A's segmentation of the byte as text (ASCII only: a lone byte ≥ 0x80 is
  no text), else fallback."""
  piece = f"<0x{byte:02X}>"
  if piece in a_ids and compiler_a.piece_bytes[a_ids[piece]] == 1:
    return (a_ids[piece],)
  return _segment(compiler_a, [chr(byte)])[0] if byte < 0x80 else _FALLBACK


def _segment(compiler_a: Compiler, texts: list[str]) -> list[tuple[int, ...]]:
  """A's ids for each text, encoded on its own. The compilers add no dummy prefix, so a leading space (a piece's
  leading ``▁``) is encoded as a space, and the segmentation decodes back to exactly the text (checked). Any
  special id in the result (UNK) → fallback."""
  out = []
  for text, ids in zip(texts, compiler_a.encode_batch(texts) if texts else [], strict=True):
    if not ids or min(ids) < specials.FIRST_REGULAR_ID:
      out.append(_FALLBACK)
      continue
    if compiler_a.decode(ids) != text:  # the compilers promise losslessness: a mismatch is their bug
      raise RuntimeError(f"compiler {compiler_a.name} does not round-trip {text!r}: FVT would average wrong rows")
    out.append(tuple(ids))
  return out


def fvt_rows(table_a: np.ndarray, compiler_a: Compiler, compiler_b: Compiler) -> tuple[np.ndarray, dict[str, int]]:
  """FVT: [V_a, D] rows of ISA A → ([V_b, D] rows of ISA B, counts) in the table's dtype (see module docstring)."""
  plan = plan_rows(compiler_a, compiler_b, "fvt")
  return plan.apply(table_a), dict(plan.counts)


def align_rows(table_a: np.ndarray, compiler_a: Compiler, compiler_b: Compiler) -> tuple[np.ndarray, dict[str, int]]:
  """Shared pieces copied bit-exactly, the rest FVT: ([V_b, D] rows, counts ``copied``/``fvt``/``fallback``/…)."""
  plan = plan_rows(compiler_a, compiler_b, "align")
  return plan.apply(table_a), dict(plan.counts)


def omp_rows(table_a, table_donor, compiler_a: Compiler, compiler_b: Compiler, k: int = donor_lib.DEFAULT_ATOMS):
  """``omp`` (porting.donor) on align's rows: ([V_b, ...] rows in the source's dtype, counts)."""
  base = plan_rows(compiler_a, compiler_b, "align").apply(table_a)
  return donor_lib.omp_rows(table_a, table_donor, compiler_a, compiler_b, k, base=base)


def procrustes_rows(table_a, table_donor, compiler_a: Compiler, compiler_b: Compiler):
  """``procrustes`` (porting.donor) on align's rows: ([V_b, ...] rows in the source's dtype, counts)."""
  base = plan_rows(compiler_a, compiler_b, "align").apply(table_a)
  return donor_lib.procrustes_rows(table_a, table_donor, compiler_a, compiler_b, base=base)


def check_portable(
  source_model: nnx.Module, target_model: nnx.Module, compiler_a: Compiler, compiler_b: Compiler
) -> None:
  """Raises ``UserError`` unless the two models differ only in their ISA's fields (vocab_size, unk_id) and each
  matches its compiler."""
  a, b = source_model.config, target_model.config
  differ = [
    f"{f.name} ({getattr(a, f.name)!r} vs {getattr(b, f.name)!r})"
    for f in dataclasses.fields(a)
    if f.name not in ("vocab_size", "unk_id") and getattr(a, f.name) != getattr(b, f.name)
  ]
  if differ:
    raise UserError(f"cannot port: source and target models differ in {', '.join(differ)}; only vocab_size may")
  for role, config, compiler in (("source", a, compiler_a), ("target", b, compiler_b)):
    if config.vocab_size != compiler.vocab_size:
      raise UserError(
        f"cannot port: the {role} model has vocab_size {config.vocab_size} but ISA {compiler.name} has "
        f"{compiler.vocab_size} ids; build the {role} model for its ISA"
      )


def transplant(
  source_model: nnx.Module,
  target_model: nnx.Module,
  compiler_a: Compiler,
  compiler_b: Compiler,
  method: str,
  *,
  donor: nnx.Module | None = None,
  atoms: int = donor_lib.DEFAULT_ATOMS,
) -> dict[str, Any]:
  """Ports ``source_model`` (built for ISA A) into ``target_model`` (ISA B, same config but vocab_size), in place.

  Every parameter without a vocabulary axis is copied bit-exactly; each one with a vocabulary axis (logical name
  'vocab': the embedding table's rows, an untied head's columns) is rebuilt along it with ``method`` (``ROW_METHODS``;
  ``omp`` and ``procrustes`` read the same parameter of ``donor``, any CPU of ISA B (its embedding table where it has
  no such parameter: a tied donor's head is its table; its width and depth may differ from the source's); ``atoms``
  is omp's k). Non-parameter state (the illegal-opcode counter) is left alone. Parameters pass through host memory
  and land on the target's shardings. Returns the provenance: method, both ISAs and fingerprints, the row counts and
  the parameter paths ported and copied.
  """
  check_portable(source_model, target_model, compiler_a, compiler_b)
  rows = _row_rule(method, donor, target_model, compiler_a, compiler_b, atoms)
  source = dict(nnx.to_flat_state(nnx.state(source_model, nnx.Param)))
  target = nnx.to_flat_state(nnx.state(target_model, nnx.Param))
  if set(source) != {path for path, _ in target}:  # equal configs build equal trees: a mismatch is a models bug
    raise RuntimeError("source and target models have different parameter trees despite equal configs")
  new, ported, copied, counts = [], [], [], {}
  for path, var in target:
    value = np.array(source[path][...])  # a fresh host copy: the two models never share a buffer
    axis = _vocab_axis(var)
    if axis is None:
      copied.append(_path_name(path))
    else:
      table, counts = rows(path, np.moveaxis(value, axis, 0))
      value = np.moveaxis(table, 0, axis)
      ported.append(_path_name(path))
    if value.shape != var[...].shape:
      raise RuntimeError(f"ported {_path_name(path)} has shape {value.shape}, the target {var[...].shape}")
    new.append((path, var.replace(jax.device_put(value, var[...].sharding))))
  nnx.update(target_model, nnx.from_flat_state(new))
  return {
    "method": method,
    "source_isa": compiler_a.name,
    "target_isa": compiler_b.name,
    "source_fingerprint": compiler_a.fingerprint,
    "target_fingerprint": compiler_b.fingerprint,
    "counts": counts,
    "ported": ported,
    "copied": len(copied),
  } | ({"atoms": atoms} if method == "omp" else {})


def _row_rule(method: str, donor, target_model, compiler_a: Compiler, compiler_b: Compiler, atoms: int):
  """(path, [V_a, ...] source table) → ([V_b, ...] table, counts) for ``method``; a donor method reads the donor's
  parameter at the same path (vocabulary axis first). Refuses (one line) a donor method without a fitting donor."""
  if method not in ROW_METHODS:
    raise UserError(f"unknown porting method {method!r}; choose one of {', '.join(ROW_METHODS)}")
  if method in PLAN_METHODS:
    plan = plan_rows(compiler_a, compiler_b, method)
    return lambda path, table: (plan.apply(table), dict(plan.counts))
  if donor is None:
    raise UserError(
      f"method {method} needs a donor CPU trained natively on ISA {compiler_b.name}: pass --config.donor=RUN"
    )
  if donor.config.vocab_size != compiler_b.vocab_size:
    raise UserError(f"the donor CPU has vocab_size {donor.config.vocab_size}, not ISA {compiler_b.name}'s "
                    f"{compiler_b.vocab_size}: a donor must be trained on the target ISA")  # fmt: skip
  theirs = dict(nnx.to_flat_state(nnx.state(donor, nnx.Param)))
  plan = plan_rows(compiler_a, compiler_b, "align")

  def rows(path, table):
    var = theirs.get(path, theirs[("embed", "table")])  # an untied head's rows, from a tied donor: its table
    if _vocab_axis(var) is None:
      raise UserError(f"the donor CPU's {_path_name(path)} has no vocabulary axis: it cannot lend rows to port it")
    donor_table = np.moveaxis(np.asarray(var[...]), _vocab_axis(var), 0)
    return donor_lib.donor_rows(method, table, donor_table, compiler_a, compiler_b, atoms, base=plan.apply(table))

  return rows


def port(
  source_model: nnx.Module, compiler_a: Compiler, compiler_b: Compiler, method: str, **donor: Any
) -> tuple[nnx.Module, dict[str, Any]]:
  """A new model for ISA B (the source's config with B's vocab_size), filled by ``transplant`` (``donor``/``atoms``
  passed on): (model, provenance)."""
  isa_b = dict(vocab_size=compiler_b.vocab_size, unk_id=compiler_b.roles.stand_in)
  target = models.create_from_config(source_model.config.replace(**isa_b), seed=0)
  return target, transplant(source_model, target, compiler_a, compiler_b, method, **donor)


def _vocab_axis(var: nnx.Variable) -> int | None:
  axes = var.get_metadata().get("out_sharding") or ()
  return axes.index(_VOCAB_AXIS) if _VOCAB_AXIS in axes else None


def vocab_params(model: nnx.Module) -> list[str]:
  """Paths of the parameters indexed by the vocabulary (what ``relearn`` trains): the embedding, an untied head."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return [_path_name(path) for path, var in flat if _vocab_axis(var) is not None]


def translate_ids(ids: Iterable[int], compiler_from: Compiler, compiler_to: Compiler) -> list[int]:
  """Binary translation: machine code of one ISA → the other's for the same text (decode, then re-encode).

  Special ids (pad, bos, eos, mask, sentinels) stand for no text, so they are not translated: between the project's
  own ISAs they are the same opcodes and stay where they are; where either ISA comes from a tokenizer file each
  becomes the other ISA's id of the same role (PAD, BOS, EOS, UNK), and one with no counterpart is dropped. Only
  the runs of regular ids between them are translated. Ids outside ``compiler_from``'s ISA raise ValueError.
  """
  special = _special_map(compiler_from, compiler_to)
  raws = compiler_from.piece_raw
  out: list[int] = []
  run: list[int] = []
  for i in [int(i) for i in ids] + [-1]:  # -1 flushes the last run
    if 0 <= i < len(raws) and raws[i] is not None:
      run.append(i)
      continue
    if run:
      out.extend(compiler_to.encode(compiler_from.decode(run)))
      run = []
    if i == -1:
      break
    if not 0 <= i < len(raws):
      raise ValueError(f"id {i} is outside ISA {compiler_from.name} (vocab {len(raws)})")
    if special(i) is not None:
      out.append(special(i))
  return out


def _special_map(compiler_from: Compiler, compiler_to: Compiler):
  """A special id of one ISA → the other's (None: no counterpart); the identity between the project's own ISAs."""
  if compiler_from.roles.own and compiler_to.roles.own:
    return lambda i: i
  mapping: dict[int, int] = {}
  for name in ("unk", "pad", "bos", "eos"):  # later roles win an id that holds several (GPT-2's <|endoftext|>: EOS)
    i, j = getattr(compiler_from.roles, name), getattr(compiler_to.roles, name)
    if i is not None and j is not None:
      mapping[i] = j
  return mapping.get


def translation_cost(id_seqs: Sequence[Sequence[int]], compiler_from: Compiler, compiler_to: Compiler) -> float:
  """Seconds per 1000 source ids that ``translate_ids`` takes on these sequences (host wall clock)."""
  total = sum(len(s) for s in id_seqs)
  if not total:
    raise ValueError("translation_cost needs at least one id")
  start = time.perf_counter()
  for seq in id_seqs:
    translate_ids(seq, compiler_from, compiler_to)
  return (time.perf_counter() - start) * 1000.0 / total
