"""Model configuration, size presets and closed-form size/FLOP formulas.

One frozen ``ModelConfig`` drives every building block. Presets are plain dicts of its fields (``vocab_size`` is
always passed separately, since it belongs to the ISA, not to the CPU). The formulas at the bottom are written from
the architecture description, independently of the modules, so tests can check one against the other.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from llmcpu.errors import UserError
from llmcpu.specials import UNK_ID

ARCHS = ("encoder", "decoder", "encoder_decoder")
_CHOICES = {
  "arch": ARCHS,
  "mlp": ("gelu", "gelu_exact", "swiglu"),  # gelu: tanh approximation (GPT-2's gelu_new); gelu_exact: erf
  "norm": ("layernorm", "rmsnorm"),
  "positions": ("learned", "sinusoidal", "rotary", "t5"),
  "dtype": ("float32", "bfloat16"),
  "attention_impl": ("xla", "dot_product_attention", "chunked", "cudnn", "pallas"),
  "remat": ("none", "dots", "full"),
  "illegal_id_policy": ("unk", "error"),
  "stitch": ("", "linear"),
  "attention_bias": ("", "qkv", "all"),
  "rope_scaling": ("", "linear", "llama3"),
  "encoder_positions": ("", "learned", "sinusoidal"),
  "cross_positions": ("", "rotary", "alibi"),
}

# The encoder_decoder design (issue 23). A field's dataclass default is always the *old* design, so a checkpoint
# whose saved config predates the field reads back as what it was trained as; the design a new encoder_decoder
# gets is in ``ENCODER_DECODER_DESIGN``, applied by ``presets`` (so by every training config): on prose (prefix LM)
# its decoder also reads the prompt's last 16 bytes, learning to copy them from the encoder (``data.tail_weight``).
ENCODER_DECODER_DESIGN: dict[str, Any] = {"decoder_context": 16}

# positions='t5': T5's relative position buckets (Raffel et al. 2020, as in t5x): half exact offsets, half
# log-spaced up to this distance, one learned bias per (bucket, head) in every self-attention layer.
T5_BUCKETS, T5_MAX_DISTANCE = 32, 128


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of one CPU.

  Layers: ``num_layers`` is the depth of the encoder or decoder stack; for ``encoder_decoder`` it is the encoder's
  depth and also the decoder's unless ``num_decoder_layers`` is set. ``head_dim`` is ``d_model // num_heads``.
  Parameters are always float32; ``dtype`` is the compute dtype (logits are returned in float32).

  Stitching (encoder_decoder only): ``encoder_config`` gives the encoder stack and its own token table the shape of
  another CPU's encoder (its ISA's ``vocab_size``, its width and depth), so the model reads one ISA and writes
  another; ``stitch='linear'`` maps the encoder's output to ``d_model`` (a D_enc×D matrix + bias, identity where the
  widths agree) before cross-attention. Without a stitch the widths must agree.

  Embedding readout (encoder_decoder only): ``pool=k`` mean-pools the encoder's states into one vector (the
  embedding), [stitches it,] [turns it into its cosines to ``relative`` anchor embeddings (relative
  representations),] and projects it to k vectors, all the decoder's cross-attention sees.
  """

  arch: str = "decoder"
  vocab_size: int = 0
  d_model: int = 64
  num_heads: int = 4
  num_layers: int = 2
  d_ff: int = 256
  mlp: str = "gelu"
  norm: str = "rmsnorm"
  positions: str = "rotary"
  max_len: int = 256
  tie_embeddings: bool = True
  dtype: str = "float32"
  attention_impl: str = "xla"  # xla | dot_product_attention | chunked (online softmax) | cudnn (GPU) | pallas (TPU)
  remat: str = "none"  # per-block rematerialisation: none | dots (keep matmul outputs) | full (keep block inputs)
  illegal_id_policy: str = "unk"
  unk_id: int = UNK_ID  # what an illegal id is read as: the ISA's UNK (an ISA without one: its EOS; Roles.stand_in)
  num_decoder_layers: int | None = None  # encoder_decoder only; None → num_layers.
  norm_eps: float = 1e-6
  rope_base: float = 10_000.0
  embed_init_std: float = 0.02
  encoder_config: ModelConfig | None = None  # encoder_decoder: another CPU's encoder (see above)
  stitch: str = ""  # encoder_decoder: "" | "linear"
  pool: int = 0  # encoder_decoder: 0 = cross-attend to every encoder state; k = to k vectors from one embedding
  relative: int = 0  # with pool: read the embedding as its cosines to this many anchor embeddings (0 = as is)
  # Options real LLMs need (Hugging Face GPT-2 / Llama / Qwen2); each default is off, so a config without these keys
  # (every checkpoint written before them) reads back as the same model with the same parameters.
  num_kv_heads: int = 0  # grouped-query self-attention: key/value heads (0 = num_heads, plain multi-head)
  attention_bias: str = ""  # self-attention biases: "" none | "qkv" q/k/v (Qwen2) | "all" q/k/v + output (GPT-2)
  mlp_bias: bool = False  # biases on the MLP's projections (GPT-2)
  rope_scaling: str = ""  # rotary frequency scaling: "" none | "linear" | "llama3" (Llama 3.1's)
  rope_factor: float = 1.0  # linear / llama3: positions are stretched by this factor
  rope_low_freq_factor: float = 1.0  # llama3 only
  rope_high_freq_factor: float = 4.0  # llama3 only
  rope_original_max_len: int = 8192  # llama3 only: the context length the model was pretrained with
  rotary_fraction: float = 1.0  # share of each head's dims rotated, the first int(head_dim·f) (GPT-NeoX: 0.25)
  parallel_residual: bool = False  # x + attn(norm1(x)) + mlp(norm2(x)): both branches read the block's input (GPT-NeoX)
  # encoder_decoder only (issue 23; '' / False = the design before it):
  encoder_positions: str = (
    ""  # absolute positions added at the encoder input, on top of `positions`: learned|sinusoidal
  )
  cross_positions: str = ""  # 'rotary': cross-attention rotates keys by source position, queries by target position
  #   + the source length, so "the source's last token" is a fixed relative distance from every target token;
  #   'alibi': a per-head linear penalty on that same distance (a prior towards the source's end)
  cross_zero_init: bool = False  # cross-attention output projections start at zero (the decoder starts as an LM)
  # prefix LM on prose: the decoder also reads the prompt's last ≤ decoder_context bytes (whole ids) before it
  # writes, unscored; the encoder still reads the whole prompt (0 = the decoder starts from BOS alone)
  decoder_context: int = 0

  def __post_init__(self):
    if isinstance(self.encoder_config, Mapping):  # read back from a checkpoint's (JSON) metadata
      object.__setattr__(self, "encoder_config", ModelConfig(**self.encoder_config))
    for name, choices in _CHOICES.items():
      if getattr(self, name) not in choices:
        raise UserError(f"model.{name}={getattr(self, name)!r} is not one of {', '.join(choices)}")
    if not 0 <= self.unk_id < self.vocab_size:
      raise UserError(f"model.vocab_size={self.vocab_size} must be > {self.unk_id} (the unk id); pass the ISA's size")
    for name in ("d_model", "num_heads", "num_layers", "d_ff", "max_len"):
      if getattr(self, name) <= 0:
        raise UserError(f"model.{name}={getattr(self, name)} must be positive")
    if self.d_model % self.num_heads:
      raise UserError(f"model.d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
    if self.positions == "rotary" and self.head_dim % 2:
      raise UserError(f"rotary positions need an even head_dim; got d_model/num_heads={self.head_dim}")
    if self.positions == "sinusoidal" and self.d_model % 2:
      raise UserError(f"sinusoidal positions need an even d_model; got {self.d_model}")
    if self.num_kv_heads < 0 or self.num_heads % self.kv_heads:
      raise UserError(f"model.num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} (0 = num_heads)")
    if self.num_kv_heads == self.num_heads:  # plain multi-head attention has one spelling, so configs compare equal
      object.__setattr__(self, "num_kv_heads", 0)
    if (self.num_kv_heads or self.attention_bias or self.mlp_bias) and self.arch == "encoder_decoder":
      raise UserError(
        "model.num_kv_heads, attention_bias and mlp_bias are for a decoder or encoder, not encoder_decoder"
      )
    if self.rotary_fraction != 1.0 and (self.positions != "rotary" or not 0 < self.rotary_dims <= self.head_dim):
      raise UserError(
        f"model.rotary_fraction={self.rotary_fraction} needs rotary positions and 0 < int(head_dim·fraction) ≤ "
        f"head_dim={self.head_dim}"
      )
    if self.positions == "rotary" and self.rotary_dims % 2:
      raise UserError(f"rotary positions rotate pairs of dims; int(head_dim·rotary_fraction)={self.rotary_dims} is odd")
    if self.parallel_residual and self.arch == "encoder_decoder":
      raise UserError("model.parallel_residual is for a decoder or encoder, not encoder_decoder")
    if self.rope_scaling and (self.positions != "rotary" or self.rope_factor <= 0):
      raise UserError(f"model.rope_scaling={self.rope_scaling} needs rotary positions and rope_factor > 0")
    if self.rope_scaling == "llama3" and not (0 < self.rope_low_freq_factor < self.rope_high_freq_factor):
      raise UserError("model.rope_scaling=llama3 needs 0 < rope_low_freq_factor < rope_high_freq_factor")
    if self.num_decoder_layers is not None and self.num_decoder_layers <= 0:
      raise UserError(f"model.num_decoder_layers={self.num_decoder_layers} must be positive")
    if (self.encoder_config is not None or self.stitch or self.pool) and self.arch != "encoder_decoder":
      raise UserError(f"model.encoder_config, stitch and pool belong to an encoder_decoder, not a {self.arch}")
    enc_dec_only = self.encoder_positions or self.cross_positions or self.cross_zero_init
    if enc_dec_only and self.arch != "encoder_decoder":
      raise UserError(
        f"model.encoder_positions, cross_positions and cross_zero_init belong to an encoder_decoder, not a {self.arch}"
      )
    if self.decoder_context and self.arch != "encoder_decoder":
      raise UserError(f"model.decoder_context belongs to an encoder_decoder, not a {self.arch}")
    if self.decoder_context < 0:
      raise UserError(f"model.decoder_context={self.decoder_context} must be >= 0 (0 = the decoder starts from BOS)")
    if self.cross_positions and self.pool:
      raise UserError(
        f"model.cross_positions={self.cross_positions} needs every encoder state (pool=0): pooled vectors have none"
      )
    if self.cross_positions == "rotary" and self.head_dim % 2:
      raise UserError(f"rotary cross-attention needs an even head_dim; got d_model/num_heads={self.head_dim}")
    if self.encoder_positions == "sinusoidal" and self.encoder.d_model % 2:
      raise UserError(f"sinusoidal encoder positions need an even d_model; got {self.encoder.d_model}")
    if self.pool < 0 or self.relative < 0 or (self.relative and not self.pool):
      raise UserError(f"model.pool={self.pool} and model.relative={self.relative}: relative anchors need pool > 0")
    enc = self.encoder_config
    if enc is not None and enc.d_model != self.d_model and not self.stitch:
      raise UserError(
        f"the encoder is {enc.d_model} wide and the decoder {self.d_model}: cross-attention cannot read it as is; "
        "add a stitch (model.stitch=linear)"
      )

  @property
  def encoder(self) -> ModelConfig:
    """The config of the encoder stack and the table it reads with: ``encoder_config`` or this one."""
    return self.encoder_config or self

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def rotary_dims(self) -> int:
    """Dims of each head that rotary positions rotate (the first ones; the rest pass through), as GPT-NeoX counts."""
    return int(self.head_dim * self.rotary_fraction)

  @property
  def kv_heads(self) -> int:
    """Key/value heads of self-attention (``num_kv_heads``, or ``num_heads`` when it is 0)."""
    return self.num_kv_heads or self.num_heads

  @property
  def decoder_layers(self) -> int:
    """Depth of the decoder stack of an encoder_decoder."""
    return self.num_decoder_layers or self.num_layers

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  def replace(self, **changes: Any) -> ModelConfig:
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any]) -> ModelConfig:
    """Builds from an ml_collections block (or dict): optional ``preset`` first, then the other keys override it."""
    fields = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    preset = fields.pop("preset", None)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise UserError(f"unknown model config keys {unknown}; known: {sorted(known | {'preset'})}")
    base = presets(preset, fields.get("arch")) if preset else {}
    return cls(**{**base, **fields})


# Presets: dicts of ModelConfig fields. `tiny` compiles and runs in seconds (tests); `small` is for experiments on
# a laptop (XLA:CPU; at least the size of the plain reference decoder: d_model 256, 4 layers); `base` is ~100M
# parameters with a 32k vocabulary, meant for GPU/TPU (bfloat16 compute, cuDNN attention where available).
PRESETS: dict[str, dict[str, Any]] = {
  "tiny": dict(d_model=64, num_heads=4, num_layers=2, d_ff=256, max_len=256),
  "small": dict(d_model=256, num_heads=4, num_layers=4, d_ff=1024, max_len=512),
  "base": dict(
    d_model=768,
    num_heads=12,
    num_layers=12,
    d_ff=3072,
    max_len=1024,
    dtype="bfloat16",
    attention_impl="dot_product_attention",
  ),
}


def presets(preset: str, arch: str | None = None) -> dict[str, Any]:
  """The fields of a preset. For ``encoder_decoder`` each stack gets half the layers (at least 2), so that the three
  architectures of one preset have comparable parameter counts."""
  if preset not in PRESETS:
    raise UserError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
  fields = copy.deepcopy(PRESETS[preset])
  if arch == "encoder_decoder":
    fields["num_layers"] = max(2, fields["num_layers"] // 2)
    fields.update(ENCODER_DECODER_DESIGN)
  return fields


def saved_fields(saved: Mapping[str, Any]) -> dict[str, Any]:
  """A saved model config (a checkpoint's ``model_config`` or training ``model`` block) with every field it lacks
  at its dataclass default, i.e. the design it was trained with, never today's preset."""
  known = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
  return {**known, **{k: v for k, v in saved.items() if k in known or k == "preset"}}


# ----------------------------------------------------------------------------------------------------------------
# Closed-form formulas (independent of the modules).
# ----------------------------------------------------------------------------------------------------------------


def _stacks(c: ModelConfig) -> list[tuple[ModelConfig, int, bool]]:
  """(config, depth, has_cross_attention) for each transformer stack of the architecture."""
  if c.arch == "encoder_decoder":
    return [(c.encoder, c.encoder.num_layers, False), (c, c.decoder_layers, True)]
  return [(c, c.num_layers, False)]


def _extra_tables(c: ModelConfig) -> int:
  """A stitched encoder's own token table and the stitch (D_enc·D + D)."""
  if c.arch != "encoder_decoder":
    return 0
  e = c.encoder_config
  total = (e.vocab_size * e.d_model if e else 0) + ((c.encoder.d_model + 1) * c.d_model if c.stitch else 0)
  if c.pool:  # the prefix projection: (relative anchors or D) + 1 → k·D
    total += ((c.relative or c.d_model) + 1) * c.pool * c.d_model
  if c.encoder_positions == "learned":  # the encoder input's absolute position table
    total += c.encoder.max_len * c.encoder.d_model
  return total


def expected_param_count(c: ModelConfig) -> int:
  """Number of parameters, from the architecture alone.

  Token table V·D (+ a separate D·V head unless tied). Per stack: a learned position table (max_len·D) if
  positions are learned, a final norm, and per layer: norms, attention 2·D² (q, out) + 2·D·G·K (k, v for G
  key/value heads of width K; 4·D² without grouping), with t5 positions a T5_BUCKETS·H bias table, the MLP (2·D·F
  for GELU, 3·D·F for SwiGLU), and for decoder layers of an encoder_decoder a second norm + 4·D² of
  cross-attention. LayerNorm has scale and bias (2·D), RMSNorm a scale (D). Biases: q/k/v D + 2·G·K ("qkv"), + D
  for the output ("all"); MLP F (2·F for SwiGLU) + D.
  """
  total = c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2) + _extra_tables(c)
  for s, depth, cross in _stacks(c):
    d, f = s.d_model, s.d_ff
    norm = 2 * d if s.norm == "layernorm" else d
    kv = s.kv_heads * s.head_dim
    self_attn = 2 * d * d + 2 * d * kv + {"": 0, "qkv": d + 2 * kv, "all": 2 * d + 2 * kv}[s.attention_bias]
    mlp = (3 if s.mlp == "swiglu" else 2) * d * f + (((2 if s.mlp == "swiglu" else 1) * f + d) if s.mlp_bias else 0)
    self_attn += T5_BUCKETS * s.num_heads if s.positions == "t5" else 0  # the relative-position bias table
    layer = 2 * norm + self_attn + mlp + ((norm + 4 * d * d) if cross else 0)
    total += depth * layer + norm + (s.max_len * d if s.positions == "learned" else 0)
  return total


def matmul_param_count(c: ModelConfig) -> int:
  """Parameters that take part in a matrix multiply per token: all layers' weights plus the output head (tied or
  not); the input lookup, position tables and norm scales do not."""
  total = c.vocab_size * c.d_model + (c.encoder.d_model * c.d_model if c.stitch else 0)
  for s, depth, cross in _stacks(c):
    d, mlp = s.d_model, (3 if s.mlp == "swiglu" else 2) * s.d_model * s.d_ff
    self_attn = 2 * d * d + 2 * d * s.kv_heads * s.head_dim
    total += depth * (self_attn + mlp + (4 * d * d if cross else 0))
  return total


def flops_per_token(c: ModelConfig, seq_len: int) -> float:
  """Training (forward + backward) FLOPs per token, PaLM/MaxText style: 6·N + 12·layers·D·seq_len.

  N = ``matmul_param_count``; the attention term counts QKᵀ and AV over the full (not causally halved) length, once
  per self-attention and per cross-attention layer. For an encoder_decoder, "per token" means per target token
  with a source of the same length (one encoder token + one decoder token).
  """
  attn = sum(depth * (2 if cross else 1) * s.d_model for s, depth, cross in _stacks(c))
  return 6.0 * matmul_param_count(c) + 12.0 * attn * seq_len
