"""Generation (``llmcpu.models.decoding``) against naive references. Complements tests/test_models.py (cached steps
against the full forward pass, one-pass argmax checks, EOS, reproducible sampling, filter_logits top-k and top-p each
alone): here greedy generation equals a naive loop that re-runs the whole forward pass on each row alone, sampling
follows the numpy-filtered softmax, both filters together match numpy, and bad inputs are refused in one line."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import llmcpu.models as models
from llmcpu.errors import UserError
from llmcpu.specials import BOS_ID, PAD_ID, UNK_ID

V = 40


@pytest.fixture(scope="module")
def dec():
  return models.create("decoder", "tiny", V, seed=5, d_model=32, num_heads=2, num_layers=1, d_ff=64)


@pytest.fixture(scope="module")
def encdec():
  return models.create("encoder_decoder", "tiny", V, seed=6, d_model=32, num_heads=2, num_layers=2, d_ff=64)


WIDTH = 16  # every naive forward pass runs on one [1, WIDTH] row: one compile


@functools.partial(jax.jit, static_argnames="graphdef")
def _forward(graphdef, state, *args):
  return nnx.merge(graphdef, state, copy=True)(*args)


def forward(model, *rows: list[int]) -> np.ndarray:
  """Logits of a full forward pass over each row, right-filled to WIDTH with UNK: the model is causal, so the
  logits at the row's own positions are those of the row alone."""
  graphdef, state = nnx.split(model)
  padded = [jnp.asarray([r + [UNK_ID] * (WIDTH - len(r))], jnp.int32) for r in rows]
  return np.asarray(_forward(graphdef, state, *padded))[0]


def naive_greedy(model, prompt: list[int], steps: int) -> list[int]:
  """One row alone, no padding, no cache: each token is the argmax of a full forward pass over everything so far."""
  seq = list(prompt)
  for _ in range(steps):
    seq.append(int(forward(model, seq)[len(seq) - 1].argmax()))
  return seq[len(prompt) :]


def test_greedy_equals_a_naive_argmax_loop_per_row(dec):
  rows = [[BOS_ID, 7, 12, 30], [BOS_ID, 9], [BOS_ID, 21, 5, 8, 33, 17]]
  width = max(map(len, rows))
  prompts = np.full((len(rows), width), PAD_ID, np.int32)
  for i, r in enumerate(rows):
    prompts[i, : len(r)] = r
  got = np.asarray(models.generate(dec, prompts, 5, eos_id=-1))
  assert got.tolist() == [naive_greedy(dec, r, 5) for r in rows]


def test_encoder_decoder_greedy_equals_a_naive_loop(encdec):
  source = np.array([[11, 12, 13, 14], [20, 21, PAD_ID, PAD_ID]], np.int32)
  got = np.asarray(models.generate(encdec, source, 4, eos_id=-1))
  for row, src in zip(got, source, strict=True):
    graphdef, state = nnx.split(encdec)
    src = jnp.asarray(src[src != PAD_ID][None])  # the source alone, no padding
    out = [BOS_ID]
    for _ in range(4):
      target = jnp.asarray([out + [UNK_ID] * (WIDTH - len(out))], jnp.int32)  # causal decoder: the fill is unseen
      out.append(int(np.asarray(_forward(graphdef, state, src, target))[0, len(out) - 1].argmax()))
    assert row.tolist() == out[1:]


def test_encoder_decoder_with_a_decoder_prompt_equals_a_naive_loop(encdec):
  """``decoder_prompt`` (the decoder context of ``ModelConfig.decoder_context``): rows of different prompt lengths,
  one empty, are left-padded into one prefill; each row's greedy ids equal a loop of full forward passes over the
  row alone whose decoder reads [BOS] + its prompt + what it wrote. An id the model does not know reads as its UNK."""
  source = np.array([[11, 12, 13, 14], [20, 21, PAD_ID, PAD_ID], [30, 31, 32, PAD_ID]], np.int32)
  prompts = [[13, 14], [], [31, 32 + V]]  # row 2's last id is illegal: read as UNK
  got = np.asarray(models.generate(encdec, source, 4, eos_id=-1, decoder_prompt=prompts))
  graphdef, state = nnx.split(encdec)
  for row, src, prompt in zip(got, source, prompts, strict=True):
    src = jnp.asarray(src[src != PAD_ID][None])
    out = [BOS_ID, *[t if t < V else UNK_ID for t in prompt]]
    start = len(out)
    for _ in range(4):
      target = jnp.asarray([out + [UNK_ID] * (WIDTH - len(out))], jnp.int32)
      out.append(int(np.asarray(_forward(graphdef, state, src, target))[0, len(out) - 1].argmax()))
    assert row.tolist() == out[start:]
  with pytest.raises(UserError, match="decoder_prompt has 1 rows for 3 sources"):
    models.generate(encdec, source, 4, decoder_prompt=[[1]])


def numpy_filter(row: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
  """Keep mask: the top_k largest, then the smallest prefix (by probability among those) reaching top_p."""
  order = np.argsort(-row, kind="stable")
  kept = order[:top_k] if top_k else order
  p = np.exp(row[kept] - row[kept].max())
  p /= p.sum()
  n = int(np.searchsorted(np.cumsum(p), top_p) + 1) if top_p < 1 else len(kept)
  mask = np.zeros(row.shape, bool)
  mask[kept[:n]] = True
  return mask


def test_filter_logits_top_k_and_top_p_together_against_numpy():
  logits = np.random.default_rng(1).normal(size=(6, 30)).astype(np.float32) * 2
  for top_k, top_p in [(8, 0.5), (3, 0.99), (12, 0.2), (30, 0.7), (0, 0.3)]:
    got = np.asarray(models.filter_logits(jnp.asarray(logits), top_k=top_k, top_p=top_p))
    for row, g in zip(logits, got, strict=True):
      mask = numpy_filter(row, top_k, top_p)
      assert (np.isfinite(g) == mask).all(), (top_k, top_p)
      np.testing.assert_array_equal(g[mask], row[mask])  # kept logits are untouched
  # top_p as a traced array (what the jitted sampler passes) filters the same way
  same = models.filter_logits(jnp.asarray(logits), top_k=8, top_p=jnp.float32(0.5))
  np.testing.assert_array_equal(
    np.asarray(same), np.asarray(models.filter_logits(jnp.asarray(logits), top_k=8, top_p=0.5))
  )


def test_sampling_follows_the_filtered_softmax(dec):
  rows, temperature, top_k = 4000, 0.7, 6
  prompt = np.array([[BOS_ID, 7, 12]], np.int32)
  logits = forward(dec, prompt[0].tolist())[prompt.shape[1] - 1].astype(np.float64) / temperature
  mask = numpy_filter(logits, top_k, 1.0)
  want = np.where(mask, np.exp(logits - logits.max()), 0.0)
  want /= want.sum()
  out = np.asarray(models.generate(dec, np.repeat(prompt, rows, 0), 1, temperature=temperature, top_k=top_k, seed=3))
  freq = np.bincount(out[:, 0], minlength=V) / rows
  assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(mask))  # nothing outside the top-k is ever drawn
  np.testing.assert_allclose(freq, want, atol=4 * np.sqrt(0.25 / rows))  # 4 standard errors at worst
  greedy = np.asarray(models.generate(dec, prompt, 1, temperature=1.0, top_k=1, seed=9))
  assert int(greedy[0, 0]) == int(logits.argmax())  # top_k=1 sampling is greedy


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    (dict(max_new_tokens=0), r"^bad decoding options: max_new_tokens=0 \(>0\)"),
    (dict(temperature=-1.0), r"^bad decoding options: .*temperature=-1.0 \(>=0\)"),
    (dict(top_p=0.0), r"^bad decoding options: .*top_p=0.0 \(0<p<=1\)$"),
    (dict(top_k=V + 1), rf"^bad decoding options: .*top_k={V + 1} \(0..vocab\)"),
    (dict(prompt_lengths=[2, 9]), r"^prompt_lengths \[2, 9\] do not fit prompts of shape \(2, 3\)$"),
  ],
)
def test_bad_options_are_refused_in_one_line(dec, kwargs, message):
  prompts = np.array([[BOS_ID, 4, 5], [BOS_ID, 6, PAD_ID]], np.int32)
  kwargs = {"max_new_tokens": 2, **kwargs}
  with pytest.raises(UserError, match=message):
    models.generate(dec, prompts, **kwargs)


def test_bad_prompts_are_refused_in_one_line(dec):
  with pytest.raises(UserError, match=r"^prompt_ids must be integer ids of shape \[batch, length\], got float32\[2\]$"):
    models.generate(dec, np.zeros(2, np.float32), 2)
  with pytest.raises(UserError, match=r"^prompt rows \[1\] are empty; start every prompt with BOS$"):
    models.generate(dec, np.array([[BOS_ID, 4], [PAD_ID, PAD_ID]]), 2)


def test_illegal_prompt_ids_are_read_as_unk_and_counted(dec):
  before = int(dec.illegal_opcodes[...])
  wide = np.array([[BOS_ID, 4, V + 3, 2**32 + 5]], np.int64)  # 2**32 + 5 must not wrap to the legal id 5
  got = np.asarray(models.generate(dec, wide, 3, eos_id=-1))
  assert int(dec.illegal_opcodes[...]) - before == 2
  assert got[0].tolist() == naive_greedy(dec, [BOS_ID, 4, UNK_ID, UNK_ID], 3)
