"""Fault injection: damaged checkpoints, a full disk, Ctrl-C mid-compile, and scripts/verify.py over all of it.

Each fault is made for real where the machine allows it: bits flipped and files truncated on disk, a size-limited
tmpfs (``unshare -rm``: a private mount namespace, no root needed where user namespaces are enabled) for a full disk,
a real SIGINT to a compile that is mid-split.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import tiny_config, write_docs

from llmcpu import compilers, data, integrity, toolchain
from llmcpu.errors import UserError
from llmcpu.training import checkpoints, trainer

ROOT = os.path.join(os.path.dirname(__file__), "..")
SCRIPTS = os.path.join(ROOT, "scripts")
CONFIG = """
from conftest import tiny_config


def get_config():
  return tiny_config("decoder", {compile_dir!r}, **{overrides!r})
"""


def cli_config(tmp_path, compile_dir, **overrides) -> str:
  """A --config file for scripts/train.py holding ``tiny_config`` (tests/ is on the child's PYTHONPATH)."""
  path = tmp_path / "tiny_config.py"
  path.write_text(CONFIG.format(compile_dir=compile_dir, overrides=overrides))
  return str(path)


def child_env() -> dict:
  tests = os.path.dirname(__file__)
  return dict(os.environ, PYTHONPATH=os.pathsep.join([tests, ROOT, os.environ.get("PYTHONPATH", "")]))


def one_error_line(stderr: str, pattern: str) -> None:
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
  assert pattern in lines[0], stderr


def params(workdir: str) -> list[np.ndarray]:
  from flax import nnx

  model, _, _ = checkpoints.load_model(workdir)
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def largest_array_file(step_dir: str) -> str:
  files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*"))
  return max(files, key=os.path.getsize)


def quiet(_):
  pass


@pytest.fixture(scope="module")
def trained(compile_dir, tmp_path_factory):
  """A finished tiny decoder run (checkpoints at steps 8 and 12) to copy and damage."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  trainer.train(tiny_config("decoder", compile_dir), workdir, log=quiet)
  return workdir


def damaged_copy(trained, tmp_path) -> str:
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  return workdir


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: every array is checked against the checksum recorded at save.
# ---------------------------------------------------------------------------------------------------------------


def test_checksums_match_an_independent_recompute_and_see_one_bit():
  x = jax.numpy.arange(12, dtype=jax.numpy.float32).reshape(3, 4)
  sums = checkpoints.checksums({"a": x, "b": x.astype(jax.numpy.bfloat16)})
  assert set(sums) == {"a", "b"}
  flipped = np.asarray(x).copy()
  flipped.view(np.uint32)[1, 2] ^= 1 << 30
  assert checkpoints.checksums({"a": flipped})["a"] != sums["a"]
  swapped = np.asarray(x)[::-1].copy()
  assert checkpoints.checksums({"a": swapped})["a"] != sums["a"]
  # An independent recompute: sum of word · (2i + 1) mod 2³² over the float32 bits in C order.
  words = np.asarray(x).view(np.uint32).reshape(-1).astype(np.uint64)
  want = int(np.sum(words * (2 * np.arange(words.size, dtype=np.uint64) + 1)) % 2**32)
  assert sums["a"] == want


def test_a_bit_flipped_on_disk_is_refused_everywhere(trained, compile_dir, tmp_path):
  workdir = damaged_copy(trained, tmp_path)
  path = largest_array_file(os.path.join(workdir, "checkpoints", "12"))
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(path, "wb").write(data)
  config = tiny_config("decoder", compile_dir, train__steps=16)
  with pytest.raises(UserError, match=r"checkpoint step 12 in \S+ (is damaged|\(cannot restore)|cannot restore"):
    trainer.train(config, workdir, log=quiet)
  # What cross_eval loads through reads the model's arrays only (not the optimizer's moments): it refuses the step
  # when the flipped bit is in what it reads, and otherwise returns exactly the weights that were saved.
  try:
    model, _, _ = checkpoints.load_model(workdir)
  except UserError as e:
    assert "step 12" in str(e)
  else:
    intact, _, _ = checkpoints.load_model(trained)
    assert jax.tree.all(jax.tree.map(np.array_equal, nnx_params(model), nnx_params(intact)))
  found = {os.path.basename(f.path): f.ok for f in integrity.verify(workdir)}
  assert found == {"8": True, "12": False}


def test_bits_that_orbax_reads_back_fine_but_differ_from_the_save_are_refused(trained, tmp_path, monkeypatch):
  """Storage that returns other bits without an error: orbax restores them; the checksum does not."""
  workdir = damaged_copy(trained, tmp_path)
  directory, step = checkpoints.find(workdir)
  model, meta, _ = checkpoints.load_model(workdir)
  mngr = checkpoints.manager(directory, async_save=False)
  state = {"params": nnx_params(model), "rest": nnx_rest(model)}
  good = checkpoints.checksums(state)
  leaf = jax.tree.leaves(state)[0]
  bad_leaf = np.asarray(leaf).copy()
  bad_leaf.reshape(-1).view(np.uint32)[0] ^= 1  # the lowest mantissa bit of one weight
  state = jax.tree.map(lambda x: bad_leaf if x is leaf else x, state)
  monkeypatch.setattr(checkpoints, "checksums", lambda _: good)  # recorded: the bits before the storage fault
  checkpoints.save(mngr, step + 1, state, meta)
  mngr.close()
  monkeypatch.undo()
  mngr = checkpoints.manager(directory)
  with pytest.raises(
    UserError, match=rf"step {step + 1} in \S+ is damaged: array params/\S+ differs from its checksum"
  ):
    checkpoints.restore(mngr, step + 1, checkpoints.abstract(jax.tree.map(jax.numpy.asarray, state)))
  mngr.close()
  with pytest.raises(UserError, match=rf"step {step + 1} in \S+ is damaged: array params/\S+ differs"):
    checkpoints.load_model(workdir)  # the model's arrays only, checked all the same


def nnx_params(model):
  from flax import nnx

  return nnx.state(model, nnx.Param)


def nnx_rest(model):
  from flax import nnx

  return nnx.state(model, nnx.Not(nnx.Param))


def test_resume_from_a_truncated_array_is_one_line_and_the_earlier_step_resumes(trained, compile_dir, tmp_path):
  workdir = damaged_copy(trained, tmp_path)
  step_dir = os.path.join(workdir, "checkpoints", "12")
  path = largest_array_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)
  config = cli_config(tmp_path, compile_dir, train__steps=16)
  out = subprocess.run(
    [sys.executable, f"{SCRIPTS}/train.py", f"--config={config}", f"--workdir={workdir}"],
    capture_output=True,
    text=True,
    env=child_env(),
  )
  assert out.returncode == 1, out.stderr
  one_error_line(out.stderr, f"cannot restore checkpoint step 12 in {workdir}/checkpoints")
  assert f"delete {step_dir} to fall back to an earlier step" in out.stderr
  shutil.rmtree(step_dir)  # what the line says to do: training resumes from step 8 and ends where it would have
  trainer.train(tiny_config("decoder", compile_dir), workdir, log=quiet)
  for a, b in zip(params(workdir), params(trained), strict=True):
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# A full disk: a real size-limited file system, grown afterwards as a user would free space.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
  """Runs a shell script with $DISK a tmpfs of the given size in a private mount namespace; ``grow`` (a shell
  function in the script) makes it 64 MiB. Skips where unprivileged mount namespaces are not available."""
  probe = tmp_path_factory.mktemp("probe")
  ok = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], check=False)
  if shutil.which("unshare") is None or ok.returncode != 0:
    pytest.skip("needs `unshare -rm` (unprivileged mount namespaces) for a size-limited tmpfs")

  def run(tmp_path, size_kb: int, script: str) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    prelude = (
      f'DISK={disk}; grow() {{ mount -o remount,size=64m "$DISK"; }}; mount -t tmpfs -o size={size_kb}k tmpfs "$DISK"\n'
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", prelude + script], check=True, env=child_env(), timeout=600)

  return run


def read(tmp_path, name: str) -> str:
  return (tmp_path / name).read_text()


def test_disk_full_during_a_checkpoint_save_is_one_line_and_resumes_bit_identically(
  small_disk, trained, compile_dir, tmp_path
):
  config = cli_config(tmp_path, compile_dir)
  train = f'{sys.executable} {SCRIPTS}/train.py --config={config} --workdir="$DISK/run"'
  small_disk(
    tmp_path,
    600,  # a checkpoint of the tiny model is ~0.3-0.5 MB: the first or second save runs out of space
    f"""
    {train} >{tmp_path}/1.out 2>{tmp_path}/1.err; echo $? >{tmp_path}/1.rc
    grow
    {train} >{tmp_path}/2.out 2>{tmp_path}/2.err; echo $? >{tmp_path}/2.rc
    cp -r "$DISK/run" {tmp_path}/run
    """,
  )
  assert read(tmp_path, "1.rc").strip() == "1", read(tmp_path, "1.err")
  one_error_line(read(tmp_path, "1.err"), f"disk full while saving a checkpoint in {tmp_path}/disk/run/checkpoints")
  assert "rerun the same command" in read(tmp_path, "1.err")
  assert read(tmp_path, "2.rc").strip() == "0", read(tmp_path, "2.err")
  for a, b in zip(params(str(tmp_path / "run")), params(trained), strict=True):
    np.testing.assert_array_equal(a, b)


def test_disk_full_during_compile_is_one_line_and_leaves_nothing_that_looks_valid(small_disk, tmp_path):
  docs = write_docs(tmp_path)
  compile_cmd = f"{sys.executable} {SCRIPTS}/compile.py --config.corpus='text:{docs}' --config.compilers=bpe:600,byte "
  compile_cmd += '--workdir="$DISK/c"'
  verify = f'{sys.executable} {SCRIPTS}/verify.py "$DISK/c"'
  small_disk(
    tmp_path,
    1024,  # room for the compilers and part of the first split
    f"""
    {compile_cmd} >{tmp_path}/1.out 2>{tmp_path}/1.err; echo $? >{tmp_path}/1.rc
    {verify} >{tmp_path}/v1.out 2>&1; echo $? >{tmp_path}/v1.rc
    grow
    {compile_cmd} >{tmp_path}/2.out 2>{tmp_path}/2.err; echo $? >{tmp_path}/2.rc
    {verify} >{tmp_path}/v2.out 2>&1; echo $? >{tmp_path}/v2.rc
    """,
  )
  assert read(tmp_path, "1.rc").strip() == "1", read(tmp_path, "1.err")
  one_error_line(read(tmp_path, "1.err"), "disk full")
  assert read(tmp_path, "v1.rc").strip() == "0", read(tmp_path, "v1.out")  # what is there is whole
  assert read(tmp_path, "2.rc").strip() == "0", read(tmp_path, "2.err")
  assert "cached" in read(tmp_path, "2.out")  # the compilers (at least) were kept
  assert read(tmp_path, "v2.rc").strip() == "0" and "8 items: 8 ok, 0 damaged" in read(tmp_path, "v2.out")


# ---------------------------------------------------------------------------------------------------------------
# Ctrl-C in the middle of a compile.
# ---------------------------------------------------------------------------------------------------------------

SLOW_COMPILE = """
import runpy, signal, sys, time
from llmcpu.data import corpora

signal.signal(signal.SIGINT, signal.default_int_handler)  # a background shell's children start with SIGINT ignored

documents = corpora.Corpus.documents


def slow(self, split, limit=None):  # held-out documents arrive slowly: a signal lands mid-split
  for doc in documents(self, split, limit):
    if split != "train":
      time.sleep(2.0)  # slack for a loaded machine: the parent must signal before the split ends
    yield doc


corpora.Corpus.documents = slow
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_sigint_during_compile_is_one_line_and_the_rerun_finishes_the_same(tmp_path):
  docs = write_docs(tmp_path)
  args = [f"--config.corpus=text:{docs}", "--config.compilers=bpe:600"]
  proc = subprocess.Popen(
    [sys.executable, "-c", SLOW_COMPILE, f"{SCRIPTS}/compile.py", *args, f"--workdir={tmp_path}/c"],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=child_env(),
  )
  for line in proc.stdout:
    if line.startswith("[1/3]") and "tokens in" in line:  # train split done, validation under way
      break
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  one_error_line(err, "interrupted; finished work is kept")
  corpus = data.load_corpus(f"text:{docs}")
  found = {(f.kind, f.path.rsplit("/", 1)[-1]): f.ok for f in integrity.verify(f"{tmp_path}/c")}
  assert found == {("compiler", "bpe600"): True, ("compiled", "train"): True}  # nothing half-written counts
  logs = []
  built = toolchain.build_compilers(compilers.parse_list("bpe:600"), [corpus], f"{tmp_path}/c", log=logs.append)
  toolchain.compile_corpora([corpus], built, f"{tmp_path}/c", log=logs.append)
  assert sum("cached" in line for line in logs) == 2, logs  # the compiler and the train split
  clean = toolchain.build_compilers(compilers.parse_list("bpe:600"), [corpus], f"{tmp_path}/clean", log=quiet)
  toolchain.compile_corpora([corpus], clean, f"{tmp_path}/clean", log=quiet)
  for split in corpus.splits:
    a, b = (
      json.load(open(toolchain.split_dir(f"{tmp_path}/{d}", corpus.name, "bpe600", split) + "/manifest.json"))
      for d in ("c", "clean")
    )
    assert a["files"] == b["files"]


# ---------------------------------------------------------------------------------------------------------------
# scripts/verify.py: one line per item, exit 1 when anything is damaged.
# ---------------------------------------------------------------------------------------------------------------


def test_verify_names_each_damaged_item_and_how_to_rebuild_it(trained, compile_dir, tmp_path):
  work = tmp_path / "copy"
  shutil.copytree(compile_dir, work / "compiled")
  shutil.copytree(trained, work / "run")
  ok = subprocess.run([sys.executable, f"{SCRIPTS}/verify.py", str(work)], capture_output=True, text=True)
  assert ok.returncode == 0 and ok.stdout.splitlines()[-1] == "16 items: 16 ok, 0 damaged", ok.stdout + ok.stderr
  c = work / "compiled"
  with open(c / "compilers/bpe600/spm.model", "r+b") as f:  # one byte of a piece's score
    f.seek(200)
    byte = f.read(1)
    f.seek(200)
    f.write(bytes([byte[0] ^ 0x01]))
  os.truncate(c / "data/prose/byte/train/text.tokens.npy", 1000)
  shutil.rmtree(c / "data/pairs/byte/test")  # a foreign split in its place: built by bpe600
  shutil.copytree(c / "data/pairs/bpe600/test", c / "data/pairs/byte/test")
  out = subprocess.run([sys.executable, f"{SCRIPTS}/verify.py", str(work)], capture_output=True, text=True)
  assert out.returncode == 1, out.stdout + out.stderr
  damaged = [line for line in out.stdout.splitlines() if line.startswith("damaged")]
  assert len(damaged) == 3 and out.stdout.splitlines()[-1] == "16 items: 13 ok, 3 damaged", out.stdout
  assert "compilers/bpe600: compiler model" in damaged[0] and "scripts/compile.py --config.rebuild" in damaged[0]
  assert "pairs/byte/test: built by ISA" in damaged[1] and "rerun scripts/compile.py" in damaged[1]
  assert "prose/byte/train: text.tokens.npy has 1000 bytes" in damaged[2] and "delete " in damaged[2]


def test_verify_bad_input_is_one_line(tmp_path):
  for arg, pattern in [(tmp_path / "nope", "is not a directory"), (tmp_path, "nothing to verify under")]:
    out = subprocess.run([sys.executable, f"{SCRIPTS}/verify.py", str(arg)], capture_output=True, text=True)
    assert out.returncode == 1
    one_error_line(out.stderr, pattern)
