"""Hugging Face checkpoints in and out: GPT-2 (``GPT2LMHeadModel``), GPT-NeoX (``GPTNeoXForCausalLM``: Pythia) and
the Llama family (``LlamaForCausalLM``, ``Qwen2ForCausalLM``) ⇄ an llmcpu ``Decoder``.

A Hugging Face directory is ``config.json`` + ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``). ``load(path)`` reads one tensor at a time (``safe_open``, memory-mapped) straight
into its parameter of a model built from shapes only, so no second full copy of the weights exists; float32,
float16 and bfloat16 files are read (bfloat16 through ``ml_dtypes``), parameters are float32. ``save(model, path)``
writes the same layout (float32 or bfloat16) that ``load`` and ``transformers`` read.

Layouts. GPT-2's ``Conv1D`` weights are [in, out] (``c_attn`` [D, 3D]: q, k, v, each head-major); Llama's ``nn.Linear``
weights are [out, in]. Ours: fused self-attention ``qkv`` [D, H, 3, K] (or ``q`` [D, H, K] + ``kv`` [D, G, 2, K]
under grouped-query attention), ``out`` [H, K, D], ``mlp.wi`` [D, F] (SwiGLU: [D, F, 2], gate then up), ``mlp.wo``
[F, D], ``head.kernel`` [D, V]. Both rotary conventions agree (rotate-half, frequency ``theta^(-2i/head_dim)``), so
Llama's q/k projections are copied without a permutation. GPT-NeoX's ``query_key_value`` [3D, D] is head-major with
q, k, v inside each head (rows h·3K + j·K + k), its rotary turns the first ``rotary_pct`` of each head's dims, and
with ``use_parallel_residual`` both branches of a layer read its input.

Tokenizers are not handled here: an imported model's ids are the checkpoint's own, whatever table they belong to.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from llmcpu import fs
from llmcpu.errors import UserError
from llmcpu.models.architectures import Decoder
from llmcpu.models.config import ModelConfig
from llmcpu.specials import BOS_ID, EOS_ID, PAD_ID

ARCHITECTURES = {
  "GPT2LMHeadModel": "gpt2",
  "GPTNeoXForCausalLM": "gpt_neox",
  "LlamaForCausalLM": "llama",
  "Qwen2ForCausalLM": "qwen2",
}
_CLASS = {family: name for name, family in ARCHITECTURES.items()}
WEIGHTS, INDEX, CONFIG = "model.safetensors", "model.safetensors.index.json", "config.json"
# Buffers some checkpoints carry that are not weights (GPT-2's and old Pythia's causal masks, rotary frequencies).
_BUFFERS = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")
# GELU names: transformers' ``gelu`` is exact (erf); these are its tanh approximation, llmcpu's ``gelu``.
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_GELU = {"gelu": "gelu_exact", **{name: "gelu" for name in _TANH_GELU}}
_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------


def _require(hf: Mapping[str, Any], key: str, ok: Callable[[Any], bool], want: str, default: Any = None) -> None:
  value = hf.get(key, default)
  if not ok(value):
    raise UserError(f"config.json: {key}={value!r} is not supported (llmcpu needs {want})")


def family_of_hf(hf: Mapping[str, Any]) -> str:
  """'gpt2' | 'gpt_neox' | 'llama' | 'qwen2' from ``architectures`` (or ``model_type``); else a UserError."""
  names = list(hf.get("architectures") or [])
  for name in names:
    if name in ARCHITECTURES:
      return ARCHITECTURES[name]
  if not names and hf.get("model_type") in _CLASS:
    return hf["model_type"]
  what = ", ".join(names) or f"model_type {hf.get('model_type')!r}"
  raise UserError(f"unsupported Hugging Face architecture {what}; llmcpu reads {', '.join(ARCHITECTURES)}")


def _rope(hf: Mapping[str, Any]) -> dict[str, Any]:
  """rope_base and scaling fields from ``rope_theta``/``rope_scaling`` (or the newer ``rope_parameters``)."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = dict(hf.get("rope_scaling") or params)
  kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
  theta = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10_000.0)))  # GPT-NeoX's old key
  out: dict[str, Any] = {"rope_base": float(theta)}
  if kind == "default":
    return out
  if kind not in ("linear", "llama3"):
    raise UserError(f"config.json: rope_scaling type {kind!r} is not supported (llmcpu reads linear and llama3)")
  if scaling.get("attention_factor") not in (None, 1, 1.0):
    raise UserError(f"config.json: rope_scaling attention_factor={scaling['attention_factor']} is not supported")
  out.update(rope_scaling=kind, rope_factor=float(scaling["factor"]))
  if kind == "llama3":
    out.update(
      rope_low_freq_factor=float(scaling["low_freq_factor"]),
      rope_high_freq_factor=float(scaling["high_freq_factor"]),
      rope_original_max_len=int(scaling["original_max_position_embeddings"]),
    )
  return out


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
  """The llmcpu ``ModelConfig`` of a Hugging Face ``config.json`` (a dict); ``overrides`` set runtime fields such as
  ``dtype`` or ``attention_impl``. An option llmcpu does not compute (sliding windows, exact-erf GELU in GPT-2, a
  head_dim other than hidden/heads, an unknown rope scaling) is a UserError naming it."""
  family = family_of_hf(hf)
  if family == "gpt2":
    _require(hf, "activation_function", lambda v: v in _GELU, f"a GELU: {', '.join(_GELU)}", "gelu_new")
    _require(hf, "scale_attn_weights", lambda v: v is True, "True", True)
    _require(hf, "scale_attn_by_inverse_layer_idx", lambda v: v is False, "False", False)
    _require(hf, "add_cross_attention", lambda v: v is False, "False", False)
    d = int(hf["n_embd"])
    fields = dict(
      d_model=d,
      num_heads=int(hf["n_head"]),
      num_layers=int(hf["n_layer"]),
      d_ff=int(hf.get("n_inner") or 4 * d),
      mlp=_GELU[hf.get("activation_function", "gelu_new")],
      norm="layernorm",
      positions="learned",
      max_len=int(hf.get("n_positions", 1024)),
      norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
      attention_bias="all",
      mlp_bias=True,
    )
  elif family == "gpt_neox":
    fields = _neox_fields(hf)
  else:
    _require(hf, "hidden_act", lambda v: v == "silu", "silu (SwiGLU)", "silu")
    _require(hf, "use_sliding_window", lambda v: not v, "no sliding-window attention", False)
    d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    _require(hf, "head_dim", lambda v: v in (None, d // heads), f"hidden_size/num_attention_heads = {d // heads}")
    if family == "llama":
      bias = "all" if hf.get("attention_bias") else ""
      mlp_bias = bool(hf.get("mlp_bias", False))
    else:  # Qwen2: q/k/v biases always, none on the output or the MLP
      bias, mlp_bias = "qkv", False
    fields = dict(
      d_model=d,
      num_heads=heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or heads),
      num_layers=int(hf["num_hidden_layers"]),
      d_ff=int(hf["intermediate_size"]),
      mlp="swiglu",
      norm="rmsnorm",
      positions="rotary",
      max_len=int(hf.get("max_position_embeddings", 2048)),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      attention_bias=bias,
      mlp_bias=mlp_bias,
      **_rope(hf),
    )
  tie = bool(hf.get("tie_word_embeddings", family == "gpt2"))  # transformers' defaults: GPT-2 ties, the others not
  return ModelConfig(arch="decoder", vocab_size=int(hf["vocab_size"]), tie_embeddings=tie, **{**fields, **overrides})


def _neox_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
  """ModelConfig fields of a GPTNeoXConfig: LayerNorm, rotary over ``rotary_pct`` (``partial_rotary_factor``) of each
  head, biases on every projection (the attention's unless ``attention_bias`` is False), parallel residual."""
  _require(hf, "hidden_act", lambda v: v in _GELU, f"a GELU: {', '.join(_GELU)}", "gelu")
  d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
  _require(hf, "head_dim", lambda v: v in (None, d // heads), f"hidden_size/num_attention_heads = {d // heads}")
  params = dict(hf.get("rope_parameters") or {})
  fraction = float(params.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)))  # transformers' default 0.25
  return dict(
    d_model=d,
    num_heads=heads,
    num_layers=int(hf["num_hidden_layers"]),
    d_ff=int(hf["intermediate_size"]),
    mlp=_GELU[hf.get("hidden_act", "gelu")],
    norm="layernorm",
    positions="rotary",
    rotary_fraction=fraction,
    parallel_residual=bool(hf.get("use_parallel_residual", True)),
    max_len=int(hf.get("max_position_embeddings", 2048)),
    norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
    attention_bias="all" if hf.get("attention_bias", True) else "",
    mlp_bias=True,
    **_rope(hf),
  )


def family_of(c: ModelConfig) -> str:
  """The Hugging Face family that computes the same function as this decoder, or a UserError saying why none does."""
  if c.arch != "decoder":
    raise UserError(f"only a decoder exports to Hugging Face (causal LM), not an {c.arch}")
  shape = (c.positions, c.norm, "gelu" if c.mlp == "gelu_exact" else c.mlp)
  if (c.rotary_fraction != 1.0 or c.parallel_residual) and shape[:2] != ("rotary", "layernorm"):
    raise UserError(
      "partial rotary and parallel residual are GPT-NeoX's, which has rotary positions and LayerNorm; got "
      f"positions={c.positions}, norm={c.norm}"
    )
  if shape == ("rotary", "layernorm", "gelu"):
    if c.attention_bias == "qkv" or not c.mlp_bias or c.num_kv_heads not in (0, c.num_heads):
      raise UserError(
        "a GPT-NeoX-shaped decoder (rotary, LayerNorm, GELU) needs attention_bias=all (or none), mlp_bias=True and "
        f"no grouped-query attention; got attention_bias={c.attention_bias!r}, mlp_bias={c.mlp_bias}, "
        f"num_kv_heads={c.num_kv_heads}"
      )
    return "gpt_neox"
  if shape == ("learned", "layernorm", "gelu"):
    if c.attention_bias != "all" or not c.mlp_bias or c.num_kv_heads not in (0, c.num_heads):
      raise UserError(
        "a GPT-2-shaped decoder (learned positions, LayerNorm, GELU) needs attention_bias=all, mlp_bias=True and no "
        f"grouped-query attention to export as GPT2LMHeadModel; got attention_bias={c.attention_bias!r}, "
        f"mlp_bias={c.mlp_bias}, num_kv_heads={c.num_kv_heads}"
      )
    return "gpt2"
  if shape == ("rotary", "rmsnorm", "swiglu"):
    if c.attention_bias == "qkv":
      if c.mlp_bias:
        raise UserError("q/k/v biases with MLP biases have no Hugging Face class (Qwen2 has no MLP biases)")
      return "qwen2"
    return "llama"
  raise UserError(
    f"this decoder (positions={c.positions}, norm={c.norm}, mlp={c.mlp}) is neither GPT-2 (learned, layernorm, "
    "gelu), GPT-NeoX (rotary, layernorm, gelu) nor Llama/Qwen2 (rotary, rmsnorm, swiglu): no Hugging Face "
    "architecture computes it"
  )


def hf_config(c: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
  """The ``config.json`` of this decoder in its Hugging Face family (``family_of``); special ids are llmcpu's."""
  family = family_of(c)
  common = dict(
    architectures=[_CLASS[family]],
    model_type=family,
    vocab_size=c.vocab_size,
    tie_word_embeddings=c.tie_embeddings,
    torch_dtype=dtype,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
  )
  if family == "gpt2":
    return dict(
      common,
      n_embd=c.d_model,
      n_head=c.num_heads,
      n_layer=c.num_layers,
      n_inner=c.d_ff,
      n_positions=c.max_len,
      n_ctx=c.max_len,
      activation_function="gelu" if c.mlp == "gelu_exact" else "gelu_new",
      layer_norm_epsilon=c.norm_eps,
      scale_attn_weights=True,
      scale_attn_by_inverse_layer_idx=False,
      reorder_and_upcast_attn=False,
      resid_pdrop=0.0,
      embd_pdrop=0.0,
      attn_pdrop=0.0,
    )
  if family == "gpt_neox":
    return dict(
      common,
      hidden_size=c.d_model,
      num_attention_heads=c.num_heads,
      num_hidden_layers=c.num_layers,
      intermediate_size=c.d_ff,
      hidden_act="gelu" if c.mlp == "gelu_exact" else "gelu_new",
      max_position_embeddings=c.max_len,
      layer_norm_eps=c.norm_eps,
      # The keys every transformers version reads (5.x folds them into rope_parameters).
      rotary_pct=c.rotary_fraction,
      rotary_emb_base=c.rope_base,
      rope_scaling=_rope_scaling(c),
      use_parallel_residual=c.parallel_residual,
      attention_bias=c.attention_bias == "all",
      attention_dropout=0.0,
      hidden_dropout=0.0,
    )
  out = dict(
    common,
    hidden_size=c.d_model,
    num_attention_heads=c.num_heads,
    num_key_value_heads=c.kv_heads,
    head_dim=c.head_dim,
    num_hidden_layers=c.num_layers,
    intermediate_size=c.d_ff,
    hidden_act="silu",
    max_position_embeddings=c.max_len,
    rms_norm_eps=c.norm_eps,
    rope_theta=c.rope_base,
    rope_scaling=_rope_scaling(c),
    attention_dropout=0.0,
  )
  if family == "llama":
    out.update(attention_bias=c.attention_bias == "all", mlp_bias=c.mlp_bias, pretraining_tp=1)
  else:
    out.update(use_sliding_window=False, sliding_window=None)
  return out


def _rope_scaling(c: ModelConfig) -> dict[str, Any] | None:
  """config.json's ``rope_scaling`` for this decoder (None: unscaled)."""
  if c.rope_scaling == "linear":
    return dict(rope_type="linear", factor=c.rope_factor)
  if c.rope_scaling == "llama3":
    return dict(
      rope_type="llama3",
      factor=c.rope_factor,
      low_freq_factor=c.rope_low_freq_factor,
      high_freq_factor=c.rope_high_freq_factor,
      original_max_position_embeddings=c.rope_original_max_len,
    )
  return None


# ----------------------------------------------------------------------------------------------------------------
# Tensor layouts: one rule per llmcpu parameter, used both ways
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
  """Our parameter ``path`` is ``to_ours(*tensors named names)``; ``to_hf(ours)`` gives those tensors back."""

  path: tuple
  names: tuple[str, ...]
  to_ours: Callable[..., np.ndarray]
  to_hf: Callable[[np.ndarray], Sequence[np.ndarray]]


def _same(path: tuple, name: str) -> Rule:
  return Rule(path, (name,), lambda w: w, lambda w: (w,))


def _transposed(path: tuple, name: str, shape: tuple) -> Rule:
  """nn.Linear [out, in] ⇄ ours [in, …] (``shape``: ours)."""
  return Rule(path, (name,), lambda w: w.T.reshape(shape), lambda w: (w.reshape(shape[0], -1).T,))


def _out_rule(path: tuple, name: str, shape: tuple) -> Rule:
  """An attention output nn.Linear [D, H·K] ⇄ out [H, K, D] (``shape``)."""
  h, k, d = shape
  return Rule(path, (name,), lambda w: w.T.reshape(h, k, d), lambda w: (w.reshape(h * k, d).T,))


def _stacked(path: tuple, names: tuple[str, ...], axis: int, each: Callable, back: Callable) -> Rule:
  """Several HF tensors stacked on ``axis`` of ours (fused q/k/v, gate/up): ``each`` maps one, ``back`` inverts."""
  return Rule(
    path,
    names,
    lambda *ws: np.stack([each(w) for w in ws], axis=axis),
    lambda w: tuple(back(x) for x in np.moveaxis(w, axis, 0)),
  )


def _norm_rules(path: tuple, name: str, c: ModelConfig, bias_name: str = "bias") -> list[Rule]:
  rules = [_same((*path, "scale"), f"{name}.weight")]
  if c.norm == "layernorm":
    rules.append(_same((*path, "bias"), f"{name}.{bias_name}"))
  return rules


def _gpt2_rules(c: ModelConfig, p: str) -> list[Rule]:
  d, h, k = c.d_model, c.num_heads, c.head_dim
  rules = [_same(("embed", "table"), f"{p}wte.weight"), _same(("decoder", "pos_embed", "table"), f"{p}wpe.weight")]
  for i in range(c.num_layers):
    ours, hf = ("decoder", "layers", i), f"{p}h.{i}."
    rules += _norm_rules((*ours, "attn_norm"), f"{hf}ln_1", c)
    rules += [
      # c_attn [D, 3D] (q | k | v, each head-major) ⇄ qkv [D, H, 3, K]
      Rule(
        (*ours, "attn", "qkv"),
        (f"{hf}attn.c_attn.weight",),
        lambda w: w.reshape(d, 3, h, k).transpose(0, 2, 1, 3),
        lambda w: (w.transpose(0, 2, 1, 3).reshape(d, 3 * d),),
      ),
      Rule(
        (*ours, "attn", "qkv_bias"),
        (f"{hf}attn.c_attn.bias",),
        lambda b: b.reshape(3, h, k).transpose(1, 0, 2),
        lambda b: (b.transpose(1, 0, 2).reshape(3 * d),),
      ),
      Rule(
        (*ours, "attn", "out"), (f"{hf}attn.c_proj.weight",), lambda w: w.reshape(h, k, d), lambda w: (w.reshape(d, d),)
      ),
      _same((*ours, "attn", "out_bias"), f"{hf}attn.c_proj.bias"),
    ]
    rules += _norm_rules((*ours, "mlp_norm"), f"{hf}ln_2", c)
    rules += [
      _same((*ours, "mlp", "wi"), f"{hf}mlp.c_fc.weight"),
      _same((*ours, "mlp", "bi"), f"{hf}mlp.c_fc.bias"),
      _same((*ours, "mlp", "wo"), f"{hf}mlp.c_proj.weight"),
      _same((*ours, "mlp", "bo"), f"{hf}mlp.c_proj.bias"),
    ]
  rules += _norm_rules(("decoder", "final_norm"), f"{p}ln_f", c)
  if not c.tie_embeddings:
    rules.append(_transposed(("head", "kernel"), "lm_head.weight", (d, c.vocab_size)))
  return rules


def _neox_rules(c: ModelConfig, p: str) -> list[Rule]:
  d, h, k, f = c.d_model, c.num_heads, c.head_dim, c.d_ff
  rules = [_same(("embed", "table"), f"{p}embed_in.weight")]
  for i in range(c.num_layers):
    ours, hf = ("decoder", "layers", i), f"{p}layers.{i}."
    a = f"{hf}attention."
    rules += _norm_rules((*ours, "attn_norm"), f"{hf}input_layernorm", c)
    # query_key_value [3D, D], rows h·3K + j·K + k (j: q, k, v) ⇄ qkv [D, H, 3, K]; its bias [3D] ⇄ [H, 3, K]
    rules.append(
      Rule(
        (*ours, "attn", "qkv"),
        (f"{a}query_key_value.weight",),
        lambda w: w.reshape(h, 3, k, d).transpose(3, 0, 1, 2),
        lambda w: (w.transpose(1, 2, 3, 0).reshape(3 * d, d),),
      )
    )
    rules.append(_out_rule((*ours, "attn", "out"), f"{a}dense.weight", (h, k, d)))
    if c.attention_bias:
      rules.append(
        Rule((*ours, "attn", "qkv_bias"), (f"{a}query_key_value.bias",), lambda b: b.reshape(h, 3, k),
             lambda b: (b.reshape(3 * d),))
      )  # fmt: skip
      rules.append(_same((*ours, "attn", "out_bias"), f"{a}dense.bias"))
    rules += _norm_rules((*ours, "mlp_norm"), f"{hf}post_attention_layernorm", c)
    rules += [
      _transposed((*ours, "mlp", "wi"), f"{hf}mlp.dense_h_to_4h.weight", (d, f)),
      _same((*ours, "mlp", "bi"), f"{hf}mlp.dense_h_to_4h.bias"),
      _transposed((*ours, "mlp", "wo"), f"{hf}mlp.dense_4h_to_h.weight", (f, d)),
      _same((*ours, "mlp", "bo"), f"{hf}mlp.dense_4h_to_h.bias"),
    ]
  rules += _norm_rules(("decoder", "final_norm"), f"{p}final_layer_norm", c)
  if not c.tie_embeddings:
    rules.append(_transposed(("head", "kernel"), HEADS["gpt_neox"], (d, c.vocab_size)))
  return rules


def _llama_rules(c: ModelConfig, p: str) -> list[Rule]:
  d, h, g, k, f = c.d_model, c.num_heads, c.kv_heads, c.head_dim, c.d_ff
  rules = [_same(("embed", "table"), f"{p}embed_tokens.weight")]
  for i in range(c.num_layers):
    ours, hf = ("decoder", "layers", i), f"{p}layers.{i}."
    a = f"{hf}self_attn."
    q, kk, v = (f"{a}{n}_proj" for n in "qkv")
    rules += _norm_rules((*ours, "attn_norm"), f"{hf}input_layernorm", c)
    if g == h:  # fused [D, H, 3, K]
      rules.append(
        _stacked((*ours, "attn", "qkv"), (f"{q}.weight", f"{kk}.weight", f"{v}.weight"), 2,
                 lambda w: w.T.reshape(d, h, k), lambda w: w.reshape(d, h * k).T)
      )  # fmt: skip
      if c.attention_bias:
        rules.append(
          _stacked((*ours, "attn", "qkv_bias"), (f"{q}.bias", f"{kk}.bias", f"{v}.bias"), 1,
                   lambda b: b.reshape(h, k), lambda b: b.reshape(h * k))
        )  # fmt: skip
    else:  # grouped: q [D, H, K], kv [D, G, 2, K]
      rules.append(_transposed((*ours, "attn", "q"), f"{q}.weight", (d, h, k)))
      rules.append(
        _stacked((*ours, "attn", "kv"), (f"{kk}.weight", f"{v}.weight"), 2,
                 lambda w: w.T.reshape(d, g, k), lambda w: w.reshape(d, g * k).T)
      )  # fmt: skip
      if c.attention_bias:
        rules.append(
          Rule((*ours, "attn", "q_bias"), (f"{q}.bias",), lambda b: b.reshape(h, k), lambda b: (b.reshape(-1),))
        )
        rules.append(
          _stacked((*ours, "attn", "kv_bias"), (f"{kk}.bias", f"{v}.bias"), 1,
                   lambda b: b.reshape(g, k), lambda b: b.reshape(g * k))
        )  # fmt: skip
    rules.append(_out_rule((*ours, "attn", "out"), f"{a}o_proj.weight", (h, k, d)))
    if c.attention_bias == "all":
      rules.append(_same((*ours, "attn", "out_bias"), f"{a}o_proj.bias"))
    rules += _norm_rules((*ours, "mlp_norm"), f"{hf}post_attention_layernorm", c)
    m = f"{hf}mlp."
    rules.append(
      _stacked((*ours, "mlp", "wi"), (f"{m}gate_proj.weight", f"{m}up_proj.weight"), 2, lambda w: w.T, lambda w: w.T)
    )
    rules.append(_transposed((*ours, "mlp", "wo"), f"{m}down_proj.weight", (f, d)))
    if c.mlp_bias:
      rules.append(
        _stacked((*ours, "mlp", "bi"), (f"{m}gate_proj.bias", f"{m}up_proj.bias"), 1, lambda b: b, lambda b: b)
      )
      rules.append(_same((*ours, "mlp", "bo"), f"{m}down_proj.bias"))
  rules += _norm_rules(("decoder", "final_norm"), f"{p}norm", c)
  if not c.tie_embeddings:
    rules.append(_transposed(("head", "kernel"), "lm_head.weight", (d, c.vocab_size)))
  return rules


def rules(c: ModelConfig, names: Sequence[str] | None = None) -> list[Rule]:
  """The layout rules of this decoder's family. ``names`` (a checkpoint's tensor names) picks the prefix its
  weights were saved under: ``transformer.``/``model.`` (from the LM class, as ``save`` writes) or none."""
  family = family_of(c)
  prefix, first, build = _LAYOUT[family]
  if names is not None and prefix + first not in names and first in names:
    prefix = ""
  return build(c, prefix)


# family → (the LM class's prefix of the body's weights, the first body weight, the rules); the untied head's name.
_LAYOUT = {
  "gpt2": ("transformer.", "wte.weight", _gpt2_rules),
  "gpt_neox": ("gpt_neox.", "embed_in.weight", _neox_rules),
  "llama": ("model.", "embed_tokens.weight", _llama_rules),
  "qwen2": ("model.", "embed_tokens.weight", _llama_rules),
}
HEADS = {"gpt2": "lm_head.weight", "gpt_neox": "embed_out.weight", "llama": "lm_head.weight", "qwen2": "lm_head.weight"}


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


class Weights:
  """The tensors of a Hugging Face directory, read one at a time (``safe_open``: memory-mapped, lazily)."""

  def __init__(self, path: str):
    from safetensors import safe_open

    if fs.is_uri(path):
      raise UserError(f"{path}: read Hugging Face weights from a local directory (copy it from the bucket first)")
    index, single = os.path.join(path, INDEX), os.path.join(path, WEIGHTS)
    if os.path.isfile(index):
      weight_map = json.loads(fs.read_text(index))["weight_map"]
      files = sorted(set(weight_map.values()))
    elif os.path.isfile(single):
      files, weight_map = [WEIGHTS], None
    else:
      found = ", ".join(sorted(os.listdir(path))) if os.path.isdir(path) else "no such directory"
      raise UserError(f"{path}: no {WEIGHTS} or {INDEX} (found: {found}); llmcpu reads safetensors weights only")
    self._handles = {}
    for name in files:
      file = os.path.join(path, name)
      if not os.path.isfile(file):
        raise UserError(f"{path}: {name} is missing (listed in {INDEX})")
      self._handles[name] = safe_open(file, framework="numpy")
    self._where = weight_map or {key: WEIGHTS for key in self._handles[WEIGHTS].keys()}  # noqa: SIM118

  def names(self) -> set[str]:
    return set(self._where)

  def get(self, name: str) -> np.ndarray:
    """The tensor as float32 (stored float32, float16 or bfloat16)."""
    if name not in self._where:
      raise UserError(f"the checkpoint has no tensor {name!r}")
    t = self._handles[self._where[name]].get_tensor(name)
    if t.dtype not in (np.float32, np.float16, np.float64, ml_dtypes.bfloat16):
      raise UserError(f"tensor {name} is {t.dtype}; llmcpu reads float32, float16 and bfloat16 weights")
    return t.astype(np.float32, copy=False)  # a float32 file's tensor is not copied again


def read_config(path: str) -> dict[str, Any]:
  file = fs.join(path, CONFIG)
  if not fs.isfile(file):
    raise UserError(f"{path}: no {CONFIG} (a Hugging Face model directory has config.json + model.safetensors)")
  return json.loads(fs.read_text(file))


def load(path: str, **overrides: Any) -> Decoder:
  """An llmcpu ``Decoder`` from a Hugging Face directory; ``overrides`` are runtime ModelConfig fields (``dtype``,
  ``attention_impl``). Every tensor must be used and every parameter found (buffers such as GPT-2's causal mask and
  a tied ``lm_head.weight`` are skipped), or nothing is returned."""
  config = config_from_hf(read_config(path), **overrides)
  weights = Weights(path)
  return from_tensors(config, weights.get, weights.names())


def from_tensors(config: ModelConfig, get: Callable[[str], np.ndarray], names: set[str]) -> Decoder:
  """A ``Decoder`` for ``config`` whose parameters are read with ``get(name)`` (float32 arrays), one at a time."""
  from llmcpu.models import create_from_config

  graphdef, state = nnx.split(nnx.eval_shape(lambda: create_from_config(config)))  # shapes only: no init
  flat = dict(nnx.to_flat_state(state))
  used = set()
  for rule in rules(config, names):
    missing = [n for n in rule.names if n not in names]
    if missing:
      raise UserError(
        f"the checkpoint lacks {', '.join(missing)} (a {family_of(config)} model with this config.json needs it)"
      )
    value = np.ascontiguousarray(rule.to_ours(*(get(n) for n in rule.names)), np.float32)
    want = flat[rule.path].get_value().shape
    if value.shape != want:
      raise UserError(
        f"{', '.join(rule.names)} give shape {value.shape} for {'/'.join(map(str, rule.path))}, config.json says {want}"
      )
    flat[rule.path].set_value(jnp.asarray(value))
    used.update(rule.names)
  head = {HEADS[family_of(config)]} if config.tie_embeddings else set()  # a tied head's copy, if the file has one
  ignored = {n for n in names if n.endswith(_BUFFERS)} | head
  extra = sorted(names - used - ignored)
  if extra:
    raise UserError(
      f"the checkpoint has tensors llmcpu would not use: {', '.join(extra[:5])}{' …' if len(extra) > 5 else ''}"
    )
  unset = [p for p, v in flat.items() if isinstance(v, nnx.Param) and not isinstance(v.get_value(), jnp.ndarray)]
  assert not unset, unset  # every parameter has a rule
  flat[("illegal_opcodes",)].set_value(jnp.asarray(np.zeros((), np.int32)))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def to_tensors(model: Decoder, dtype: str = "float32") -> Iterator[tuple[str, np.ndarray]]:
  """(Hugging Face name, tensor) pairs of a decoder, one parameter at a time, in ``dtype`` (float32 | bfloat16)."""
  if dtype not in _DTYPES:
    raise UserError(f"export dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  for rule in rules(model.config):
    for name, t in zip(rule.names, rule.to_hf(np.asarray(flat[rule.path].get_value(), np.float32)), strict=True):
      yield name, np.ascontiguousarray(t.astype(_DTYPES[dtype]))


def save(model: Decoder, path: str, dtype: str = "float32", config_extra: Mapping[str, Any] | None = None) -> None:
  """Writes ``config.json`` + ``model.safetensors`` (``dtype``: float32 | bfloat16) to the directory ``path``,
  replacing it; a failure leaves no directory that looks complete (``config.json`` is written last).
  ``config_extra`` adds or replaces config.json keys the model does not know, such as the special ids of a
  tokenizer that is not llmcpu's (``bos_token_id``…). The converted tensors are held together while the file is
  written: a second copy of the weights, in ``dtype``."""
  from safetensors.numpy import save as to_bytes
  from safetensors.numpy import save_file

  config = hf_config(model.config, dtype)  # refuses an inexpressible model before anything is written
  clash = sorted(set(config_extra or {}) & (set(config) - {"bos_token_id", "eos_token_id", "pad_token_id"}))
  if clash:
    raise UserError(f"config_extra may not change what the weights define: {', '.join(clash)}")
  config.update(config_extra or {})
  tensors = dict(to_tensors(model, dtype))
  with fs.staged(path, CONFIG) as tmp:
    meta = {"format": "pt"}  # what transformers expects of a PyTorch checkpoint's safetensors
    if fs.is_uri(tmp):
      fs.write_bytes(fs.join(tmp, WEIGHTS), to_bytes(tensors, metadata=meta))
    else:  # straight to disk: no second copy of the weights as one bytes object
      save_file(tensors, os.path.join(tmp, WEIGHTS), metadata=meta)
    fs.write_text(fs.join(tmp, CONFIG), json.dumps(config, indent=2) + "\n")
