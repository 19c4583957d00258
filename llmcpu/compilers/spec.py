"""Compiler spec strings: ``FAMILY[:VOCAB][+perm:SEED[:FRACTION]]``.

Examples: ``bpe:4000``, ``unigram:4000+perm:1``, ``bpe:4000+perm:3:0.25``, ``char``, ``byte``.
The spec's ``name`` (``bpe4000``, ``unigram4000-perm1``, ``bpe4000-perm3-f0.25``) is a filesystem-safe label used
for directories and table rows.
"""

from __future__ import annotations

import dataclasses
import re

from llmcpu.errors import UserError

LEARNED_FAMILIES = ("unigram", "bpe", "char", "word")
FAMILIES = LEARNED_FAMILIES + ("byte",)
DEFAULT_VOCAB = {"unigram": 4000, "bpe": 4000, "word": 4000}

_SPEC_RE = re.compile(r"^(?P<family>[a-z]+)(?::(?P<vocab>\d+))?(?:\+perm:(?P<seed>\d+)(?::(?P<fraction>[0-9.]+))?)?$")
_FORM = "FAMILY[:VOCAB][+perm:SEED[:FRACTION]], e.g. bpe:4000, unigram:4000+perm:1, bpe:4000+perm:3:0.25, char, byte"


@dataclasses.dataclass(frozen=True)
class CompilerSpec:
  family: str
  vocab: int | None = None  # None: the family's default (char: every required character; byte: fixed)
  perm_seed: int | None = None
  perm_fraction: float = 1.0

  @property
  def base(self) -> CompilerSpec:
    """The untransformed compiler this one derives from (permuted ISAs share their base's segmentation)."""
    return CompilerSpec(self.family, self.vocab)

  @property
  def permuted(self) -> bool:
    return self.perm_seed is not None

  def __str__(self) -> str:
    s = self.family + (f":{self.vocab}" if self.vocab is not None else "")
    if self.permuted:
      s += f"+perm:{self.perm_seed}" + (f":{self.perm_fraction:g}" if self.perm_fraction != 1.0 else "")
    return s

  @property
  def name(self) -> str:
    s = self.family + (str(self.vocab) if self.vocab is not None else "")
    if self.permuted:
      s += f"-perm{self.perm_seed}" + (f"-f{self.perm_fraction:g}" if self.perm_fraction != 1.0 else "")
    return s


def parse(spec: str) -> CompilerSpec:
  """Parses one spec string; raises UserError with the accepted form."""
  m = _SPEC_RE.match(spec.strip())
  if not m:
    raise UserError(f"malformed compiler spec {spec!r}; expected {_FORM}")
  family = m["family"]
  if family not in FAMILIES:
    raise UserError(f"unknown compiler family {family!r} in {spec!r}; choose one of {', '.join(FAMILIES)}")
  vocab = int(m["vocab"]) if m["vocab"] else DEFAULT_VOCAB.get(family)
  if family == "byte" and m["vocab"]:
    raise UserError(f"the byte compiler has a fixed vocabulary; write 'byte', not {spec!r}")
  fraction = 1.0
  if m["fraction"] is not None:
    try:
      fraction = float(m["fraction"])
    except ValueError:
      fraction = -1.0
    if not 0.0 < fraction <= 1.0:
      raise UserError(f"permutation fraction in {spec!r} must be in (0, 1]")
  seed = int(m["seed"]) if m["seed"] is not None else None
  return CompilerSpec(family, vocab, seed, fraction)


def parse_list(specs: str | list[str]) -> list[CompilerSpec]:
  """Parses a comma-separated list (or a list) of specs; duplicate names are an error."""
  items = [s for s in (specs.split(",") if isinstance(specs, str) else specs) if s.strip()]
  if not items:
    raise UserError("no compilers given; pass e.g. --config.compilers=bpe:1000,bpe:4000,char,byte")
  parsed = [parse(s) for s in items]
  names = [p.name for p in parsed]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise UserError(f"compiler given twice: {', '.join(dupes)}")
  return parsed
