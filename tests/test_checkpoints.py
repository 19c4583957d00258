"""Checkpoints (``llmcpu.training.checkpoints``) on tiny states, no training: a save/restore round trip is bit-exact
for every dtype, the checksum is an independent numpy recompute and refuses an array that differs from the save,
and the metadata (with the ISA's files) is read without any array."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmcpu import compilers
from llmcpu.errors import UserError
from llmcpu.models import ModelConfig
from llmcpu.training import checkpoints


def state() -> dict:
  rng = np.random.default_rng(0)
  return {
    "params": {"w": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32), "b": jnp.asarray([1.5, -2.0], jnp.bfloat16)},
    "rest": {"count": jnp.asarray([7, -3], jnp.int32), "flags": jnp.asarray([True, False])},
    "step": jnp.asarray(4, jnp.int32),
  }


@pytest.fixture(scope="module")
def byte_isa() -> compilers.Compiler:
  return compilers.train("byte", [])


def meta(compiler, step: int = 4) -> dict:
  model_config = ModelConfig(arch="decoder", vocab_size=compiler.vocab_size)
  config = {"train": {"steps": 10}, "data": {"isa": "byte"}}
  return checkpoints.make_meta(
    config=config, model_config=model_config, compiler=compiler, step=step, tokens_seen=64, data_step=step
  )


def save(directory, step: int, tree: dict, meta_: dict) -> None:
  mngr = checkpoints.manager(str(directory), async_save=False)
  checkpoints.save(mngr, step, tree, meta_, force=True)
  checkpoints.close(mngr)


def restore(directory, step: int, like: dict):
  mngr = checkpoints.manager(str(directory))
  try:
    return checkpoints.restore(mngr, step, checkpoints.abstract(like))
  finally:
    mngr.close()


def bits(tree) -> list[tuple[str, bytes]]:
  return [(str(p), np.asarray(x).tobytes()) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_round_trip_is_bit_exact_and_meta_gains_the_checksums(tmp_path, byte_isa):
  saved, m = state(), meta(byte_isa)
  save(tmp_path / "checkpoints", 4, saved, m)
  got, got_meta = restore(tmp_path / "checkpoints", 4, saved)
  assert bits(got) == bits(saved)
  assert jax.tree.map(lambda x: x.dtype, got) == jax.tree.map(lambda x: x.dtype, saved)
  assert got_meta == json.loads(json.dumps({**m, "checksums": checkpoints.checksums(saved)}))


def word_sum(words: np.ndarray) -> int:
  words = words.reshape(-1).astype(np.uint64)
  return int(np.sum(words * (2 * np.arange(words.size, dtype=np.uint64) + 1)) % 2**32)


def test_checksums_equal_a_numpy_recompute_for_narrow_dtypes_and_bools():
  s = state()
  sums = checkpoints.checksums(s)
  assert set(sums) == {"params/w", "params/b", "rest/count", "rest/flags", "step"}
  assert sums["params/w"] == word_sum(np.asarray(s["params"]["w"]).view(np.uint32))
  assert sums["params/b"] == word_sum(np.asarray(s["params"]["b"]).view(np.uint16))  # 16-bit words widened
  assert sums["rest/count"] == word_sum(np.asarray(s["rest"]["count"]).view(np.uint32))
  assert sums["rest/flags"] == word_sum(np.asarray(s["rest"]["flags"]).astype(np.uint32))
  assert sums["step"] == 4


def test_an_array_that_differs_from_the_save_is_refused_by_name(tmp_path, byte_isa, monkeypatch):
  saved = state()
  flipped = np.asarray(saved["params"]["w"]).copy()
  flipped.view(np.uint32)[2, 4] ^= 1  # the lowest mantissa bit of one weight
  good = checkpoints.checksums(saved)
  damaged = {**saved, "params": {**saved["params"], "w": jnp.asarray(flipped)}}
  assert checkpoints.damaged_arrays(damaged, {"checksums": good}) == ["params/w"]
  assert checkpoints.damaged_arrays(damaged, {}) == []  # nothing recorded (a checkpoint from before checksums)
  # Storage that hands back other bits: the checkpoint records the save's checksums and holds the flipped array.
  monkeypatch.setattr(checkpoints, "checksums", lambda _: good)
  mngr = checkpoints.manager(str(tmp_path), async_save=False)
  checkpoints.save(mngr, 4, damaged, meta(byte_isa))
  checkpoints.close(mngr)
  monkeypatch.undo()
  mngr = checkpoints.manager(str(tmp_path))
  with mngr, pytest.raises(UserError, match=r"step 4 in \S+ is damaged: array params/w differs from its checksum"):
    checkpoints.restore(mngr, 4, checkpoints.abstract(saved))


def test_the_checksum_sees_one_flipped_bit_and_a_swap():
  x = np.asarray(state()["params"]["w"])
  base = checkpoints.checksums({"x": x})["x"]
  for word in range(x.size):
    for bit in (0, 13, 31):
      y = x.copy()
      y.reshape(-1).view(np.uint32)[word] ^= np.uint32(1 << bit)
      assert checkpoints.checksums({"x": y})["x"] != base, (word, bit)
  assert checkpoints.checksums({"x": x[::-1].copy()})["x"] != base


def test_load_meta_finds_the_newest_step_from_any_path_and_reads_no_array(tmp_path, byte_isa):
  root = tmp_path / "run"
  for step in (2, 6):
    save(root / "checkpoints", step, state(), meta(byte_isa, step))
  for path in (root, root / "checkpoints"):
    assert checkpoints.load_meta(str(path))["step"] == 6
  assert checkpoints.load_meta(str(root / "checkpoints" / "2"))["step"] == 2
  (root / "checkpoints" / "6" / "state").rename(root / "checkpoints" / "6" / "gone")  # the arrays: never read
  m = checkpoints.load_meta(str(root))
  assert (m["isa_name"], m["tokens_seen"], m["arch"]) == ("byte", 64, "decoder")
  compiler = checkpoints.load_compiler(m)
  assert compiler.fingerprint == byte_isa.fingerprint and compiler.encode("hi") == byte_isa.encode("hi")
  with pytest.raises(UserError, match="checkpoint ISA files do not match its fingerprint 0000"):
    checkpoints.load_compiler({**m, "isa_fingerprint": "0000"})


def test_load_meta_refuses_what_the_trainer_did_not_write(tmp_path):
  with pytest.raises(UserError, match=r"^no checkpoint under \S+/empty; pass a training workdir"):
    (tmp_path / "empty").mkdir()
    checkpoints.load_meta(str(tmp_path / "empty"))
  save(tmp_path / "other", 1, {"x": jnp.zeros(3)}, {"format": 1})
  with pytest.raises(UserError, match=r"other/1 carries no ISA metadata; it was not written by llmcpu's trainer"):
    checkpoints.load_meta(str(tmp_path / "other"))


def test_manager_keeps_the_newest_steps(tmp_path, byte_isa):
  mngr = checkpoints.manager(str(tmp_path), keep=2, async_save=False)
  for step in (1, 2, 3):
    checkpoints.save(mngr, step, state(), meta(byte_isa, step), force=True)
  checkpoints.close(mngr)
  assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 3]
