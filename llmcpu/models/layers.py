"""Small building blocks: annotated parameters, token embedding/head, norms, MLPs and position encodings.

Every parameter is float32 and carries logical axis names in flax's ``out_sharding`` metadata (``eager_sharding``
off, so creating a model needs no mesh); ``llmcpu.models.sharding`` maps the names onto a device mesh. Logical
names: 'vocab', 'embed', 'mlp', 'heads', 'kv'; None = never sharded.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmcpu.models.config import ModelConfig

Init = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


def param(rngs: nnx.Rngs, init: Init, shape: Sequence[int], axes: Sequence[str | None]) -> nnx.Param:
  """A float32 parameter annotated with logical axis names."""
  assert len(shape) == len(axes), (shape, axes)
  return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), out_sharding=tuple(axes), eager_sharding=False)


_CHUNK = 1 << 16


@jax.jit
def _normal_chunk(key: jax.Array) -> jax.Array:
  return jax.random.normal(key, (_CHUNK,), jnp.float32)


def normal(std: float) -> Init:
  """N(0, std²) initializer that compiles once for every shape.

  ``jax.random.normal(key, shape)`` compiles anew for each distinct shape (~0.5 s each on a small XLA:CPU host, seconds
  per model); here values come in fixed-size chunks ``normal(fold_in(key, i))``, assembled on the host when eager and
  with the same jnp ops when traced (``nnx.eval_shape``/``jit``), which give bit-identical results.
  """

  def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    size = math.prod(shape)
    chunks = [_normal_chunk(jax.random.fold_in(key, i)) for i in range(-(-size // _CHUNK))]
    if isinstance(key, jax.core.Tracer):
      return (jnp.concatenate(chunks)[:size].reshape(shape) * std).astype(dtype)
    flat = np.concatenate([np.asarray(c) for c in chunks])[:size]
    return jnp.asarray((flat.reshape(shape) * np.float32(std)).astype(dtype))

  return init


def dense(x: jax.Array, kernel: jax.Array, *, n_in: int = 1, out_dtype: jnp.dtype | None = None) -> jax.Array:
  """x [..., *in] · kernel [*in, *out] → [..., *out], run as ONE 2-D matmul.

  XLA:CPU runs a plain [N, I] @ [I, O] dot (and its gradients) about 2x faster than the same einsum with several
  free or contracting dimensions (measured on the MLP of `small`); reshapes are free on every backend. Kernels put
  their sharded axis (heads/mlp/vocab) first among the merged output dims so the reshape keeps shards contiguous.
  """
  lead, in_shape, out_shape = x.shape[: x.ndim - n_in], kernel.shape[:n_in], kernel.shape[n_in:]
  assert x.shape[x.ndim - n_in :] == in_shape, (x.shape, kernel.shape)
  x_NxI = x.reshape(-1, math.prod(in_shape))
  y_NxO = jnp.matmul(x_NxI, kernel.reshape(x_NxI.shape[1], -1), preferred_element_type=out_dtype)
  return y_NxO.reshape(*lead, *out_shape)


class Embed(nnx.Module):
  """Token table [V, D]; ``lookup`` for inputs, ``attend`` for tied output logits."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.dtype = config.compute_dtype
    self.table = param(rngs, normal(config.embed_init_std), (config.vocab_size, config.d_model), ("vocab", "embed"))

  def lookup(self, ids_BxL: jax.Array) -> jax.Array:
    # Callers sanitize ids first: jnp.take would silently clamp an out-of-range id.
    return jnp.take(self.table[...], ids_BxL, axis=0).astype(self.dtype)

  def attend(self, x_BxLxD: jax.Array) -> jax.Array:
    return dense(x_BxLxD, self.table[...].astype(self.dtype).T, out_dtype=jnp.float32)


class Head(nnx.Module):
  """Separate (untied) output projection [D, V]."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.dtype = config.compute_dtype
    d, v = config.d_model, config.vocab_size
    self.kernel = param(rngs, normal(d**-0.5), (d, v), ("embed", "vocab"))

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    return dense(x_BxLxD, self.kernel[...].astype(self.dtype), out_dtype=jnp.float32)


class Stitch(nnx.Module):
  """A linear map between two CPUs' hidden spaces, ``x @ kernel + bias`` ([D_in, D_out] + [D_out]), initialised to
  the identity (zero-padded where the widths differ): a zero-shot swap passes the encoder's states through as is."""

  def __init__(self, d_in: int, d_out: int, *, dtype: jnp.dtype):
    self.dtype = dtype
    self.kernel = nnx.Param(jnp.eye(d_in, d_out, dtype=jnp.float32), out_sharding=(None, None), eager_sharding=False)
    self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32), out_sharding=(None,), eager_sharding=False)

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    y = dense(x_BxLxD, self.kernel[...].astype(self.dtype))
    return y + self.bias[...].astype(self.dtype).reshape((1,) * (y.ndim - 1) + (-1,))


class Anchors(nnx.Variable):
  """Anchor embeddings [K, D] of a relative readout: set from the encoder it reads (never trained)."""


class Prefix(nnx.Module):
  """One embedding [B, D_in] → k vectors [B, k, D] the decoder cross-attends to; with ``anchors`` [K, D_in] the
  embedding is first read as its cosines to them (relative representations, Moschella et al. 2023)."""

  def __init__(self, d_in: int, k: int, d: int, relative: int, *, rngs: nnx.Rngs, dtype: jnp.dtype):
    self.k, self.d, self.dtype = k, d, dtype
    width = relative or d_in
    self.kernel = param(rngs, normal(width**-0.5), (width, k * d), (None, "embed"))
    self.bias = nnx.Param(jnp.zeros((k * d,), jnp.float32), out_sharding=("embed",), eager_sharding=False)
    self.anchors = Anchors(jnp.zeros((relative, d_in), jnp.float32)) if relative else None

  def __call__(self, v_BxD: jax.Array) -> jax.Array:
    v_BxD = v_BxD.astype(jnp.float32)
    if self.anchors is not None:
      unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)  # noqa: E731
      v_BxD = unit(v_BxD) @ unit(self.anchors[...]).T
    y = dense(v_BxD.astype(self.dtype), self.kernel[...].astype(self.dtype)) + self.bias[...].astype(self.dtype)[None]
    return y.reshape(v_BxD.shape[0], self.k, self.d)


class Norm(nnx.Module):
  """LayerNorm (scale + bias) or RMSNorm (scale), computed in float32 for stability under bfloat16."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    del rngs  # deterministic init
    self.kind, self.eps, self.dtype = config.norm, config.norm_eps, config.compute_dtype
    d = config.d_model
    # numpy → device: no per-shape XLA compile (see `normal`).
    self.scale = nnx.Param(jnp.asarray(np.ones((d,), np.float32)), out_sharding=("embed",), eager_sharding=False)
    if self.kind == "layernorm":
      self.bias = nnx.Param(jnp.asarray(np.zeros((d,), np.float32)), out_sharding=("embed",), eager_sharding=False)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    if self.kind == "layernorm":
      x = x - jnp.mean(x, axis=-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    x = x * along_last(self.scale[...], x.ndim)
    if self.kind == "layernorm":
      x = x + along_last(self.bias[...], x.ndim)
    return x.astype(self.dtype)


def zeros(shape: Sequence[int], axes: Sequence[str | None]) -> nnx.Param:
  """A float32 zero parameter (biases), made on the host: no per-shape XLA compile (see ``normal``)."""
  return nnx.Param(jnp.asarray(np.zeros(tuple(shape), np.float32)), out_sharding=tuple(axes), eager_sharding=False)


class Mlp(nnx.Module):
  """GELU (tanh approximation, or exact with ``gelu_exact``; wi [D, F]) or SwiGLU (wi [D, F, 2]: gate and up fused
  into one matmul) feed-forward; with ``mlp_bias`` also bi [F] (or [F, 2]) and bo [D] (GPT-2)."""

  def __init__(self, config: ModelConfig, *, num_layers: int, rngs: nnx.Rngs):
    self.kind, self.dtype = config.mlp, config.compute_dtype
    d, f = config.d_model, config.d_ff
    if self.kind == "swiglu":
      self.wi = param(rngs, normal(d**-0.5), (d, f, 2), ("embed", "mlp", None))
    else:
      self.wi = param(rngs, normal(d**-0.5), (d, f), ("embed", "mlp"))
    # Residual-branch outputs start small so the stream's variance does not grow with depth (GPT-2).
    self.wo = param(rngs, normal((f * 2 * num_layers) ** -0.5), (f, d), ("mlp", "embed"))
    self.bias = config.mlp_bias
    if self.bias:
      self.bi = zeros(self.wi.shape[1:], self.wi.get_metadata()["out_sharding"][1:])
      self.bo = zeros((d,), ("embed",))

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    h = dense(x_BxLxD, self.wi[...].astype(self.dtype))
    if self.bias:
      h = add_bias(h, self.bi)
    if self.kind == "swiglu":
      h_BxLxF = jax.nn.silu(h[..., 0]) * h[..., 1]
    else:
      h_BxLxF = jax.nn.gelu(h, approximate=self.kind == "gelu")
    y = dense(h_BxLxF, self.wo[...].astype(self.dtype))
    return add_bias(y, self.bo) if self.bias else y


class LearnedPositions(nnx.Module):
  """Absolute position table [max_len, D]; positions beyond it are the caller's bug (checked where static)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.dtype = config.compute_dtype
    self.table = param(rngs, normal(config.embed_init_std), (config.max_len, config.d_model), (None, "embed"))

  def __call__(self, positions_BxL: jax.Array) -> jax.Array:
    return jnp.take(self.table[...], positions_BxL, axis=0).astype(self.dtype)


def add_bias(y: jax.Array, bias: nnx.Param) -> jax.Array:
  """y [..., *b] + bias [*b] in y's dtype (broadcast made explicit: rank promotion is an error in the tests)."""
  b = bias[...].astype(y.dtype)
  return y + b.reshape((1,) * (y.ndim - b.ndim) + b.shape)


def along_last(v: jax.Array, ndim: int) -> jax.Array:
  """A vector [D] shaped to broadcast along the last axis of an ndim-array (rank promotion is explicit here)."""
  return v.reshape((1,) * (ndim - 1) + (-1,))


def sinusoidal(positions_BxL: jax.Array, d_model: int, dtype: jnp.dtype, base: float = 10_000.0) -> jax.Array:
  """Transformer sin/cos encodings [B, L, D] for arbitrary (e.g. per-segment) positions."""
  half = d_model // 2
  inv_freq = jnp.exp(-math.log(base) * jnp.arange(half, dtype=jnp.float32) / half)
  angle_BxLxH = positions_BxL[..., None].astype(jnp.float32) * along_last(inv_freq, positions_BxL.ndim + 1)
  return jnp.concatenate([jnp.sin(angle_BxLxH), jnp.cos(angle_BxLxH)], axis=-1).astype(dtype)


def rope_inv_freq(head_dim: int, base: float, scaling: tuple = ()) -> jax.Array:
  """Rotary frequencies [head_dim/2]: ``base^(-2i/head_dim)``, then rescaled per ``scaling``: () none;
  ('linear', factor) all divided by factor (positions stretched); ('llama3', factor, low_freq_factor,
  high_freq_factor, original_max_len) Llama 3.1's rule: wavelengths longer than original_max_len/low_freq_factor
  are divided by factor, shorter than original_max_len/high_freq_factor kept, those between interpolated."""
  half = head_dim // 2
  inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if not scaling:
    return inv_freq
  kind, factor = scaling[0], scaling[1]
  if kind == "linear":
    return inv_freq / factor
  low, high, original = scaling[2:]
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > original / low, inv_freq / factor, inv_freq)
  smooth = (original / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= original / high) & (wavelen <= original / low)
  return jnp.where(medium, smoothed, scaled)


def rope_scaling_of(config: ModelConfig) -> tuple:
  """``rope_inv_freq``'s ``scaling`` argument for a config."""
  c = config
  if c.rope_scaling == "linear":
    return ("linear", c.rope_factor)
  if c.rope_scaling == "llama3":
    return ("llama3", c.rope_factor, c.rope_low_freq_factor, c.rope_high_freq_factor, c.rope_original_max_len)
  return ()


# Largest sin/cos table (positions × frequencies) kept as a constant of the compiled program (1 MiB float32 each).
ROTARY_TABLE_MAX = 1 << 18


def rotary_sin_cos(
  positions_BxL: jax.Array, dims: int, base: float, scaling: tuple = (), bound: int | None = None
) -> tuple[jax.Array, jax.Array]:
  """(sin, cos) [B, L, 1, dims/2] float32 of rotary's angles ``position · rope_inv_freq``.

  With a static ``bound`` (every position is in [0, bound)) and a table of at most ``ROTARY_TABLE_MAX`` entries
  they are looked up in constant tables made when tracing, by the same float32 operations. Why: XLA:CPU fuses sin
  and cos into each consumer, so they were recomputed per element of q and of k (every head), in every layer and
  again in the backward pass: 52 of the `small` step's ~970 ms, 7x the cost of the rotation itself
  (benchmarks/step_profile.py). A position outside [0, bound) looks up NaN, never a clamped neighbour's angle."""
  if bound is None or bound * (dims // 2) > ROTARY_TABLE_MAX:
    angle_BxLxK = positions_BxL[..., None].astype(jnp.float32) * along_last(rope_inv_freq(dims, base, scaling), 3)
    return jnp.sin(angle_BxLxK)[:, :, None, :], jnp.cos(angle_BxLxK)[:, :, None, :]
  tables = _rotary_tables(bound, dims, base, scaling)
  return tuple(jnp.take(t, positions_BxL, axis=0, mode="fill", fill_value=jnp.nan)[:, :, None, :] for t in tables)


@functools.lru_cache(maxsize=16)
def _rotary_tables(bound: int, dims: int, base: float, scaling: tuple) -> tuple[np.ndarray, np.ndarray]:
  """sin and cos [bound, dims/2] of ``rotary_sin_cos``'s angles, made once per shape rather than per layer and
  trace (the same arrays, so one constant of each in a compiled program)."""
  with jax.ensure_compile_time_eval():  # concrete, not traced, when first asked for inside a trace
    angle_PxK = jnp.arange(bound, dtype=jnp.float32)[:, None] * rope_inv_freq(dims, base, scaling)[None, :]
    return np.asarray(jnp.sin(angle_PxK)), np.asarray(jnp.cos(angle_PxK))


def apply_rotary(x_BxLxHxK: jax.Array, sin_cos: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Rotate-half rotary positions on queries or keys, in float32, by ``rotary_sin_cos``'s angles; when those cover
  fewer dims than a head (GPT-NeoX's partial rotary) only the first dims rotate and the rest pass through."""
  sin, cos = sin_cos
  half = sin.shape[-1]
  x = x_BxLxHxK.astype(jnp.float32)
  x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
  return out.astype(x_BxLxHxK.dtype)


def rotary(
  x_BxLxHxK: jax.Array, positions_BxL: jax.Array, base: float, scaling: tuple = (), dims: int | None = None
) -> jax.Array:
  """Rotary position embedding (rotate-half form) applied to queries or keys, in float32, its angles computed in
  the step. ``dims``: rotate only the first ``dims`` of each head (GPT-NeoX's partial rotary, frequencies over
  those dims), the rest pass through."""
  dims = x_BxLxHxK.shape[-1] if dims is None else min(dims, x_BxLxHxK.shape[-1])
  return apply_rotary(x_BxLxHxK, rotary_sin_cos(positions_BxL, dims, base, scaling))
