"""Embedding arithmetic with a known answer, on ``programs`` inputs: is ``e(a) − e(b) + e(c)`` nearest ``e(answer)``?

Each ``Analogy`` holds four program inputs in the corpus's exact format (``"add 12 5 ="``) of one task, where
``answer`` differs from ``c`` as ``a`` differs from ``b``, in one operand slot (0-based operand index: ``count x in
s`` has the letter at slot 0 and the string at slot 1). Two kinds of slot (``SLOTS``):

* ``shift`` — a number (add, sub, mul: either operand; num2words; words2num, whose number is written in words): the
  answer's value is ``c + (a − b)``, every other operand shared by all four texts.
  a="add 12 5 =", b="add 11 5 =", c="add 31 5 =", answer="add 32 5 =".
* ``substitute`` — a letter (copy, reverse, sort: one position of the string; count: the counted letter, or one
  position of its string): a and b differ only in that letter (x in a, y in b); c and answer are another context
  with y and x there. a="copy cat =", b="copy cut =", c="copy bun =", answer="copy ban =". The context must
  change (with the same context, c would be b and the answer a): the rest of the string and any other operand are
  drawn afresh for (c, answer), so a substitution is a direction that has to transfer across contexts.

Held-out operands: every number (all four slot values and the shared operands) is in ``split``'s part of
``programs.number_pools`` and every string passes ``split_for("str:…") == split``, as in ``programs.example``; so
for ``test`` no operand was seen in training. Nothing is impossible under that rule, only rarer (rejection
sampling: ``c + a − b`` must itself be held-out and in 0..9999), so no operand is ever taken from another part.
Numbers of a, b and c draw their digit count uniformly from 1..4 as the corpus does; the answer's is whatever
``c + a − b`` has, so held-out answers lean to 3-4 digits (the one-digit held-out part is a single number). The
counted letter of ``count`` is drawn from a-e in every split, as in the corpus. Strings have the corpus's lengths
(3-10) and alphabets (a-z; a-e for count).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import numpy as np

from llmcpu.data.programs import COUNT_LETTERS, LETTERS, MAX_DIGITS, MAX_LEN, MIN_LEN, num2words, number_pools
from llmcpu.data.sources import SPLITS, split_for
from llmcpu.errors import UserError
from llmcpu.stitching.closed_form import relative

# (task, slot) → kind, in the round-robin order ``make`` cycles through.
SLOTS: dict[tuple[str, int], str] = {
  ("add", 0): "shift",
  ("add", 1): "shift",
  ("sub", 0): "shift",
  ("sub", 1): "shift",
  ("mul", 0): "shift",
  ("mul", 1): "shift",
  ("num2words", 0): "shift",
  ("words2num", 0): "shift",
  ("copy", 0): "substitute",
  ("reverse", 0): "substitute",
  ("sort", 0): "substitute",
  ("count", 0): "substitute",
  ("count", 1): "substitute",
}
MAX_NUMBER = 10**MAX_DIGITS - 1
_ATTEMPTS = 100_000  # draws per analogy before giving up (a few hundred are typical)


@dataclasses.dataclass(frozen=True)
class Analogy:
  """``a − b + c ≈ answer``: four inputs of ``task`` in the ``programs`` format, differing in operand ``slot``."""

  a: str
  b: str
  c: str
  answer: str
  task: str
  slot: int

  @property
  def kind(self) -> str:
    return SLOTS[(self.task, self.slot)]

  @property
  def texts(self) -> tuple[str, str, str, str]:
    return (self.a, self.b, self.c, self.answer)


class _Draw:
  """Held-out operands of one split, from one ``random.Random``."""

  def __init__(self, rng: random.Random, split: str):
    self.rng, self.split, self.pools = rng, split, number_pools()[split]
    self.held_out = {n for numbers in self.pools.values() for n in numbers}

  def number(self) -> int:
    """As the corpus draws one: a digit count uniform in 1..4, then a held-out number of that many digits."""
    return self.rng.choice(self.pools[self.rng.randint(1, MAX_DIGITS)])

  def letters(self, alphabet: str, length: int) -> list[str]:
    return [self.rng.choice(alphabet) for _ in range(length)]

  def string(self, alphabet: str) -> str:
    while True:
      s = "".join(self.letters(alphabet, self.rng.randint(MIN_LEN, MAX_LEN)))
      if self.is_held_out(s):
        return s

  def is_held_out(self, s: str) -> bool:
    return split_for(f"str:{s}") == self.split

  def other_letter(self, alphabet: str, letter: str) -> str:
    return self.rng.choice([ch for ch in alphabet if ch != letter])


def _render(task: str, operands: Sequence) -> str:
  if task == "count":
    return f"count {operands[0]} in {operands[1]} ="
  if task == "words2num":
    return f"words2num {num2words(operands[0])} ="
  return " ".join([task, *map(str, operands)]) + " ="


def _shift(draw: _Draw, task: str, slot: int) -> tuple[str, str, str, str] | None:
  """Numbers: the slot takes a, b, c and c + a − b; the other operand (add/sub/mul) is shared."""
  va, vb, vc = draw.number(), draw.number(), draw.number()
  vd = vc + va - vb
  if va == vb or not 0 <= vd <= MAX_NUMBER or vd not in draw.held_out:
    return None
  rest = [draw.number()] if task in ("add", "sub", "mul") else []

  def text(v: int) -> str:
    operands = list(rest)
    operands.insert(slot, v)
    return _render(task, operands)

  return text(va), text(vb), text(vc), text(vd)


def _swap(word: list[str], position: int, letter: str) -> str:
  return "".join(word[:position] + [letter] + word[position + 1 :])


def _substitute(draw: _Draw, task: str, slot: int) -> tuple[str, str, str, str] | None:
  """Letters: x in a, y in b; then another context with y in c and x in the answer."""
  alphabet = COUNT_LETTERS if task == "count" else LETTERS
  if task == "count" and slot == 0:  # the counted letter; the context is the string
    x = draw.rng.choice(COUNT_LETTERS)
    y = draw.other_letter(COUNT_LETTERS, x)
    s, t = draw.string(alphabet), draw.string(alphabet)
    return _render(task, [x, s]), _render(task, [y, s]), _render(task, [y, t]), _render(task, [x, t])
  while True:  # a and b: both strings held-out (about 1 draw in 400 for a held-out split)
    word = draw.letters(alphabet, draw.rng.randint(MIN_LEN, MAX_LEN))
    position = draw.rng.randrange(len(word))
    x, y = word[position], draw.other_letter(alphabet, word[position])
    if draw.is_held_out(_swap(word, position, x)) and draw.is_held_out(_swap(word, position, y)):
      break
  while True:  # c and the answer: another string long enough to have the position, both held-out
    other = draw.letters(alphabet, draw.rng.randint(max(MIN_LEN, position + 1), MAX_LEN))
    if draw.is_held_out(_swap(other, position, y)) and draw.is_held_out(_swap(other, position, x)):
      break
  strings = _swap(word, position, x), _swap(word, position, y), _swap(other, position, y), _swap(other, position, x)
  if task != "count":
    return tuple(_render(task, [s]) for s in strings)
  letters = [draw.rng.choice(COUNT_LETTERS) for _ in range(2)]  # the counted letter: one per context
  return tuple(_render(task, [letters[i // 2], s]) for i, s in enumerate(strings))


def make(n: int, seed: int, split: str = "test") -> list[Analogy]:
  """``n`` distinct analogies, cycling through ``SLOTS`` (so every (task, slot) appears once n ≥ 13), operands from
  ``split``'s held-out part. The same ``(n, seed, split)`` gives the same list, and a smaller n a prefix of it."""
  if split not in SPLITS:
    raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
  if n < 0:
    raise UserError(f"the number of analogies must be >= 0, got {n}")
  draw = _Draw(random.Random(f"llmcpu.stitching.analogies/{seed}/{split}"), split)
  slots = list(SLOTS)
  out: list[Analogy] = []
  seen: set[tuple[str, ...]] = set()
  for i in range(n):
    task, slot = slots[i % len(slots)]
    sample = _shift if SLOTS[(task, slot)] == "shift" else _substitute
    for _ in range(_ATTEMPTS):
      texts = sample(draw, task, slot)
      # Four different texts (so the answer is none of the inputs), never an analogy already made.
      if texts is not None and len(set(texts)) == 4 and texts not in seen:
        break
    else:
      raise UserError(f"could not draw analogy {i} ({task}, slot {slot}) in {_ATTEMPTS} tries; ask for fewer")
    seen.add(texts)
    out.append(Analogy(*texts, task=task, slot=slot))
  return out


def nearest(query, candidates, exclude: Sequence[int]) -> int:
  """Index of the row of ``candidates`` [M, D] with the highest cosine to ``query`` [D], never one in ``exclude``
  (the analogy's inputs, as is standard since Mikolov et al. 2013); ties go to the lowest index."""
  cos = relative(np.asarray(query)[None, :], candidates)[0]
  cos[np.asarray(list(exclude), np.int64)] = -np.inf
  if not np.isfinite(cos).any():
    raise UserError(f"nearest has no candidate left: all {len(cos)} are excluded")
  return int(np.argmax(cos))


def queries(space: np.ndarray, ia, ib, ic, ians) -> dict[str, np.ndarray]:
  """The query vectors of analogies whose texts are rows ``ia``, ``ib``, ``ic``, ``ians`` of ``space`` [M, D]: the
  analogy e(a) − e(b) + e(c); its baselines e(c) alone and e(b) alone (with a, b, c excluded from the candidates,
  the answer is often the nearest text of c's task: arithmetic must beat them to mean anything); the oracle e(answer)
  (a calibration of the readout on a known answer)."""
  return {
    "analogy": space[ia] - space[ib] + space[ic],
    "c_only": space[ic],
    "b_only": space[ib],
    "oracle": space[ians],
  }


def top1_hits(vectors: np.ndarray, candidates: np.ndarray, excluded: np.ndarray, answers: np.ndarray) -> np.ndarray:
  """Per query, 1.0 where ``nearest`` (row ``excluded[i]`` never chosen) is ``answers[i]``, else 0.0."""
  picks = [nearest(v, candidates, ex) for v, ex in zip(vectors, excluded, strict=True)]
  return (np.asarray(picks) == np.asarray(answers)).astype(np.float64)
