"""Shared test setup: quiet TensorFlow, CPU JAX."""

import atexit
import dataclasses
import hashlib
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Implicit rank promotion ([B] + [B, 1] → [B, B]) is a silent shape bug: every test (and its subprocesses) raises.
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")
# One persistent compilation cache per test session, shared by the xdist workers and every subprocess a test starts
# (they inherit the environment): the same tiny steps are compiled by many tests and by each SIGTERM/resume child;
# a cache hit loads the same executable, so results are bit-identical. -27% wall time on test_trainer+test_stitching.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process of the session (xdist's controller) makes it
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="llmcpu-tests-jax-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import pydoc_data.topics  # noqa: E402

import pytest  # noqa: E402

from llmcpu import compilers, toolchain  # noqa: E402
from llmcpu.training.run_config import base_config  # noqa: E402


@dataclasses.dataclass(frozen=True)
class InMemoryCorpus:
  """The llmcpu.data.Corpus interface over in-memory documents (no TFDS): fast fixtures for trainer tests."""

  spec: str
  docs: dict  # split -> tuple of {field: str}
  fields: tuple[str, ...] = ("text",)
  label_fields: tuple[str, ...] = ()
  info: dict = dataclasses.field(default_factory=dict)
  marked: bool = False

  @property
  def name(self) -> str:
    return self.spec

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.docs)

  @property
  def fingerprint(self) -> str:
    return hashlib.sha256(repr(sorted(self.docs.items())).encode()).hexdigest()[:16]

  def documents(self, split, limit=None):
    yield from self.docs[split][:limit]


def held_out_corpus(docs, every: int, spec: str = "fake", **kw) -> InMemoryCorpus:
  """Train = the documents not held out; test = every ``every``-th document (index ≡ every − 1)."""
  docs = tuple(docs)
  test = tuple(d for i, d in enumerate(docs) if i % every == every - 1)
  train = tuple(d for i, d in enumerate(docs) if i % every != every - 1)
  return InMemoryCorpus(spec, {"train": train, "test": test}, **kw)


def write_docs(root) -> str:
  """Python's pydoc topics as text files under ``root/docs``, one long paragraph per file (~190 documents, ~1 MB,
  offline); returns their glob, for a ``text:`` corpus."""
  os.makedirs(os.path.join(root, "docs"))
  k = 0
  for text in sorted(pydoc_data.topics.topics.values()):
    for para in text.split("\n\n\n"):
      if len(para) > 300:
        with open(os.path.join(root, "docs", f"{k:04d}.txt"), "w") as f:
          f.write(para)
        k += 1
  return os.path.join(str(root), "docs", "*.txt")


def prose_corpus() -> InMemoryCorpus:
  texts = sorted(pydoc_data.topics.topics.values())
  docs = [{"text": t} for t in texts]
  return InMemoryCorpus(
    "prose", {"train": tuple(docs[:-8]), "validation": tuple(docs[-8:-4]), "test": tuple(docs[-4:])}
  )


def pairs_corpus() -> InMemoryCorpus:
  """Reverse-a-word programs (input/target), deterministic."""
  import random

  rng = random.Random(0)
  letters = "abcdefghij"

  def example():
    word = "".join(rng.choice(letters) for _ in range(rng.randint(2, 6)))
    return {"input": f"reverse {word} =", "target": word[::-1], "task": "reverse"}

  docs = {"train": tuple(example() for _ in range(800)), "validation": tuple(example() for _ in range(40))}
  docs["test"] = tuple(example() for _ in range(40))
  return InMemoryCorpus("pairs", docs, fields=("input", "target"), label_fields=("task",))


# Porting tests (test_porting, test_porting_methods): one corpus, one tiny model shape, one set of ISAs.
PORTING_TEXTS = sorted(pydoc_data.topics.topics.values())[:40]
PORTING_HELD_OUT = sorted(pydoc_data.topics.topics.values())[-1]
# Learned positions: one more [max_len, D] matrix that must be copied, not mistaken for a vocabulary table.
PORTING_TINY = dict(d_model=32, num_heads=2, d_ff=64, num_layers=1, max_len=64, positions="learned")


@pytest.fixture(scope="session")
def porting_isas() -> dict:
  """bpe:400 (about the smallest BPE these texts allow: their characters alone need 382 ids), a fully permuted copy,
  bpe:600 and byte."""
  small = compilers.train("bpe:400", PORTING_TEXTS)
  return {
    "small": small,
    "perm": compilers.train("bpe:400+perm:1", base=small),
    "big": compilers.train("bpe:600", PORTING_TEXTS),
    "byte": compilers.train("byte"),
  }


@pytest.fixture(scope="session")
def compile_dir(tmp_path_factory) -> str:
  """Prose and pairs corpora compiled by bpe:600 and byte (compilers trained on the prose)."""
  workdir = str(tmp_path_factory.mktemp("compiled"))
  prose, pairs = prose_corpus(), pairs_corpus()
  built = toolchain.build_compilers(compilers.parse_list("bpe:600,byte"), [prose], workdir, log=lambda _: None)
  toolchain.compile_corpora([prose, pairs], built, workdir, log=lambda _: None)
  return workdir


def tiny_config(arch: str, compile_dir: str, **overrides):
  """A tiny, quick training config on the compiled fixtures; overrides are dotted keys, e.g. train__steps=5."""
  c = base_config(arch, "tiny")
  c.data.compile_dir = compile_dir
  c.data.corpus = "pairs" if arch == "encoder_decoder" else "prose"
  c.data.isa = "bpe:600"
  c.data.length = 64
  c.data.input_length = 16
  c.data.target_length = 8
  c.model.d_model = 32
  c.model.num_heads = 2
  c.model.d_ff = 64
  c.model.max_len = 64
  c.train.steps = 12
  c.train.batch_size = 8
  c.train.learning_rate = 1e-2
  c.train.warmup_steps = 2
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.peak_tflops = 1.0
  c.checkpoint.every = 4
  c.checkpoint.async_save = False
  for key, value in overrides.items():
    block, name = key.split("__") if "__" in key else (None, key)
    (c[block] if block else c)[name] = value
  return c


class FakeGcs:
  """``gs://fake-bucket/…`` kept in a local directory, so code written for buckets runs in tests.

  ``llmcpu.fs`` reaches it through the tf.io.gfile API (the same calls it makes for a real gs:// path); orbax,
  whose own gs:// support is orbax's, and TensorBoard's writer are handed the local directory. Every URI it serves
  is recorded; a local-only call on a gs:// string would instead create ``./gs:`` or fail."""

  PREFIX = "gs://fake-bucket"

  def __init__(self, root: str):
    import tensorflow as tf

    self.root, self.served, self._gfile = root, set(), tf.io.gfile

  def local(self, path) -> str:
    path = os.fspath(path)
    if not path.startswith(self.PREFIX):
      raise AssertionError(f"the fake bucket was handed {path!r}")
    self.served.add(path)
    return self.root + path[len(self.PREFIX) :]

  def _call(self, name: str, path, *args, **kwargs):
    fn = getattr(self._gfile, name)
    if not os.fspath(path).startswith(self.PREFIX):  # another URI scheme (ram://): the real gfile
      return fn(path, *args, **kwargs)
    return fn(self.local(path), *args, **kwargs)

  def exists(self, p):
    return self._call("exists", p)

  def isdir(self, p):
    return self._call("isdir", p)

  def makedirs(self, p):
    return self._call("makedirs", p)

  def listdir(self, p):
    return self._call("listdir", p)

  def remove(self, p):
    return self._call("remove", p)

  def rmtree(self, p):
    return self._call("rmtree", p)

  def stat(self, p):
    return self._call("stat", p)

  def GFile(self, p, mode="r"):  # noqa: N802 - tf.io.gfile's name
    return self._call("GFile", p, mode)

  def glob(self, pattern):
    found = self._call("glob", pattern)
    if not os.fspath(pattern).startswith(self.PREFIX):
      return found
    return [self.PREFIX + p[len(self.root) :] for p in found]


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch) -> FakeGcs:
  import orbax.checkpoint as ocp
  import tensorflow as tf

  from llmcpu import fs

  bucket = FakeGcs(str(tmp_path / "bucket"))
  os.makedirs(bucket.root)
  monkeypatch.setattr(fs, "_gfile", lambda: bucket)
  manager, writer = ocp.CheckpointManager, tf.summary.create_file_writer
  monkeypatch.setattr(ocp, "CheckpointManager", lambda directory, *a, **k: manager(bucket.local(directory), *a, **k))
  monkeypatch.setattr(tf.summary, "create_file_writer", lambda logdir, *a, **k: writer(bucket.local(logdir), *a, **k))
  monkeypatch.chdir(tmp_path)  # a gs:// string taken for a local path would show up here as ./gs:
  return bucket
