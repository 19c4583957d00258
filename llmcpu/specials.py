"""Special ids shared by every ISA.

Every compiler, whatever its family, reserves the same low ids so that a model's pad/unk/bos/eos/mask handling
never depends on which ISA it was trained on. Regular pieces start at ``FIRST_REGULAR_ID``.
"""

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
  counts. Elementwise on numpy or JAX arrays alike."""
  return (ids == UNK_ID) | (ids >= FIRST_REGULAR_ID)


def sentinel_piece(i: int) -> str:
  return f"<extra_id_{i}>"


# The pieces every ISA has at ids 0 … FIRST_REGULAR_ID-1, in id order.
SPECIAL_PIECES: tuple[str, ...] = (PAD, UNK, BOS, EOS, MASK) + tuple(sentinel_piece(i) for i in range(NUM_SENTINELS))
assert len(SPECIAL_PIECES) == FIRST_REGULAR_ID


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
