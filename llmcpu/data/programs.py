"""The ``programs`` corpus: synthetic computations with ground truth, as a TFDS builder.

Each example is ``{"input", "target", "task"}``; the input is the task name, its operands separated by single
spaces, then `` =``; the target is the answer alone:

  input                              target               task
  "add 123 45 ="                     "168"                add
  "sub 12 345 ="                     "-333"               sub        (may be negative)
  "mul 12 34 ="                      "408"                mul
  "copy qwerty ="                    "qwerty"             copy
  "reverse abcde ="                  "edcba"              reverse
  "sort dbca ="                      "abcd"               sort       (the letters in order)
  "count a in abcab ="               "2"                  count      (occurrences of a letter; may be 0)
  "num2words 105 ="                  "one hundred five"   num2words  (American English, no "and")
  "words2num forty-two ="            "42"                 words2num

Numbers have 1-4 digits (0..9999; the digit count is drawn uniformly). Strings are 3-10 lowercase letters; count
uses the letters a-e so counts are interesting.

Held-out operands: the operand universe is partitioned once, independent of the seed, so no validation or test
operand ever appears in train (or in the other held-out split). Numbers: within each digit count, the numbers are
ranked by sha256 and the first 5% (at least one) go to validation, the next 5% to test. Strings: sha256 of the
string, 5% validation / 5% test (`sources.split_for`). Every operand of an example comes from its split's part.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import random
import string

from llmcpu.data.sources import SPLITS, defined_once, import_tfds, split_for

TASKS = ("add", "sub", "mul", "copy", "reverse", "sort", "count", "num2words", "words2num")
MAX_DIGITS = 4
MIN_LEN, MAX_LEN = 3, 10
LETTERS = string.ascii_lowercase
COUNT_LETTERS = "abcde"
HELD_OUT = 0.05  # share of each digit count's numbers for validation, and again for test

_ONES = (
  "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
  "seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def num2words(n: int) -> str:
  """0 → "zero", 105 → "one hundred five", 9999 → "nine thousand nine hundred ninety-nine" (|n| < 10**6)."""
  if n < 0:
    return "minus " + num2words(-n)
  if n < 20:
    return _ONES[n]
  if n < 100:
    return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")
  if n < 1000:
    return f"{_ONES[n // 100]} hundred" + (f" {num2words(n % 100)}" if n % 100 else "")
  if n < 1_000_000:
    return f"{num2words(n // 1000)} thousand" + (f" {num2words(n % 1000)}" if n % 1000 else "")
  raise ValueError(f"num2words supports |n| < 1000000, got {n}")


def words2num(words: str) -> int:
  """Inverse of ``num2words``; raises ValueError on a word it does not know."""
  tokens = words.replace("-", " ").split()
  sign = -1 if tokens[:1] == ["minus"] else 1
  total = current = 0
  for tok in tokens[1:] if sign < 0 else tokens:
    if tok in _ONES:
      current += _ONES.index(tok)
    elif tok in _TENS[2:]:
      current += 10 * _TENS.index(tok)
    elif tok == "hundred":
      current *= 100
    elif tok == "thousand":
      total, current = total + current * 1000, 0
    else:
      raise ValueError(f"not a number word: {tok!r}")
  if not tokens:
    raise ValueError("no number words")
  return sign * (total + current)


@functools.cache
def number_pools() -> dict[str, dict[int, tuple[int, ...]]]:
  """``{split: {digits: numbers}}``: the seed-independent partition of 0..9999 (see the module docstring)."""
  pools: dict[str, dict[int, tuple[int, ...]]] = {s: {} for s in SPLITS}
  for digits in range(1, MAX_DIGITS + 1):
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    ranked = sorted(range(lo, 10**digits), key=lambda n: hashlib.sha256(f"num:{n}".encode()).digest())
    k = max(1, round(HELD_OUT * len(ranked)))
    pools["validation"][digits] = tuple(sorted(ranked[:k]))
    pools["test"][digits] = tuple(sorted(ranked[k : 2 * k]))
    pools["train"][digits] = tuple(sorted(ranked[2 * k :]))
  return pools


def _number(rng: random.Random, split: str) -> int:
  return rng.choice(number_pools()[split][rng.randint(1, MAX_DIGITS)])


def _word(rng: random.Random, split: str, letters: str) -> str:
  while True:  # rejection sampling: ~1 in 20 draws lands in a held-out split
    s = "".join(rng.choice(letters) for _ in range(rng.randint(MIN_LEN, MAX_LEN)))
    if split_for(f"str:{s}") == split:
      return s


def example(task: str, rng: random.Random, split: str) -> dict[str, str]:
  """One example of ``task`` with operands from ``split``'s part of the universe."""
  if task in ("add", "sub", "mul"):
    a, b = _number(rng, split), _number(rng, split)
    answer = a + b if task == "add" else a - b if task == "sub" else a * b
    return {"input": f"{task} {a} {b} =", "target": str(answer), "task": task}
  if task in ("copy", "reverse", "sort"):
    s = _word(rng, split, LETTERS)
    answer = s if task == "copy" else s[::-1] if task == "reverse" else "".join(sorted(s))
    return {"input": f"{task} {s} =", "target": answer, "task": task}
  if task == "count":
    s, c = _word(rng, split, COUNT_LETTERS), rng.choice(COUNT_LETTERS)
    return {"input": f"count {c} in {s} =", "target": str(s.count(c)), "task": task}
  n = _number(rng, split)
  if task == "num2words":
    return {"input": f"num2words {n} =", "target": num2words(n), "task": task}
  if task == "words2num":
    return {"input": f"words2num {num2words(n)} =", "target": str(n), "task": task}
  raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")


def generate(split: str, num: int, seed: int = 0) -> list[dict[str, str]]:
  """``num`` examples of ``split`` (tasks drawn uniformly), the same for the same ``(split, num, seed)``."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
  # A string seed: Python hashes it with sha512, stable across runs and platforms (unlike hash()).
  rng = random.Random(f"llmcpu.programs/{seed}/{split}")
  return [example(rng.choice(TASKS), rng, split) for _ in range(num)]


def __getattr__(name: str) -> type:
  # ``programs.Programs`` and ``programs.ProgramsConfig`` still work; they import TFDS on first access.
  if name == "Programs":
    return builder_class()
  if name == "ProgramsConfig":
    return type(builder_class().BUILDER_CONFIGS[0])
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@defined_once
def builder_class() -> type:
  """The TFDS builder ``Programs``, defined (so registered with TFDS as ``programs``) on the first call.

  Not a module-level class: its base needs TensorFlow Datasets, and importing this module must stay cheap.
  """
  tfds = import_tfds()

  @dataclasses.dataclass
  class ProgramsConfig(tfds.core.BuilderConfig):
    """Generator parameters: change any of them and the config's name must change too."""

    seed: int = 0
    train_size: int = 20_000
    validation_size: int = 1_000
    test_size: int = 1_000

  class Programs(tfds.core.GeneratorBasedBuilder):
    """Synthetic computations with ground truth, generated from a seed, prepared offline."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "add/sub/mul/copy/reverse/sort/count/num2words/words2num; held-out operands."}
    # No checksums/README files to find; and TFDS 4.9.10 locates a packaged builder's code with importlib_resources,
    # which it only requires on Python < 3.9 (ModuleNotFoundError here).
    code_path = None
    BUILDER_CONFIGS = [
      ProgramsConfig(name="default", description="20000/1000/1000 examples, seed 0"),
      ProgramsConfig(
        name="small", description="2000/200/200 examples, seed 0", train_size=2000, validation_size=200, test_size=200
      ),
    ]

    def _info(self):
      text = tfds.features.Text()
      return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({"input": text, "target": text, "task": text}),
        disable_shuffling=True,  # generation order: already random
        metadata=tfds.core.MetadataDict(),
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download: examples come from the generator
      cfg = self.builder_config
      sizes = {"train": cfg.train_size, "validation": cfg.validation_size, "test": cfg.test_size}
      examples = {s: generate(s, n, cfg.seed) for s, n in sizes.items()}
      self.info.metadata.update(
        {
          "seed": cfg.seed,
          "sizes": sizes,
          "tasks": list(TASKS),
          "num_docs": {s: len(e) for s, e in examples.items()},
          "num_bytes": {
            s: sum(len(x["input"].encode()) + len(x["target"].encode()) for x in e) for s, e in examples.items()
          },
          "content_sha256": hashlib.sha256(json.dumps(examples, sort_keys=True).encode()).hexdigest(),
        }
      )
      return {s: self._generate_examples(e) for s, e in examples.items()}

    def _generate_examples(self, examples):
      yield from enumerate(examples)  # key = position: unique, and the generation order is kept

  return Programs
