"""Files in a bucket: llmcpu.fs on TensorFlow's in-memory filesystem (ram://, the gfile code path gs:// takes), the
compile cache there, faults mid-write, and many processes sharing one compile directory."""

import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from llmcpu import compilers, fs, toolchain
from llmcpu.data import compiled

DOCS = [f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 5) for i in range(40)]


def _bucket() -> str:
  return f"ram://llmcpu-test-{uuid.uuid4().hex[:8]}"


def test_files_in_a_bucket():
  root = _bucket()
  fs.makedirs(fs.join(root, "a", "b"))
  fs.write_text(fs.join(root, "a", "b", "x.json"), '{"k": 1}')
  fs.write_bytes(fs.join(root, "a", "y.bin"), b"\x00\xff")
  arr = np.arange(7, dtype=np.int64) * 3
  fs.save_npy(fs.join(root, "a", "z.npy"), arr)
  assert json.loads(fs.read_text(fs.join(root, "a", "b", "x.json"))) == {"k": 1}
  assert fs.read_bytes(fs.join(root, "a", "y.bin")) == b"\x00\xff"
  assert np.array_equal(fs.load_npy(fs.join(root, "a", "z.npy"), mmap=True), arr)  # read whole: no mmap in a bucket
  assert fs.listdir(fs.join(root, "a")) == ["b", "y.bin", "z.npy"] and fs.listdir(fs.join(root, "nope")) == []
  assert fs.isdir(fs.join(root, "a", "b")) and fs.isfile(fs.join(root, "a", "y.bin"))
  assert fs.glob(fs.join(root, "a", "*.npy")) == [fs.join(root, "a", "z.npy")]
  assert fs.stat(fs.join(root, "a", "y.bin"))[0] == 2
  assert fs.abspath(root + "/a") == root + "/a" and fs.dirname(root + "/a/b/") == root + "/a"
  fs.remove(fs.join(root, "a", "y.bin"))
  fs.remove(fs.join(root, "a", "y.bin"))  # already gone: fine
  fs.rmtree(fs.join(root, "a"))
  assert not fs.exists(fs.join(root, "a", "b", "x.json"))


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_staged_directory_is_valid_only_when_its_marker_is_written(tmp_path, where):
  root = str(tmp_path) if where == "local" else _bucket()
  path = fs.join(root, "split")
  with fs.staged(path, "manifest.json") as out:
    fs.write_text(fs.join(out, "data"), "v1")
    fs.write_text(fs.join(out, "manifest.json"), "{}")
  assert fs.read_text(fs.join(path, "data")) == "v1" and fs.exists(fs.join(path, "manifest.json"))
  with pytest.raises(KeyboardInterrupt), fs.staged(path, "manifest.json") as out:  # a rewrite dies mid-write
    fs.write_text(fs.join(out, "data"), "v2-partial")
    raise KeyboardInterrupt
  if where == "local":  # the old directory is untouched; the temporary one is gone
    assert fs.read_text(fs.join(path, "data")) == "v1" and fs.listdir(root) == ["split"]
  else:  # no rename in a bucket: the directory stops looking valid
    assert not fs.exists(fs.join(path, "manifest.json"))


def test_compile_cache_in_a_bucket(monkeypatch):
  from conftest import InMemoryCorpus

  root = fs.join(_bucket(), "compiled")
  texts = tuple({"text": d} for d in DOCS)
  corpus = InMemoryCorpus("fake", {"train": texts, "test": texts[::4]})
  specs = compilers.parse_list("char,char+perm:1,byte")
  built = toolchain.build_compilers(specs, [corpus], root, log=lambda m: None)
  toolchain.compile_corpora([corpus], built, root, log=lambda m: None)
  for c in built:
    split = toolchain.load_split(root, "fake", c, "test")
    assert [c.decode(split.fields["text"].doc(i)) for i in range(split.num_docs)] == DOCS[::4]
    assert compilers.load(toolchain.compiler_dir(root, c.name)).fingerprint == c.fingerprint
  assert toolchain.find_corpus_name(root, "fake", built[0]) == "fake"
  logs: list[str] = []
  again = toolchain.build_compilers(specs, [corpus], root, log=logs.append)
  toolchain.compile_corpora([corpus], again, root, log=logs.append)
  assert all("cached" in line for line in logs) and len(logs) == 3 + 6

  # A fault in the middle of rewriting a split: the split no longer reads as compiled, and the next run rebuilds it.
  path = toolchain.split_dir(root, "fake", "char", "train")  # the first split compiled; it dies at its second array
  real, calls = fs.write_bytes, []

  def dying(p, a):
    calls.append(p)
    if len(calls) == 2:
      raise KeyboardInterrupt
    real(p, a)

  monkeypatch.setattr(fs, "write_bytes", dying)
  with pytest.raises(KeyboardInterrupt):
    toolchain.compile_corpora([corpus], built, root, rebuild=True, log=lambda m: None)
  assert compiled.read_manifest(path) is None
  monkeypatch.setattr(fs, "write_bytes", real)
  logs.clear()
  toolchain.compile_corpora([corpus], built, root, log=logs.append)
  assert [line.split(":")[0] for line in logs if "cached" not in line] == ["[1/6] fake/char/train"] * 2


_WORKER = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import InMemoryCorpus
from llmcpu import compilers, toolchain
toolchain.WAIT_POLL_S, toolchain.WAIT_LOG_S = 0.1, 0.5
docs = {docs!r}
texts = tuple({{"text": d}} for d in docs)
corpus = InMemoryCorpus("fake", {{"train": texts, "test": texts[::4]}})
log = lambda m: print(m, flush=True)
specs = compilers.parse_list("char,char+perm:1")
built = toolchain.build_compilers(specs, [corpus], {root!r}, leader={leader}, log=log)
toolchain.compile_corpora([corpus], built, {root!r}, leader={leader}, log=log)
print(json.dumps([c.fingerprint for c in built]), flush=True)
"""


def test_processes_share_one_compile_directory(tmp_path):
  """Process 1 starts first and waits; process 0 compiles; both end with the same ISAs, compiled once."""
  root = str(tmp_path / "compiled")
  env = dict(os.environ, JAX_PLATFORMS="cpu")

  def start(leader: bool) -> subprocess.Popen:
    code = _WORKER.format(tests=os.path.dirname(__file__), docs=DOCS, root=root, leader=leader)
    return subprocess.Popen(
      [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )

  follower = start(leader=False)
  time.sleep(3)  # the follower is polling an empty directory by now
  leader = start(leader=True)
  try:
    out_leader, _ = leader.communicate(timeout=120)
    assert leader.returncode == 0, out_leader
    out_follower, _ = follower.communicate(timeout=60)
  finally:
    for p in (leader, follower):
      p.kill()
  assert leader.returncode == 0 and follower.returncode == 0, out_leader + out_follower
  assert json.loads(out_leader.splitlines()[-1]) == json.loads(out_follower.splitlines()[-1])
  assert "waiting for process 0" in out_follower and "training" not in out_follower and "built" not in out_follower
  assert "compiler char: training" in out_leader


_POD_WORKER = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import InMemoryCorpus
from llmcpu import compilers, toolchain
from llmcpu.training import parallel
parallel.initialize({coordinator!r}, 2, {index}, auto=False)
import jax
toolchain.WAIT_POLL_S, toolchain.WAIT_LOG_S = 0.1, 0.5
docs = {docs!r}
texts = tuple({{"text": d}} for d in docs)
corpus = InMemoryCorpus("fake", {{"train": texts, "test": texts[::4]}})
log = lambda m: print(m, flush=True)
for root in {roots!r}:
  shared = parallel.shared_directory(root)
  leader = not shared or jax.process_index() == 0
  built = toolchain.build_compilers(compilers.parse_list("char"), [corpus], root, leader=leader, log=log)
  toolchain.compile_corpora([corpus], built, root, leader=leader, log=log)
  print("RESULT " + json.dumps({{"root": root, "shared": shared, "isa": built[0].fingerprint}}), flush=True)
"""


def test_pod_processes_find_whether_they_share_the_compile_directory(tmp_path):
  """Two processes under jax.distributed: on one directory process 1 waits for process 0's compile; each on its
  own directory (a worker's local disk) each compiles its own, instead of waiting for something it cannot see."""
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    coordinator = f"127.0.0.1:{s.getsockname()[1]}"
  shared, own = str(tmp_path / "shared"), [str(tmp_path / f"disk{i}") for i in (0, 1)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = []
  for i in (0, 1):
    code = _POD_WORKER.format(
      tests=os.path.dirname(__file__), coordinator=coordinator, index=i, docs=DOCS, roots=[shared, own[i]]
    )
    procs.append(
      subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
      )
    )
  try:
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], outs
  results = [[json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")] for out in outs]
  assert [[r["shared"] for r in rs] for rs in results] == [[True, True], [True, False]]
  assert len({r["isa"] for rs in results for r in rs}) == 1  # one ISA everywhere (deterministic training)
  follower = outs[1].split("RESULT ")[0]  # process 1 on the shared directory: waited, trained nothing
  assert "training" not in follower and "built" not in follower
  assert "compiler char: training" in outs[1].split("RESULT ")[1]  # on its own disk it compiles for itself
  for root in [shared, *own]:
    assert not [n for n in os.listdir(root) if n.startswith(".process0-")]  # the token is cleaned up
