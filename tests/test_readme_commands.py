"""Every ``python scripts/...`` command in README.md's ```bash blocks runs as written after the commands above it.

Each command runs with ``--check`` (the scripts load their config with the overrides, resolve the paths they would
read and write, print them and run nothing): a renamed flag or a removed config key exits non-zero. The paths it
reads must then be in the repository or written by an earlier command of the same block; a block that starts from
another block's results says so in a comment, ``# needs: runs/quickstart (the quickstart above)``, and gets what an
earlier block writes under that path. Paths compare segment by segment as globs, both ways: an experiment's run
directory names its corpus ``*`` (its name is known once the corpus is loaded), and cross_eval's
``--config.checkpoints`` may be a glob, and finds runs at any depth below what it names.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = re.compile(r"^scripts/\w+\.py$")


@dataclasses.dataclass(frozen=True)
class Command:
  line: int  # where it starts in its file
  argv: tuple[str, ...]  # scripts/X.py and its arguments

  def text(self) -> str:
    return "python " + shlex.join(self.argv)


@dataclasses.dataclass
class Block:
  line: int
  steps: list  # Command, or ("needs", line, path), in order


@dataclasses.dataclass(frozen=True)
class Access:
  mode: str  # read | write
  kind: str
  path: str  # relative to the repository root when under it
  detail: str


# ------------------------------------------------------------------------------------------------- reading a README


def bash_blocks(text: str) -> list[Block]:
  """The README's ```bash blocks: their commands (a ``\\`` continues a line; ``&&``/``;`` separate commands) and
  ``# needs:`` comments."""
  blocks, block, pending, start = [], None, "", 0
  for number, line in enumerate(text.splitlines(), 1):
    if block is None:
      if line.strip() == "```bash":
        block = Block(number, [])
      continue
    if line.strip() == "```":
      blocks.append(block)
      block = None
      continue
    if not pending:
      start = number  # a logical line is reported where it starts
    if line.rstrip().endswith("\\"):
      pending += line.rstrip()[:-1] + " "
      continue
    _parse_line(block, start, pending + line)
    pending = ""
  return blocks


def _parse_line(block: Block, number: int, line: str) -> None:
  stripped = line.strip()
  needs = re.match(r"#\s*needs:\s*([^(]*)", stripped)
  if needs:
    block.steps += [("needs", number, p) for p in re.split(r"[,\s]+", needs[1].strip()) if p]
    return
  tokens = shlex.split(line, comments=True)
  segments, current = [], []
  for token in tokens:
    if token in ("&&", "||", ";"):
      segments.append(current)
      current = []
    else:
      current.append(token)
  segments.append(current)
  for seg in segments:
    for i, token in enumerate(seg[:-1]):
      if os.path.basename(token).startswith("python") and SCRIPT.match(seg[i + 1]):
        block.steps.append(Command(number, tuple(seg[i + 1 :])))
        break


# ------------------------------------------------------------------------------------------------- running --check


def run_checks(commands: list[Command]) -> dict[Command, tuple[int, str]]:
  """Every command with --check, through tests/check_worker.py (the imports are paid once)."""
  argvs = [[c.argv[0], "--check", *c.argv[1:]] for c in dict.fromkeys(commands)]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  worker = os.path.join(ROOT, "tests", "check_worker.py")
  out = subprocess.run(
    [sys.executable, worker], input=json.dumps(argvs), capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
  )
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout)
  return {c: (r["rc"], r["output"]) for c, r in zip(dict.fromkeys(commands), results, strict=True)}


def accesses(output: str) -> list[Access]:
  found = []
  for line in output.splitlines():
    fields = line.split("\t")
    if len(fields) == 5 and fields[0] in ("read", "write"):
      mode, kind, path, detail, _ = fields
      found.append(Access(mode, kind, _relative(path), "" if detail == "-" else _relative(detail)))
  return found


def _relative(path: str) -> str:
  return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) or path == ROOT else path


# ------------------------------------------------------------------------------------------------- the path model


def _segments(path: str) -> list[str]:
  return [s for s in path.split("/") if s not in ("", ".")]


def _compatible(a: list[str], b: list[str]) -> bool:
  """Same depth, and each segment equal or matched by the other's glob (either way)."""
  return len(a) == len(b) and all(
    x == y or fnmatch.fnmatchcase(x, y) or fnmatch.fnmatchcase(y, x) for x, y in zip(a, b, strict=True)
  )


def _at_or_below(path: str, root: str) -> bool:
  """Whether ``path`` is ``root`` or below it (globs compared segment by segment)."""
  p, r = _segments(path), _segments(root)
  return len(p) >= len(r) and _compatible(p[: len(r)], r)


def tracked_files() -> set[str]:
  """The repository's files: git's, or outside a git checkout every file but those in runs/ (the README's outputs)."""
  try:
    out = subprocess.run(["git", "-C", ROOT, "ls-files"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())
  except (OSError, subprocess.CalledProcessError):
    found = set()
    for dirpath, _, files in os.walk(ROOT):
      found |= {os.path.relpath(os.path.join(dirpath, f), ROOT) for f in files}
    return {f for f in found if not f.startswith("runs" + os.sep)}


def _in_repo(path: str, tracked: set[str]) -> bool:
  return path in tracked or any(f.startswith(path.rstrip("/") + "/") for f in tracked)


def _provided(read: Access, written: list[Access], tracked: set[str]) -> str | None:
  """None when ``read`` is there (in the repo, or written earlier), else why not."""
  if "://" in read.path:
    return None  # a bucket: the README says in a comment how it is made
  runs = [w for w in written if w.kind == "run"]
  if read.kind in ("dir", "file"):
    ok = _in_repo(read.path, tracked) or any(_at_or_below(w.path, read.path) for w in written)
  elif read.kind == "run":
    ok = any(_compatible(_segments(w.path), _segments(read.path)) for w in runs)
  elif read.kind == "runs":
    ok = any(_at_or_below(w.path, read.path) for w in runs)
  elif read.kind == "isa":
    ok = any(w.kind == "isa" and _compatible(_segments(w.path), _segments(read.path)) for w in written)
  elif read.kind == "isa_of_run":
    sources = [w for w in runs if _compatible(_segments(w.path), _segments(read.path))]
    if not sources:
      return None  # the read of the run itself says so
    if not sources[0].detail:
      return f"reads ISA {read.detail} in the compile dir of {read.path}, which is not known: pass --config.compile_dir"
    isa = Access("read", "isa", os.path.join(sources[0].detail, "compilers", read.detail), "")
    return _provided(isa, written, tracked)
  else:
    return f"reads {read.kind} {read.path}: a kind this test does not know"
  return None if ok else f"reads {read.kind} {read.path}, which neither the repo holds nor an earlier command writes"


def problems(text: str, results: dict[Command, tuple[int, str]], name: str) -> list[str]:
  """Every command of ``text`` that does not parse, or reads what is neither in the repo nor written before it;
  ``results``: ``run_checks`` of its commands."""
  tracked, found, earlier = tracked_files(), [], []
  blocks = bash_blocks(text)
  for block in blocks:
    written: list[Access] = []
    for step in block.steps:
      if not isinstance(step, Command):
        _, line, path = step
        given = [w for w in earlier if _at_or_below(w.path, path)]
        written += given
        if not given:
          found.append(f"{name}:{line}: needs {path}, which no command in an earlier block writes")
        continue
      rc, output = results[step]
      if rc != 0:
        last = (output.strip().splitlines() or ["no output"])[-1]
        found.append(f"{name}:{step.line}: {step.text()} exits {rc}: {last}")
        continue
      for access in accesses(output):
        if access.mode == "write":
          written.append(access)
        elif why := _provided(access, written, tracked):
          found.append(f"{name}:{step.line}: {step.argv[0]} {why}")
    earlier += written
  return found


# ------------------------------------------------------------------------------------------------- the tests

QUICKSTART = "python scripts/experiment.py --config=configs/experiments/quickstart.py --workdir=runs/quickstart"
TODAYS_CROSS_EVAL = f"""```bash
{QUICKSTART}
python scripts/cross_eval.py --config.checkpoints='runs/quickstart/runs/*/*/*' \\
  --config.isas=bpe:1000,bpe:4000,unigram:4000 --config.compile_dir=runs/quickstart/compiled \\
  --config.out=runs/quickstart/crosseval
```
"""
# Each: a README block, and a piece of each problem it must have (and no other).
BROKEN = {
  "todays_cross_eval": (
    TODAYS_CROSS_EVAL,
    "reads isa runs/quickstart/compiled/compilers/bpe4000",
    "reads isa runs/quickstart/compiled/compilers/unigram4000",
  ),
  "renamed_flag": (
    "```bash\npython scripts/train.py --config=configs/decoder.py:tiny --work_dir=runs/dec\n```\n",
    "exits 2: error: Unknown command line flag 'work_dir'",
  ),
  "removed_config_key": (
    "```bash\npython scripts/compile.py --config.vocab=4000 --workdir=runs/compiled\n```\n",
    "exits 2: error: bad --config override",
  ),
  "value_out_of_range": (
    "```bash\npython scripts/train.py --config=configs/decoder.py:tiny --workdir=runs/d --config.train.steps=-3\n```\n",
    "exits 1: error: --config.train.steps=-3 must be at least 0",
  ),
  "wrong_path_shape": (  # the arch level left out
    f"```bash\n{QUICKSTART}\npython scripts/port.py --config.checkpoint=runs/quickstart/runs/python_docs-py3.11/"
    "bpe1000/seed0 --config.to_isa=char --workdir=runs/port\n```\n",
    "reads run runs/quickstart/runs/python_docs-py3.11/bpe1000/seed0, which neither",
  ),
  "glob_below_the_runs": (
    f"```bash\n{QUICKSTART}\npython scripts/cross_eval.py --config.checkpoints='runs/quickstart/runs/*/*/*/*/*' "
    "--config.compile_dir=runs/quickstart/compiled --config.out=runs/out\n```\n",
    "reads runs runs/quickstart/runs/*/*/*/*/*, which neither",
  ),
  "isa_not_compiled": (
    f"```bash\n{QUICKSTART}\npython scripts/port.py --config.checkpoint=runs/quickstart/runs/python_docs-py3.11/"
    "decoder/char/seed0 --config.to_isa=bpe:4000 --workdir=runs/port\n```\n",
    "reads isa runs/quickstart/compiled/compilers/bpe4000",
  ),
  "needs_what_no_block_writes": (
    "```bash\n# needs: runs/compiled (nothing above)\npython scripts/train.py --config=configs/decoder.py:tiny "
    "--workdir=runs/dec --config.data.compile_dir=runs/compiled --config.data.isa=char\n```\n",
    "needs runs/compiled, which no command in an earlier block writes",
    "reads isa runs/compiled/compilers/char",
  ),
}


@pytest.fixture(scope="module")
def checked() -> dict[str, list[str]]:
  """The problems of README.md and of each BROKEN block, with one worker run for all of their commands."""
  with open(os.path.join(ROOT, "README.md")) as f:
    texts = {"README.md": f.read()} | {name: text for name, (text, *_) in BROKEN.items()}
  commands = [s for text in texts.values() for b in bash_blocks(text) for s in b.steps if isinstance(s, Command)]
  results = run_checks(commands)
  return {name: problems(text, results, name) for name, text in texts.items()}


def test_every_readme_command_runs_as_written(checked):
  assert not checked["README.md"], "\n".join(checked["README.md"])


def test_the_readme_commands_are_all_found():
  with open(os.path.join(ROOT, "README.md")) as f:
    blocks = bash_blocks(f.read())
  scripts = {s.argv[0] for b in blocks for s in b.steps if isinstance(s, Command)}
  assert {f"scripts/{n}.py" for n in ("experiment", "compile", "train", "cross_eval", "port", "swap")} <= scripts


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_command_is_caught(checked, name):
  expected, found = BROKEN[name][1:], checked[name]
  assert len(found) == len(expected) and all(e in p for e, p in zip(expected, found, strict=True)), found


def test_blocks_join_continuations_and_split_chains():
  text = (
    "```bash\n# needs: runs/a, runs/b (above)\nx && .venv/bin/python scripts/verify.py runs/a \\\n  runs/b  # c\n```"
  )
  (block,) = bash_blocks(text)
  assert block.steps == [
    ("needs", 2, "runs/a"),
    ("needs", 2, "runs/b"),
    Command(3, ("scripts/verify.py", "runs/a", "runs/b")),
  ]


def test_runs_are_found_at_any_depth(tmp_path):
  """checkpoints.find_runs against a tree whose runs are known by construction."""
  from llmcpu.training import checkpoints

  runs = [tmp_path / "runs" / "c" / "decoder" / isa / "seed0" for isa in ("char", "bpe1000")]
  for i, run in enumerate(runs):
    (run / "checkpoints" / str(10 * (i + 1))).mkdir(parents=True)
  bare = tmp_path / "ports" / "x" / "relearn"  # a checkpoint directory itself (steps directly in it)
  (bare / "300").mkdir(parents=True)
  (tmp_path / "runs" / "c" / "decoder" / "byte" / "seed0" / "checkpoints" / "5.orbax-checkpoint-tmp").mkdir(
    parents=True
  )  # a save cut short: not a step
  (tmp_path / "compiled" / "data").mkdir(parents=True)
  (tmp_path / "compiled" / "data" / "123").write_text("a file named like a step")
  expected = sorted(str(p) for p in [*runs, bare])
  assert sorted(checkpoints.find_runs(str(tmp_path))) == expected
  assert sorted(checkpoints.find_runs(str(tmp_path / "runs"))) == sorted(str(p) for p in runs)
  assert checkpoints.find_runs(str(runs[0])) == [str(runs[0])]  # a run itself
  assert checkpoints.find_runs(str(tmp_path / "nothing")) == []
