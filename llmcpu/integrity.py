"""Checks everything a workdir holds end to end: compilers, compiled splits and checkpoints.

What loading already checks is checked here in full, for every item, so a workdir copied between machines or
buckets can be vetted before anything trains or evaluates on it:

- a compiler: its model bytes against the sha256 in ``isa.json``, its id → piece table against its fingerprint;
- a compiled split: every file's size and sha256 against its manifest, the arrays' shapes, and the ISA that built
  it against the compiler of the same name in the same compile directory;
- a checkpoint: every step's metadata, the compiler files it carries, and every array against the checksum
  recorded at save.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator

from llmcpu import compilers, fs
from llmcpu.data import compiled
from llmcpu.errors import UserError
from llmcpu.training import checkpoints


@dataclasses.dataclass(frozen=True)
class Finding:
  """One checked item: ``problem`` is None when it is intact, else what is wrong and how to rebuild it."""

  kind: str  # "compiler" | "compiled" | "checkpoint"
  path: str
  problem: str | None = None

  @property
  def ok(self) -> bool:
    return self.problem is None

  def line(self) -> str:
    return f"{'ok' if self.ok else 'damaged':8} {self.kind:10} {self.path}" + ("" if self.ok else f": {self.problem}")


def verify(root: str) -> Iterator[Finding]:
  """Every compiler, compiled split and checkpoint step under ``root`` (a local path or bucket URI), checked."""
  root = fs.abspath(root).rstrip("/")
  if not fs.isdir(root):
    raise UserError(f"{root} is not a directory; pass a workdir (compile, training or experiment)")
  for kind, path in _items(root):
    yield Finding(kind, path, _CHECKS[kind](path))


def _items(path: str) -> Iterator[tuple[str, str]]:
  """(kind, path) of what lies under ``path``, depth first in name order; a checkpoint yields one item per step."""
  names = fs.listdir(path)
  if compilers.MANIFEST in names:
    yield "compiler", path
    return
  if compiled.MANIFEST in names and any(n.endswith(".tokens.npy") for n in names):
    yield "compiled", path
    return
  steps = sorted(int(n) for n in names if n.isdigit() and fs.exists(fs.join(path, n, "_CHECKPOINT_METADATA")))
  if steps:
    for step in steps:
      yield "checkpoint", fs.join(path, str(step))
    return
  for name in names:
    if fs.isdir(fs.join(path, name)):
      yield from _items(fs.join(path, name))


def _problem(check: Callable[[str], None]) -> Callable[[str], str | None]:
  def wrapped(path: str) -> str | None:
    try:
      check(path)
    except UserError as e:
      return str(e)
    return None

  return wrapped


@_problem
def _check_compiler(path: str) -> None:
  compilers.load(path)


@_problem
def _check_compiled(path: str) -> None:
  manifest = compiled.read_manifest(path)
  damaged = compiled.damaged_files(path, manifest, contents=True)
  if damaged:
    raise UserError(f"{', '.join(damaged)}; delete {path} and rerun scripts/compile.py (or the experiment)")
  compiled.load(path)
  # data/<corpus>/<isa>/<split> beside compilers/<isa>: the split must have been built by that compiler.
  isa = fs.basename(fs.dirname(path))
  own = fs.join(fs.dirname(fs.dirname(fs.dirname(fs.dirname(path)))), "compilers", isa)
  fingerprint = _recorded_fingerprint(own)
  if manifest["compiler"] != isa or fingerprint not in (None, manifest["compiler_fingerprint"]):
    raise UserError(
      f"built by ISA {manifest['compiler']} ({manifest['compiler_fingerprint'][:12]}), not by {isa}"
      f"{f' ({fingerprint[:12]})' if fingerprint else ''}; delete {path} and rerun scripts/compile.py"
    )


def _recorded_fingerprint(compiler_dir: str) -> str | None:
  """The fingerprint a compiler's isa.json records (its own line says whether its files match it)."""
  try:
    return json.loads(fs.read_text(fs.join(compiler_dir, compilers.MANIFEST)))["fingerprint"]
  except Exception:  # missing or unreadable: nothing to compare with
    return None


@_problem
def _check_checkpoint(path: str) -> None:
  checkpoints.verify(path)  # every array, the optimizer's moments too (load_model reads the model's only)


_CHECKS = {"compiler": _check_compiler, "compiled": _check_compiled, "checkpoint": _check_checkpoint}
