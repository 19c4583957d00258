"""Memory before running: what one training step needs per device, known before a byte of it is allocated.

Two estimates of the same thing. ``compiled_estimate`` lowers and compiles the real training step (optimizer,
gradient accumulation, remat, attention kernel and all) on abstract inputs and reads XLA's buffer assignment
(``memory_analysis``): exact for the backend it compiles for, i.e. this host. ``analytic_estimate`` counts from the
architecture alone — float32 parameters, gradients and AdamW moments, the activations each block keeps for the
backward pass (including the float32 [B, H, L, L] attention scores of the dense kernel), the output head's logits
chunk — so it can be asked about an accelerator this host is not (``ACCELERATORS``). ``preflight`` prints both and
refuses a run that cannot fit, in one line with the figures and the knobs that shrink it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from llmcpu import models
from llmcpu.data import objectives as obj
from llmcpu.errors import UserError
from llmcpu.models.attention import KV_CHUNK
from llmcpu.training import loss
from llmcpu.training.optim import make_optimizer

GIB = 1024**3
# Memory per device (one JAX device: a v4 chip in megacore mode, a v5e/v6e chip, a GPU).
ACCELERATORS = {
  "v4": 32 * GIB,
  "v5e": 16 * GIB,
  "v6e": 32 * GIB,
  "a100-40g": 40 * GIB,
  "a100-80g": 80 * GIB,
  "h100-80g": 80 * GIB,
}
# What a process holds besides the step's buffers (Python, jaxlib, tf.data, the compiled code), measured on this host
# as the peak RSS of `tiny` runs (~1.1 GB): added to the host estimate only.
RUNTIME_BYTES = int(1.2 * GIB)


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes per device of one training step: the state it keeps across steps and the peak of everything else."""

  state: int  # parameters + AdamW moments (+ step), alive between steps
  step: int  # peak of the step's other buffers: gradients, activations, logits chunks, temporaries
  how: str  # "compiled" or "analytic"

  @property
  def total(self) -> int:
    return self.state + self.step

  def describe(self) -> str:
    return f"{self.total / GIB:.2f} GiB ({self.how}: state {self.state / GIB:.2f} + step {self.step / GIB:.2f})"


# ----------------------------------------------------------------------------------------------------- shapes


def batch_spec(
  objective: str, rows: int, data: ml_collections.ConfigDict, decoder_context: int = 0
) -> dict[str, jax.ShapeDtypeStruct]:
  """The abstract batch the pipeline yields for ``objective`` (see ``llmcpu.data.pipeline``), ``rows`` rows;
  ``decoder_context``: the model's (``ModelConfig.decoder_context``)."""
  f32, i32 = jnp.float32, jnp.int32
  if objective in ("lm", "lm_targets", "mlm"):
    names, length = ("inputs", "targets", "weights", "segment_ids", "positions", "target_bytes"), data.length
    spec = {n: jax.ShapeDtypeStruct((rows, length), f32 if n == "weights" else i32) for n in names}
    if objective != "mlm":  # lm, lm_targets: the content mask (objectives.CausalLM)
      spec["content"] = jax.ShapeDtypeStruct((rows, length), f32)
    return spec
  enc_len, dec_len = _tokens(objective, data, decoder_context)
  enc = {n: jax.ShapeDtypeStruct((rows, enc_len), i32) for n in ("inputs", "segment_ids", "positions")}
  dec_names = ("inputs", "targets", "weights", "segment_ids", "positions")
  dec = {n: jax.ShapeDtypeStruct((rows, dec_len), f32 if n == "weights" else i32) for n in dec_names}
  spec = {f"encoder_{n}": s for n, s in enc.items()} | {f"decoder_{n}": s for n, s in dec.items()}
  spec["target_bytes"] = jax.ShapeDtypeStruct((rows, dec_len), i32)
  if objective == "prefix_lm" and decoder_context and data.get("tail_weight", 0.0):  # the weighted tail's mask
    spec["content"] = jax.ShapeDtypeStruct((rows, dec_len), f32)
  return spec


def _tokens(objective: str, data: ml_collections.ConfigDict, decoder_context: int = 0) -> tuple[int, int]:
  """(encoder or only stack's length, decoder length; 0 without a decoder stack of its own)."""
  if objective in ("lm", "lm_targets", "mlm"):
    return data.length, 0
  k = obj.pairs_per_row(data, objective)  # packed prefix LM rows are k pairs wide
  return data.input_length * k, obj.decoder_width(data, objective, decoder_context) * k


# ----------------------------------------------------------------------------------------------------- compiled


def compiled_estimate(
  config: ml_collections.ConfigDict,
  mc: models.ModelConfig,
  objective: str,
  make_steps: Callable,
  device: jax.Device | None = None,
) -> Estimate:
  """XLA's own figure for one device running the whole global batch (this host: one device), from a compile of the
  training step (``make_steps``: the trainer's) on abstract inputs; nothing is allocated. ``device``: compile for
  that device instead of the default one, e.g. a TPU of ``jax.experimental.topologies`` from a CPU host."""
  t = config.train
  abstract = nnx.eval_shape(lambda: models.create_from_config(mc, seed=config.seed))
  graphdef, params, frozen, rest = models.split_trainable(abstract, t.trainable)
  tx, schedule = make_optimizer(t)
  train_step, _ = make_steps(graphdef, tx, schedule, t.grad_accum)
  state = {"params": params, "rest": rest, "opt_state": jax.eval_shape(tx.init, params)}
  state["step"] = jax.ShapeDtypeStruct((), jnp.int32)
  if frozen is not None:
    state["frozen"] = frozen
  batch = batch_spec(objective, t.batch_size, config.data, mc.decoder_context)
  batch["stop"] = jax.ShapeDtypeStruct((t.batch_size, 1), jnp.float32)
  if device is not None:
    on = jax.sharding.SingleDeviceSharding(device)
    state, batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on), (state, batch))
  stats = jax.jit(train_step, donate_argnums=0).lower(state, batch).compile().memory_analysis()
  # The state in and out share buffers (donated); arguments also hold the batch, a few MB.
  kept = stats.argument_size_in_bytes
  step = stats.output_size_in_bytes - stats.alias_size_in_bytes + stats.temp_size_in_bytes
  return Estimate(state=kept, step=step + stats.generated_code_size_in_bytes, how="compiled")


# ----------------------------------------------------------------------------------------------------- analytic


def _layer_bytes(mc: models.ModelConfig, s: models.ModelConfig, rows: int, q_len: int, kv_len: int) -> tuple:
  """(kept, working) bytes of one block for the backward pass, without remat: ``kept`` stays from the forward to
  the backward pass, ``working`` is what recomputing it needs at once (remat). Counted as XLA keeps them: ~11
  [B, L, D] tensors (norm inputs and outputs, q/k/v, rotated q/k, attention output, residuals), 2 [B, L, F] (the MLP's
  up projection and activation; 3 for SwiGLU), and for the dense kernel the float32 [B, H, Q, S] scores and
  probabilities (+ their cast to the compute dtype); the chunked kernel keeps per key block its [B, Q, H, K] carry
  and one float32 [B, H, Q, block] tile instead; the Pallas TPU kernel its output and two float32 [B, H, Q] softmax
  statistics (its tiles live in VMEM, not HBM)."""
  a = jnp.dtype(mc.dtype).itemsize
  bld, blf = rows * q_len * s.d_model, rows * q_len * s.d_ff
  dense = (11 * bld + (3 if s.mlp == "swiglu" else 2) * blf) * a
  scores = rows * s.num_heads * q_len * kv_len
  if mc.attention_impl == "chunked":
    block = min(KV_CHUNK, kv_len)
    attn = -(-kv_len // block) * (bld * 4 + rows * s.num_heads * q_len * block * 4)
  elif mc.attention_impl == "pallas":  # the TPU kernel keeps its output and float32 row max and sum [B, H, Q]
    attn = rows * q_len * s.d_model * a + 2 * rows * s.num_heads * q_len * 4
  else:
    attn = scores * (8 + (a if a != 4 else 0))
  return dense + attn, dense + attn


def _stack_bytes(mc: models.ModelConfig, rows: int, enc_len: int, dec_len: int) -> int:
  """Activation bytes of every stack for ``rows`` rows, after ``model.remat``: 'none' keeps every block's
  tensors; 'full' one [B, L, D] per block plus one block's working set; 'dots' the matmul outputs
  (~5 [B, L, D] + 1 [B, L, F]) per block plus one block's working set."""
  a = jnp.dtype(mc.dtype).itemsize
  stacks = [(mc.encoder, mc.encoder.num_layers, enc_len, enc_len)]
  if mc.arch == "encoder_decoder":
    stacks.append((mc, mc.decoder_layers, dec_len, dec_len))
  total, working = 0, 0
  for s, depth, q_len, kv_len in stacks:
    kept, work = _layer_bytes(mc, s, rows, q_len, kv_len)
    if s is mc and mc.arch == "encoder_decoder":  # cross-attention over the encoder's length
      cross, cross_work = _layer_bytes(mc, s, rows, q_len, enc_len)
      kept, work = kept + cross // 2, work + cross_work // 2
    bld = rows * q_len * s.d_model * a
    per_layer = {"none": kept, "full": bld, "dots": 5 * bld + rows * q_len * s.d_ff * a}[mc.remat]
    total += depth * per_layer
    working = max(working, 0 if mc.remat == "none" else work)
  return total + working


def analytic_estimate(
  mc: models.ModelConfig,
  rows: int,
  enc_len: int,
  dec_len: int = 0,
  *,
  grad_accum: int = 1,
  shards: int = 1,
  trainable: int | None = None,
) -> Estimate:
  """Bytes per device from the architecture: ``rows`` rows per device per step (split into ``grad_accum``
  micro-batches), parameters and moments split over ``shards`` devices (mesh.fsdp × mesh.tensor); ``trainable``:
  how many of the N parameters train (``train.trainable``, e.g. relearn's embedding; None = all).

  State: float32 parameters and two AdamW moments of the trained ones (4·N + 2·4·T). Step: float32 gradients of the
  trained ones (twice with gradient accumulation: the running sum and the micro-batch's), the activations of one
  micro-batch (``_stack_bytes``; a frozen layer keeps them too, for the gradient through it), the output head's
  float32 logits chunk with its softmax (``loss.default_chunk``) and a few [B, L, D] float32 tensors around it.
  """
  n = models.expected_param_count(mc)
  t = n if trainable is None else trainable
  state = (4 * n + 8 * t) // shards
  micro = max(1, rows // grad_accum)
  head_len = dec_len or enc_len
  chunk_logits = micro * loss.default_chunk(micro, head_len, mc.vocab_size) * mc.vocab_size if head_len else 0
  head = 2 * 4 * chunk_logits + 3 * 4 * micro * head_len * mc.d_model
  grads = 4 * t // shards * (2 if grad_accum > 1 else 1)
  return Estimate(state=state, step=grads + head + _stack_bytes(mc, micro, enc_len, dec_len), how="analytic")


# ----------------------------------------------------------------------------------------------------- preflight


def available_bytes() -> int:
  """Memory this host can still give a process (/proc/meminfo MemAvailable), or 0 where unknown."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def device_bytes() -> int:
  """Memory of this process's first accelerator (``memory_stats()['bytes_limit']``), or 0 on CPU / where unknown."""
  if jax.default_backend() == "cpu":
    return 0
  stats = jax.local_devices()[0].memory_stats() or {}
  return int(stats.get("bytes_limit", 0))


def parse_target(target: str, default_devices: int) -> tuple[str, int]:
  """``train.memory_target`` 'NAME[:DEVICES]' → (name, devices); NAME one of ``ACCELERATORS``."""
  name, _, count = target.partition(":")
  if name not in ACCELERATORS or (count and not (count.isdigit() and int(count) > 0)):
    raise UserError(
      f"--config.train.memory_target={target!r} must be NAME[:DEVICES] with NAME one of {', '.join(ACCELERATORS)} "
      "(e.g. v4:4 for a v4-8)"
    )
  return name, int(count) if count else default_devices


def estimate_for(config: ml_collections.ConfigDict, mc: models.ModelConfig, objective: str, devices: int) -> Estimate:
  """The analytic estimate per device when ``devices`` devices share ``train.batch_size`` (data × fsdp)."""
  shards = config.mesh.fsdp * config.mesh.tensor
  rows = max(1, config.train.batch_size * config.mesh.tensor // devices)
  enc_len, dec_len = _tokens(objective, config.data, mc.decoder_context)
  return analytic_estimate(
    mc, rows, enc_len, dec_len, grad_accum=config.train.grad_accum, shards=shards,
    trainable=trainable_count(mc, config.train.get("trainable", "")),
  )  # fmt: skip


def trainable_count(mc: models.ModelConfig, pattern: str) -> int | None:
  """Parameters ``train.trainable`` selects (None: all), counted on an abstract model (nothing allocated)."""
  if not pattern.strip():
    return None
  abstract = nnx.eval_shape(lambda: models.create_from_config(mc))
  _, params, _, _ = models.split_trainable(abstract, pattern)
  return sum(x.size for x in jax.tree.leaves(params))


def _refuse(config: ml_collections.ConfigDict, need: Estimate, limit: int, where: str) -> UserError:
  t = config.train
  return UserError(
    f"the training step needs ~{need.describe()} per device but {where} has {limit / GIB:.2f} GiB; shrink it before "
    f"it is killed: --config.train.batch_size={max(1, t.batch_size // 2)} or --config.train.grad_accum="
    f"{t.grad_accum * 2} (same batch, half the activations), --config.model.attention_impl=chunked (no [L, L] "
    "scores), --config.model.remat=full (accelerators), --config.mesh.fsdp=N (shard parameters and moments)"
  )


def preflight(
  config: ml_collections.ConfigDict, mc: models.ModelConfig, objective: str, make_steps: Callable, log=print
) -> Estimate:
  """Prints the per-device estimate and raises ``UserError`` when it does not fit.

  The budget: ``train.memory_target`` (a named accelerator, analytic estimate) if set, else
  ``train.memory_limit_gb``, else this accelerator's memory, else this host's available memory (MemAvailable).
  On one CPU process the analytic figure decides when it is far from the budget (under half or over twice);
  otherwise the step is compiled on abstract inputs for XLA's exact figure (plus ``RUNTIME_BYTES``), which is what
  a run on this host allocates.
  """
  t = config.train
  target = t.get("memory_target", "")
  if target:
    name, devices = parse_target(target, jax.device_count())
    need, limit, where = estimate_for(config, mc, objective, devices), ACCELERATORS[name], f"a {name} device"
  else:
    on_device = device_bytes()
    limit = int(t.get("memory_limit_gb", 0.0) * GIB) or on_device or available_bytes()
    source = (
      "train.memory_limit_gb" if t.get("memory_limit_gb", 0.0) else "bytes_limit" if on_device else "MemAvailable"
    )
    where = f"this {'device' if on_device else 'host'} ({source})"
    on_host = jax.default_backend() == "cpu" and jax.process_count() == 1 and jax.device_count() == 1
    # XLA:CPU's schedule keeps what remat would drop (compiled and measured: the same bytes with and without), so
    # on this host the estimate is the one without remat.
    need = estimate_for(config, mc.replace(remat="none") if on_host else mc, objective, jax.device_count())
    if on_host:
      need = dataclasses.replace(need, step=need.step + RUNTIME_BYTES)
      if limit and limit / 2 <= need.total <= 2 * limit:
        exact = compiled_estimate(config, mc, objective, make_steps)
        need = dataclasses.replace(exact, step=exact.step + RUNTIME_BYTES)
  log(f"memory: ~{need.describe()} per device; {where}: {limit / GIB:.2f} GiB")
  if limit and need.total > limit:
    raise _refuse(config, need, limit, where)
  return need
