"""Compiler spec strings: ``FAMILY[:VOCAB][+perm:SEED[:FRACTION]]``.

Examples: ``bpe:4000``, ``unigram:4000+perm:1``, ``bpe:4000+perm:3:0.25``, ``char``, ``byte``.
The spec's ``name`` (``bpe4000``, ``unigram4000-perm1``, ``bpe4000-perm3-f0.25``) is a filesystem-safe label used
for directories and table rows.

An existing tokenizer file is an ISA too, kept with its own id table: ``hf:PATH`` (a Hugging Face
``tokenizer.json``, or the directory holding one) and ``spm:PATH`` (a SentencePiece ``.model``). Its name is
``hf-<folder or file stem>-<hash of the absolute path>`` (``spm-…``), so two files never share a directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

from llmcpu.errors import UserError

LEARNED_FAMILIES = ("unigram", "bpe", "char", "word")
EXTERNAL_FAMILIES = ("hf", "spm")  # read from an existing tokenizer file, never trained here
FAMILIES = LEARNED_FAMILIES + ("byte",) + EXTERNAL_FAMILIES
DEFAULT_VOCAB = {"unigram": 4000, "bpe": 4000, "word": 4000}

_SPEC_RE = re.compile(r"^(?P<family>[a-z]+)(?::(?P<vocab>\d+))?(?:\+perm:(?P<seed>\d+)(?::(?P<fraction>[0-9.]+))?)?$")
_FORM = "FAMILY[:VOCAB][+perm:SEED[:FRACTION]], e.g. bpe:4000, unigram:4000+perm:1, bpe:4000+perm:3:0.25, char, byte"


@dataclasses.dataclass(frozen=True)
class CompilerSpec:
  family: str
  vocab: int | None = None  # None: the family's default (char: every required character; byte: fixed)
  perm_seed: int | None = None
  perm_fraction: float = 1.0
  path: str | None = None  # hf/spm: the tokenizer file (absolute)

  @property
  def external(self) -> bool:
    return self.family in EXTERNAL_FAMILIES

  @property
  def base(self) -> CompilerSpec:
    """The untransformed compiler this one derives from (permuted ISAs share their base's segmentation)."""
    return CompilerSpec(self.family, self.vocab, path=self.path)

  @property
  def permuted(self) -> bool:
    return self.perm_seed is not None

  def __str__(self) -> str:
    if self.external:
      return f"{self.family}:{self.path}"
    s = self.family + (f":{self.vocab}" if self.vocab is not None else "")
    if self.permuted:
      s += f"+perm:{self.perm_seed}" + (f":{self.perm_fraction:g}" if self.perm_fraction != 1.0 else "")
    return s

  @property
  def name(self) -> str:
    if self.external:
      stem = os.path.basename(os.path.dirname(self.path)) if self.family == "hf" else os.path.basename(self.path)
      stem = re.sub(r"[^A-Za-z0-9_.]+", "_", os.path.splitext(stem)[0])[:40] or "tokenizer"
      return f"{self.family}-{stem}-{hashlib.sha256(self.path.encode()).hexdigest()[:8]}"
    s = self.family + (str(self.vocab) if self.vocab is not None else "")
    if self.permuted:
      s += f"-perm{self.perm_seed}" + (f"-f{self.perm_fraction:g}" if self.perm_fraction != 1.0 else "")
    return s


def parse(spec: str) -> CompilerSpec:
  """Parses one spec string; raises UserError with the accepted form."""
  family, _, rest = spec.strip().partition(":")
  if family in EXTERNAL_FAMILIES:
    return _parse_external(family, rest, spec)
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


def _parse_external(family: str, path: str, spec: str) -> CompilerSpec:
  """``hf:PATH`` / ``spm:PATH``: the path made absolute (a directory holding ``tokenizer.json`` for hf)."""
  if not path:
    raise UserError(f"{spec!r} names no file; write hf:PATH/tokenizer.json (or its directory) or spm:PATH.model")
  if "+perm:" in path:
    raise UserError(f"{spec!r}: permuting an existing tokenizer's ISA is not supported; use the file as it is")
  path = os.path.abspath(os.path.expanduser(path))
  if family == "hf" and os.path.isdir(path):
    path = os.path.join(path, "tokenizer.json")
  return CompilerSpec(family, None, path=path)


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
