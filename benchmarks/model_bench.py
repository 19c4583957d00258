"""Model throughput: training-step MFU for `tiny` and `small`, and cached vs uncached generation.

MFU = achieved FLOP/s (analytic ``flops_per_token``: 6N + attention) / the matrix-multiply peak measured here with
XLA (a jitted square f32 matmul, best of several). A plain Flax NNX decoder (nnx.MultiHeadAttention, nnx.Linear,
nnx.LayerNorm; d_model 256, 4 layers) is measured the same way as a reference point.

Each preset's step is timed with two losses, interleaved so that both see the same load: ``mfu_<preset>`` with the
trainer's loss (``loss.batch_sums``: the output head and softmax applied a chunk of positions at a time, never the
full float32 [B, L, V] logits) and ``mfu_<preset>_full_logits`` with the mean cross-entropy of ``model(ids)`` (the
figure this benchmark reported before the chunked loss). ``mfu_<preset>_matmuls_only``: the same FLOPs over the
time of the step's matrix multiplies alone, each a separate dot at the step's shapes (``matmul_skeleton``): what
XLA:CPU's kernels need for those FLOPs with nothing else to do, an estimate of the ceiling that work on the rest
of the step can reach (no ceiling where the step fuses its matmuls with their neighbours and runs as fast as the
dots alone, as ``tiny``'s memory-bound head does). ``temp_mib_32k_*``: XLA's scratch memory of `small`'s
training step at vocabulary 32k with each loss (compiled, not run).

  .venv/bin/python benchmarks/model_bench.py            # progress on stderr, one JSON object as the last stdout line
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import llmcpu.models as models
from llmcpu.models import decoding
from llmcpu.ops import host_malloc
from llmcpu.training import loss


def log(*args) -> None:
  print(*args, file=sys.stderr, flush=True)


def best_time(fn, repeats: int) -> float:
  """Best wall time of ``fn()`` (which must block) over ``repeats`` runs."""
  return Timing.of(fn, repeats).wall


class Timing:
  """Best wall-clock and best process-CPU seconds over samples. This machine's cores are shared with other jobs:
  wall time then counts the waits, CPU time (all threads) only the work done, a load-robust companion figure."""

  def __init__(self):
    self.wall = self.cpu = float("inf")

  def sample(self, fn) -> None:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    self.wall = min(self.wall, time.perf_counter() - w0)
    self.cpu = min(self.cpu, time.process_time() - c0)

  @classmethod
  def of(cls, fn, repeats: int) -> Timing:
    t = cls()
    for _ in range(repeats):
      t.sample(fn)
    return t


class MatmulPeak:
  """FLOP/s of a jitted f32 [n, n] @ [n, n] matmul, best seen over all ``sample()`` calls. Every measurement below
  interleaves matmul samples with its own runs and MFU uses the best of each, so both see the least-loaded moments.
  """

  def __init__(self, n: int):
    self.flops = 2.0 * n**3
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(lambda a, b: a @ b)
    mm(a, b).block_until_ready()
    self.run = lambda: mm(a, b).block_until_ready()
    self.timing = Timing()

  def sample(self, repeats: int = 1) -> None:
    for _ in range(repeats):
      self.timing.sample(self.run)

  @property
  def flops_per_s(self) -> float:
    return self.flops / self.timing.wall

  @property
  def flops_per_cpu_s(self) -> float:
    return self.flops / self.timing.cpu


# ----------------------------------------------------------------------------------------------------------------
# Reference: a plain Flax NNX decoder built from library layers.
# ----------------------------------------------------------------------------------------------------------------


class PlainBlock(nnx.Module):
  def __init__(self, d: int, heads: int, d_ff: int, rngs: nnx.Rngs):
    self.ln1, self.ln2 = nnx.LayerNorm(d, rngs=rngs), nnx.LayerNorm(d, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs)
    self.fc1, self.fc2 = nnx.Linear(d, d_ff, rngs=rngs), nnx.Linear(d_ff, d, rngs=rngs)

  def __call__(self, x, mask):
    x = x + self.attn(self.ln1(x), mask=mask)
    return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class PlainDecoder(nnx.Module):
  def __init__(self, vocab: int, d: int, heads: int, layers: int, d_ff: int, max_len: int, rngs: nnx.Rngs):
    self.embed, self.pos = nnx.Embed(vocab, d, rngs=rngs), nnx.Embed(max_len, d, rngs=rngs)
    self.blocks = nnx.List([PlainBlock(d, heads, d_ff, rngs) for _ in range(layers)])
    self.ln, self.out = nnx.LayerNorm(d, rngs=rngs), nnx.Linear(d, vocab, rngs=rngs)

  def __call__(self, ids):
    x = self.embed(ids) + self.pos(jnp.arange(ids.shape[1]))[None]
    mask = nnx.make_causal_mask(ids)
    for block in self.blocks:
      x = block(x, mask)
    return self.out(self.ln(x))


# ----------------------------------------------------------------------------------------------------------------
# Training-step throughput
# ----------------------------------------------------------------------------------------------------------------


LOSSES = ("chunked", "full_logits")


def compile_train_step(model: nnx.Module, batch: int, seq: int, vocab: int, loss_path: str = "full_logits"):
  """(compiled forward+backward step, its arguments): mean next-token CE, gradients w.r.t. all Params.

  ``loss_path``: 'full_logits' = optax cross-entropy of ``model(ids)``; 'chunked' = ``loss.batch_sums`` (what the
  trainer runs; the model must have ``hidden``/``head_kernel``). ``model`` may be abstract (``nnx.eval_shape``)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(37, vocab, (batch, seq + 1)), jnp.int32)

  @jax.jit
  def step(params, rest, ids):
    def loss_fn(params):
      model = nnx.merge(graphdef, params, rest, copy=True)
      if loss_path == "full_logits":
        return optax.softmax_cross_entropy_with_integer_labels(model(ids[:, :-1]), ids[:, 1:]).mean()
      ones = jnp.ones((batch, seq), jnp.float32)
      lm_batch = dict(inputs=ids[:, :-1], targets=ids[:, 1:], weights=ones, target_bytes=ones)
      sums = loss.batch_sums(model, dict(lm_batch, segment_ids=None, positions=None))  # as model(ids): one doc/row
      return sums["nll"] / sums["weight"]

    return jax.value_and_grad(loss_fn)(params)

  return step.lower(params, rest, ids).compile(), (params, rest, ids)


def train_step_fn(model: nnx.Module, batch: int, seq: int, vocab: int, loss_path: str = "full_logits"):
  """``compile_train_step``'s step as a blocking thunk (run once here)."""
  compiled, step_args = compile_train_step(model, batch, seq, vocab, loss_path)
  jax.block_until_ready(compiled(*step_args))
  return lambda: jax.block_until_ready(compiled(*step_args))


def measure_train(
  name: str, model, config: models.ModelConfig, args, peak: MatmulPeak, loss_path: str = "full_logits"
) -> dict[str, float]:
  """Step time (best of ``args.repeats``, interleaved with matmul samples); MFU from wall and from CPU time."""
  return measure_train_losses(name, model, config, args, peak, (loss_path,))[loss_path]


def measure_train_losses(
  name: str, model, config: models.ModelConfig, args, peak: MatmulPeak, losses: tuple[str, ...], extra=None
) -> dict[str, dict]:
  """``measure_train`` per loss path, the paths and matmul samples interleaved so that all see the same load;
  ``extra`` (name → blocking thunk) is timed in the same rounds and credited with the same FLOPs."""
  runs = {path: train_step_fn(model, args.batch, args.seq, args.vocab, path) for path in losses}
  runs.update(extra or {})
  steps = {path: Timing() for path in runs}
  for _ in range(args.repeats):
    for path, run in runs.items():
      peak.sample()
      steps[path].sample(run)
    peak.sample()
  tokens = args.batch * args.seq
  flops = models.flops_per_token(config, args.seq) * tokens
  outs = {}
  for path, step in steps.items():
    out = outs[path] = {
      "tokens_per_s": tokens / step.wall,
      "flops": flops,
      "step": step,
      "mfu": flops / step.wall / peak.flops_per_s,
      "mfu_cpu_time": flops / step.cpu / peak.flops_per_cpu_s,
    }
    log(
      f"{name} ({path}): {step.wall * 1e3:.0f} ms/step, {out['tokens_per_s']:.0f} tok/s, MFU {out['mfu']:.3f} "
      f"(peak {peak.flops_per_s / 1e9:.1f} GFLOP/s; CPU-time MFU {out['mfu_cpu_time']:.3f})"
    )
  return outs


def matmul_skeleton(config: models.ModelConfig, batch: int, seq: int):
  """(jitted function, its operands) running only the matrix multiplies of ``config``'s training step, at its
  shapes and in its layouts (every forward product and the two of its backward; attention per head; the tied head
  in ``loss.default_chunk`` chunks under a scan, as the trainer's loss), on resident random operands, distinct per
  layer so that XLA cannot merge them. Its time is what XLA:CPU's matmul kernels need for the step's FLOPs when
  nothing else costs anything: ``flops / its time / peak`` estimates the MFU that work on the rest can reach."""
  d, v, heads = config.d_model, config.vocab_size, config.num_heads
  n, dh, f = batch * seq, d // heads, config.d_ff * (2 if config.mlp == "swiglu" else 1)
  chunk_rows = batch * loss.default_chunk(batch, seq, v)
  chunks = -(-n // chunk_rows)
  rng = np.random.default_rng(0)

  def normal(*shape):
    return jnp.asarray(rng.standard_normal(shape, np.float32))

  def nt(a, b):  # a @ b.T
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())))

  def tn(a, b):  # a.T @ b
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())))

  dense = [(d, 3 * d), (d, d), (d, f), (config.d_ff, d)]
  layers = [
    ([(normal(n, i), normal(i, o), normal(n, o)) for i, o in dense], [normal(batch, heads, seq, dh) for _ in range(4)])
    for _ in range(config.num_layers)
  ]
  head = (normal(chunks, chunk_rows, d), normal(v, d), normal(chunks, chunk_rows, v))

  def layer_products(mats, qkvo):
    out = [p for x, w, g in mats for p in (x @ w, nt(g, w), tn(x, g))]  # forward, d input, d weight
    q, k, vv, do = qkvo
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k)  # scores; s stands in for the probabilities and their gradient
    return out + [
      s,
      jnp.einsum("bhqk,bhkd->bhqd", s, vv),  # weighted values
      jnp.einsum("bhqd,bhkd->bhqk", do, vv),  # d probabilities
      jnp.einsum("bhqk,bhqd->bhkd", s, do),  # d values
      jnp.einsum("bhqk,bhkd->bhqd", s, k),  # d queries
      jnp.einsum("bhqk,bhqd->bhkd", s, q),  # d keys
    ]

  def head_products(hidden, table, grads):
    def chunk(acc, hg):  # logits, d hidden, d table
      h, g = hg
      return acc + tn(g, h), (nt(h, table), g @ table)

    return jax.lax.scan(chunk, jnp.zeros_like(table), (hidden, grads))

  return jax.jit(lambda layers, head: ([layer_products(*x) for x in layers], head_products(*head))), (layers, head)


def matmul_skeleton_fn(config: models.ModelConfig, batch: int, seq: int):
  """``matmul_skeleton`` as a blocking thunk (run once here)."""
  fn, operands = matmul_skeleton(config, batch, seq)
  jax.block_until_ready(fn(*operands))
  return lambda: jax.block_until_ready(fn(*operands))


def step_temp_mib(preset: str, vocab: int, args) -> dict[str, float]:
  """XLA scratch memory (MiB) of ``preset``'s compiled training step at ``vocab``, per loss path; an abstract model,
  so nothing is allocated or run."""
  model = nnx.eval_shape(lambda: models.create("decoder", preset, vocab, max_len=max(args.seq, 256)))
  out = {}
  for path in LOSSES:
    compiled, _ = compile_train_step(model, args.batch, args.seq, vocab, path)
    out[path] = compiled.memory_analysis().temp_size_in_bytes / 2**20
  log(f"{preset} step scratch memory at vocab {vocab}: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in out.items()))
  return out


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


def decode_speed(model: models.Decoder, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict[str, float]:
  """Greedy generation of exactly ``new_tokens`` (EOS disabled) with and without the KV cache; tokens/s."""
  rng = np.random.default_rng(1)
  prompt = jnp.asarray(rng.integers(37, model.config.vocab_size, (batch, prompt_len)), jnp.int32)
  lengths = jnp.full((batch,), prompt_len, jnp.int32)
  graphdef, state = nnx.split(model)
  dynamic = (jax.random.key(0), jnp.float32(1.0), jnp.float32(1.0), jnp.int32(-1))  # eos -1: never stops early
  static = dict(max_new_tokens=new_tokens, top_k=0, greedy=True, use_top_p=False)
  result = {}
  outputs = {}
  for name, fn in (("cached", decoding._generate_decoder), ("uncached", decoding._generate_uncached)):
    args = (graphdef, state, prompt, lengths, *dynamic)
    t0 = time.perf_counter()
    compiled = fn.lower(*args, **static).compile()
    log(f"decode {name}: compiled in {time.perf_counter() - t0:.1f}s")
    dyn_args = (state, prompt, lengths, *dynamic)  # AOT-compiled: static args are baked in

    def run(c=compiled, a=dyn_args, name=name):
      outputs[name] = np.asarray(jax.tree.leaves(jax.block_until_ready(c(*a)))[0])

    secs = best_time(run, repeats)
    result[f"decode_{name}_tokens_per_s"] = batch * new_tokens / secs
    log(f"decode {name}: {secs:.2f}s for {batch}x{new_tokens} tokens, {batch * new_tokens / secs:.0f} tok/s")
  result["decode_cache_speedup"] = result["decode_cached_tokens_per_s"] / result["decode_uncached_tokens_per_s"]
  result["decode_outputs_match"] = bool((outputs["cached"] == outputs["uncached"]).all())
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--vocab", type=int, default=8000)
  parser.add_argument("--repeats", type=int, default=4)
  parser.add_argument("--matmul_n", type=int, default=2048)
  parser.add_argument("--decode_preset", default="small")
  parser.add_argument("--decode_batch", type=int, default=1)
  parser.add_argument("--decode_prompt", type=int, default=16)
  parser.add_argument("--decode_new", type=int, default=256)
  parser.add_argument("--decode_repeats", type=int, default=2)
  parser.add_argument("--skip_reference", action="store_true")
  parser.add_argument("--memory_vocab", type=int, default=32000, help="vocabulary of the step-memory comparison")
  args = parser.parse_args()
  host_malloc.keep_step_buffers()  # as the trainer and every script: step buffers reused
  t_start = time.perf_counter()
  log(f"jax {jax.__version__} on {jax.devices()[0].platform}: {jax.devices()}")

  peak = MatmulPeak(args.matmul_n)
  peak.sample(repeats=5)
  log(f"matmul peak ({args.matmul_n}^2 f32): {peak.flops_per_s / 1e9:.1f} GFLOP/s")
  result: dict[str, object] = {"platform": jax.devices()[0].platform, "loadavg_start": os.getloadavg()[0]}
  result["train_shape"] = dict(batch=args.batch, seq=args.seq, vocab=args.vocab)
  trained: dict[str, dict] = {}

  if not args.skip_reference:
    ref_config = models.ModelConfig(
      arch="decoder", vocab_size=args.vocab, d_model=256, num_heads=4, num_layers=4, d_ff=1024, max_len=args.seq
    )
    plain = PlainDecoder(args.vocab, 256, 4, 4, 1024, args.seq, nnx.Rngs(0))
    trained["reference"] = measure_train("plain flax decoder (reference)", plain, ref_config, args, peak)

  for preset in ("tiny", "small"):
    model = models.create("decoder", preset, args.vocab, max_len=max(args.seq, 256))
    skeleton = {"matmuls_only": matmul_skeleton_fn(model.config, args.batch, args.seq)}
    outs = measure_train_losses(preset, model, model.config, args, peak, LOSSES, skeleton)
    trained[preset], trained[f"{preset}_full_logits"] = outs["chunked"], outs["full_logits"]
    trained[f"{preset}_matmuls_only"] = outs["matmuls_only"]
    result[f"params_{preset}"] = models.param_count(model)

  # MFU against the best peak seen over the whole run (samples were interleaved throughout).
  for name, out in trained.items():
    step = out["step"]
    result[f"mfu_{name}"] = out["flops"] / step.wall / peak.flops_per_s
    result[f"mfu_{name}_cpu_time"] = out["flops"] / step.cpu / peak.flops_per_cpu_s
    result[f"tokens_per_s_{name}"] = out["tokens_per_s"]
  result["matmul_peak_gflops"] = peak.flops_per_s / 1e9
  for path, mib in step_temp_mib("small", args.memory_vocab, args).items():
    result[f"temp_mib_{args.memory_vocab // 1000}k_{path}"] = mib
  result["loss_chunk"] = loss.default_chunk(args.batch, args.seq, args.vocab)

  model = models.create("decoder", args.decode_preset, args.vocab)
  result.update(
    decode_speed(model, args.decode_batch, args.decode_prompt, args.decode_new, repeats=args.decode_repeats)
  )
  result["decode_setup"] = dict(
    preset=args.decode_preset, batch=args.decode_batch, prompt=args.decode_prompt, new_tokens=args.decode_new
  )
  result["loadavg_end"] = os.getloadavg()[0]
  result["total_s"] = time.perf_counter() - t_start
  print(json.dumps(result))


if __name__ == "__main__":
  main()
