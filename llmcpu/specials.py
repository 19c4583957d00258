"""Special ids shared by every ISA the project trains, and the roles of an ISA that came from elsewhere.

Every compiler the project trains, whatever its family, reserves the same low ids so that a model's
pad/unk/bos/eos/mask handling never depends on which ISA it was trained on. Regular pieces start at
``FIRST_REGULAR_ID``. An ISA read from an existing tokenizer file (``hf:``/``spm:``) keeps its own id table, so its
special ids are wherever that file puts them: ``Roles`` names them (``OWN`` is the project's layout).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
MASK_ID = 4  # MLM objective.
NUM_SENTINELS = 32  # span corruption: <extra_id_0> … <extra_id_31>.
FIRST_SENTINEL_ID = 5
FIRST_REGULAR_ID = FIRST_SENTINEL_ID + NUM_SENTINELS  # 37

PAD, UNK, BOS, EOS, MASK = "<pad>", "<unk>", "<s>", "</s>", "<mask>"


def sentinel_id(i: int) -> int:
  """Id of the i-th span-corruption sentinel (T5's <extra_id_i>)."""
  if not 0 <= i < NUM_SENTINELS:
    raise ValueError(f"sentinel index {i} out of range [0, {NUM_SENTINELS})")
  return FIRST_SENTINEL_ID + i


def is_content(ids):
  """True for a document's own ids (regular ids and UNK), False for PAD/BOS/EOS/MASK/sentinels: what bits per byte
  counts, in the project's own layout (``Roles.is_content`` for any ISA). Elementwise on numpy or JAX arrays."""
  return (ids == UNK_ID) | (ids >= FIRST_REGULAR_ID)


@dataclasses.dataclass(frozen=True)
class Roles:
  """Which ids of one ISA play the special roles, and every id that is no document's content.

  ``control``: the ids a compiler never emits for text (BOS/EOS/PAD/MASK/sentinels, a file's added special
  tokens); they are never content. ``borrowed``: roles the ISA lacks, filled by another of its ids (GPT-2 has no
  PAD: ``pad`` is its EOS id, which is safe because a pad position always has weight 0, so it is never scored).
  ``unk`` is None where the ISA has no unknown piece; ``mask`` where a file has no mask token (masked LM then
  borrows EOS: ``mask_id``). ``first_sentinel`` is None outside the own layout: span corruption, which needs
  sentinels, refuses such an ISA.
  """

  pad: int
  bos: int
  eos: int
  unk: int | None
  control: tuple[int, ...]
  mask: int | None = None
  first_sentinel: int | None = None
  borrowed: tuple[str, ...] = ()

  @property
  def own(self) -> bool:
    return self == OWN

  @property
  def mask_id(self) -> int:
    """What masked LM writes over a hidden word: MASK, or where the ISA has none (GPT-2's file) its EOS, borrowed
    as PAD is (an EOS inside a row is then a hidden word: documents are packed BOS + text + EOS)."""
    return self.eos if self.mask is None else self.mask

  @property
  def stand_in(self) -> int:
    """The id an id outside a model's table is read as (``ModelConfig.unk_id``): UNK, or where the ISA has none (a
    byte-level BPE such as GPT-2's) EOS, the one id that stands for no text."""
    return self.eos if self.unk is None else self.unk

  def is_content(self, ids):
    """True for a document's own ids (anything but a control id): what bits per byte counts. numpy or JAX."""
    if self.own:
      return is_content(ids)
    if not self.control:
      return ids == ids
    return functools.reduce(operator.and_, [ids != c for c in self.control])

  def to_json(self) -> dict:
    return dataclasses.asdict(self) | {"control": list(self.control), "borrowed": list(self.borrowed)}

  @classmethod
  def from_json(cls, d: dict) -> Roles:
    return cls(**(d | {"control": tuple(d["control"]), "borrowed": tuple(d.get("borrowed", ()))}))


def sentinel_piece(i: int) -> str:
  return f"<extra_id_{i}>"


# The pieces every ISA has at ids 0 … FIRST_REGULAR_ID-1, in id order.
SPECIAL_PIECES: tuple[str, ...] = (PAD, UNK, BOS, EOS, MASK) + tuple(sentinel_piece(i) for i in range(NUM_SENTINELS))
assert len(SPECIAL_PIECES) == FIRST_REGULAR_ID


OWN = Roles(
  PAD_ID, BOS_ID, EOS_ID, UNK_ID, tuple(i for i in range(FIRST_REGULAR_ID) if i != UNK_ID), MASK_ID, FIRST_SENTINEL_ID
)


# Sentinel marks: in a source text, the private-use character U+E000 + i compiles to sentinel i in every ISA
# (``Compiler.encode_marked``), so span corruption done on text (``data.spans``) gives each ISA the same examples.
SENTINEL_MARK_BASE = 0xE000
_MARKS = re.compile(f"([{chr(SENTINEL_MARK_BASE)}-{chr(SENTINEL_MARK_BASE + NUM_SENTINELS - 1)}])")


def sentinel_mark(i: int) -> str:
  """The character that compiles to sentinel i."""
  return chr(SENTINEL_MARK_BASE + sentinel_id(i) - FIRST_SENTINEL_ID)


def split_marks(text: str) -> tuple[list[str], list[int]]:
  """(the n + 1 runs of text between marks, the n sentinel ids of the marks in order)."""
  parts = _MARKS.split(text)
  return parts[0::2], [FIRST_SENTINEL_ID + ord(m) - SENTINEL_MARK_BASE for m in parts[1::2]]


def strip_marks(text: str) -> str:
  return _MARKS.sub("", text)
