"""Hugging Face import/export (llmcpu.models.hf) against independent float64 numpy forward passes.

The references below are written from the Hugging Face weight names and the equations of transformers' modeling
code (GPT-2: ``modeling_gpt2.py``; Llama/Qwen2: ``modeling_llama.py``/``modeling_qwen2.py``), not from llmcpu's
modules (test_hf_transformers.py checks these references, and llmcpu, against ``transformers`` itself where it is
installed). Checkpoints are random tiny models written by the test with the ``safetensors`` package, in the layout
``save_pretrained`` produces.
"""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

import llmcpu.models as models
from llmcpu.errors import UserError
from llmcpu.models import hf

L = 12  # sequence length of the checks


# ----------------------------------------------------------------------------------------------------------------
# Random checkpoints in Hugging Face's layout
# ----------------------------------------------------------------------------------------------------------------


def _rand(rng, *shape, scale=0.2, center=0.0):
  return (center + scale * rng.normal(size=shape)).astype(np.float32)


def gpt2_checkpoint(seed: int, *, hub_names: bool, tied: bool = True, act: str = "gelu_new") -> tuple[dict, dict]:
  """(config.json, tensors) of a random tiny GPT2LMHeadModel. ``hub_names``: the names the gpt2 repo's file uses
  (GPT2Model's: no ``transformer.`` prefix, with the ``attn.bias`` causal-mask buffers); else save_pretrained's."""
  cfg = dict(
    architectures=["GPT2LMHeadModel"],
    model_type="gpt2",
    vocab_size=61,
    n_embd=32,
    n_head=4,
    n_layer=2,
    n_positions=16,
    n_inner=None,
    activation_function=act,
    layer_norm_epsilon=1e-5,
    tie_word_embeddings=tied,
  )
  rng = np.random.default_rng(seed)
  d, f, p = 32, 128, "" if hub_names else "transformer."
  t = {f"{p}wte.weight": _rand(rng, 61, d), f"{p}wpe.weight": _rand(rng, 16, d)}
  for i in range(2):
    h = f"{p}h.{i}."
    for ln in ("ln_1", "ln_2"):
      t[f"{h}{ln}.weight"], t[f"{h}{ln}.bias"] = _rand(rng, d, scale=0.1, center=1.0), _rand(rng, d, scale=0.1)
    t[f"{h}attn.c_attn.weight"], t[f"{h}attn.c_attn.bias"] = _rand(rng, d, 3 * d), _rand(rng, 3 * d)
    t[f"{h}attn.c_proj.weight"], t[f"{h}attn.c_proj.bias"] = _rand(rng, d, d), _rand(rng, d)
    t[f"{h}mlp.c_fc.weight"], t[f"{h}mlp.c_fc.bias"] = _rand(rng, d, f), _rand(rng, f)
    t[f"{h}mlp.c_proj.weight"], t[f"{h}mlp.c_proj.bias"] = _rand(rng, f, d, scale=0.1), _rand(rng, d)
    if hub_names:
      t[f"{h}attn.bias"] = np.tril(np.ones((16, 16), np.float32))[None, None]
  t[f"{p}ln_f.weight"], t[f"{p}ln_f.bias"] = _rand(rng, d, scale=0.1, center=1.0), _rand(rng, d, scale=0.1)
  if not tied:
    t["lm_head.weight"] = _rand(rng, 61, d)
  return cfg, t


def llama_checkpoint(seed: int, *, kind: str, kv_heads: int, tied: bool, rope_scaling=None, biases=False):
  """(config.json, tensors) of a random tiny LlamaForCausalLM (``biases``: attention_bias + mlp_bias) or
  Qwen2ForCausalLM (q/k/v biases)."""
  d, h, k, f, v = 32, 4, 8, 48, 53
  cfg = dict(
    architectures=["Qwen2ForCausalLM" if kind == "qwen2" else "LlamaForCausalLM"],
    model_type=kind,
    vocab_size=v,
    hidden_size=d,
    num_attention_heads=h,
    num_key_value_heads=kv_heads,
    num_hidden_layers=2,
    intermediate_size=f,
    hidden_act="silu",
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    rope_theta=100.0,  # small, so positions up to L turn every frequency band through the scaling rules
    rope_scaling=rope_scaling,
    tie_word_embeddings=tied,
  )
  if kind == "llama":
    cfg.update(attention_bias=biases, mlp_bias=biases)
  else:
    cfg.update(use_sliding_window=False, sliding_window=4096)
  rng = np.random.default_rng(seed)
  t = {"model.embed_tokens.weight": _rand(rng, v, d, scale=0.5)}
  qkv_bias, out_bias = kind == "qwen2" or biases, biases
  for i in range(2):
    p = f"model.layers.{i}."
    t[f"{p}input_layernorm.weight"] = _rand(rng, d, scale=0.1, center=1.0)
    t[f"{p}post_attention_layernorm.weight"] = _rand(rng, d, scale=0.1, center=1.0)
    for name, rows in (("q", h * k), ("k", kv_heads * k), ("v", kv_heads * k)):
      t[f"{p}self_attn.{name}_proj.weight"] = _rand(rng, rows, d)
      if qkv_bias:
        t[f"{p}self_attn.{name}_proj.bias"] = _rand(rng, rows)
    t[f"{p}self_attn.o_proj.weight"] = _rand(rng, d, h * k)
    if out_bias:
      t[f"{p}self_attn.o_proj.bias"] = _rand(rng, d)
    for name, shape in (("gate", (f, d)), ("up", (f, d)), ("down", (d, f))):
      t[f"{p}mlp.{name}_proj.weight"] = _rand(rng, *shape)
      if biases:
        t[f"{p}mlp.{name}_proj.bias"] = _rand(rng, shape[0])
  t["model.norm.weight"] = _rand(rng, d, scale=0.1, center=1.0)
  if not tied:
    t["lm_head.weight"] = _rand(rng, v, d)
  return cfg, t


def neox_checkpoint(seed: int, *, parallel: bool, fraction: float, act: str, tied: bool, legacy_keys: bool):
  """(config.json, tensors) of a random tiny GPTNeoXForCausalLM (Pythia's class). ``legacy_keys``: the rotary keys
  Pythia's hub configs carry (``rotary_pct``, ``rotary_emb_base``), else transformers 5's ``rope_parameters``."""
  d, h, f, v = 32, 4, 64, 59
  cfg = dict(
    architectures=["GPTNeoXForCausalLM"],
    model_type="gpt_neox",
    vocab_size=v,
    hidden_size=d,
    num_attention_heads=h,
    num_hidden_layers=2,
    intermediate_size=f,
    hidden_act=act,
    max_position_embeddings=64,
    layer_norm_eps=1e-5,
    use_parallel_residual=parallel,
    tie_word_embeddings=tied,
  )
  if legacy_keys:
    cfg.update(rotary_pct=fraction, rotary_emb_base=100.0)
  else:
    cfg["rope_parameters"] = dict(rope_type="default", rope_theta=100.0, partial_rotary_factor=fraction)
  rng = np.random.default_rng(seed)
  t = {"gpt_neox.embed_in.weight": _rand(rng, v, d, scale=0.5)}
  for i in range(2):
    p = f"gpt_neox.layers.{i}."
    for ln in ("input_layernorm", "post_attention_layernorm"):
      t[f"{p}{ln}.weight"], t[f"{p}{ln}.bias"] = _rand(rng, d, scale=0.1, center=1.0), _rand(rng, d, scale=0.1)
    t[f"{p}attention.query_key_value.weight"], t[f"{p}attention.query_key_value.bias"] = (
      _rand(rng, 3 * d, d),
      _rand(rng, 3 * d),
    )
    t[f"{p}attention.dense.weight"], t[f"{p}attention.dense.bias"] = _rand(rng, d, d), _rand(rng, d)
    t[f"{p}mlp.dense_h_to_4h.weight"], t[f"{p}mlp.dense_h_to_4h.bias"] = _rand(rng, f, d), _rand(rng, f)
    t[f"{p}mlp.dense_4h_to_h.weight"], t[f"{p}mlp.dense_4h_to_h.bias"] = _rand(rng, d, f, scale=0.1), _rand(rng, d)
  t["gpt_neox.final_layer_norm.weight"] = _rand(rng, d, scale=0.1, center=1.0)
  t["gpt_neox.final_layer_norm.bias"] = _rand(rng, d, scale=0.1)
  if not tied:
    t["embed_out.weight"] = _rand(rng, v, d)
  return cfg, t


LLAMA3 = dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=64)  # fmt: skip
CASES = {
  "gpt2_hub_names": lambda: gpt2_checkpoint(0, hub_names=True),
  "gpt2_untied": lambda: gpt2_checkpoint(1, hub_names=False, tied=False),
  "llama_gqa_llama3_rope": lambda: llama_checkpoint(2, kind="llama", kv_heads=2, tied=False, rope_scaling=LLAMA3),
  "llama_biases_linear_rope": lambda: llama_checkpoint(
    3, kind="llama", kv_heads=4, tied=True, rope_scaling=dict(type="linear", factor=2.0), biases=True
  ),
  "qwen2": lambda: llama_checkpoint(4, kind="qwen2", kv_heads=4, tied=True),
  # Pythia's shape: parallel residual, a quarter of each head rotated, exact GELU, untied head, its hub config's keys
  "gpt_neox_pythia": lambda: neox_checkpoint(6, parallel=True, fraction=0.25, act="gelu", tied=False, legacy_keys=True),
  "gpt_neox_sequential": lambda: neox_checkpoint(
    7, parallel=False, fraction=0.5, act="gelu_new", tied=True, legacy_keys=False
  ),
  "gpt2_exact_gelu": lambda: gpt2_checkpoint(8, hub_names=False, act="gelu"),
  "qwen2_gqa": lambda: llama_checkpoint(5, kind="qwen2", kv_heads=1, tied=False),
}


def write(path, cfg: dict, tensors: dict, dtype=np.float32) -> str:
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(cfg, f)
  save_file({k: v.astype(dtype) for k, v in tensors.items()}, os.path.join(path, "model.safetensors"))
  return str(path)


def read(path) -> dict[str, np.ndarray]:
  with safe_open(os.path.join(path, "model.safetensors"), "numpy") as f:
    return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


# ----------------------------------------------------------------------------------------------------------------
# float64 references, from the Hugging Face equations
# ----------------------------------------------------------------------------------------------------------------


def _causal_attention(q, k, v):
  """q [H, L, K], k/v [H, L, K] → [L, H·K]: softmax(q·kᵀ/√K) over keys ≤ the query, heads concatenated."""
  s = np.einsum("hik,hjk->hij", q, k) / math.sqrt(q.shape[-1])
  s = np.where(np.tril(np.ones(s.shape[1:], bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("hij,hjk->ihk", p, v).reshape(q.shape[1], -1)


def _gelu(name: str):
  """transformers' ACT2FN[name]: 'gelu' is exact (erf), gelu_new/gelu_pytorch_tanh the tanh approximation."""
  if name == "gelu":
    return np.vectorize(lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))))
  return lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _layer_norm(x, w, b, eps):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def np_gpt2(cfg: dict, t: dict, ids: np.ndarray) -> np.ndarray:
  t = {k.removeprefix("transformer."): v.astype(np.float64) for k, v in t.items()}
  h, eps = cfg["n_head"], cfg["layer_norm_epsilon"]

  def ln(x, name):
    return _layer_norm(x, t[f"{name}.weight"], t[f"{name}.bias"], eps)

  gelu = _gelu(cfg.get("activation_function", "gelu_new"))
  out = []
  for row in ids:
    x = t["wte.weight"][row] + t["wpe.weight"][: len(row)]
    for i in range(cfg["n_layer"]):
      p = f"h.{i}."
      a = ln(x, p + "ln_1") @ t[p + "attn.c_attn.weight"] + t[p + "attn.c_attn.bias"]
      q, k, v = (m.reshape(len(row), h, -1).transpose(1, 0, 2) for m in np.split(a, 3, axis=-1))
      x = x + _causal_attention(q, k, v) @ t[p + "attn.c_proj.weight"] + t[p + "attn.c_proj.bias"]
      m = gelu(ln(x, p + "ln_2") @ t[p + "mlp.c_fc.weight"] + t[p + "mlp.c_fc.bias"])
      x = x + m @ t[p + "mlp.c_proj.weight"] + t[p + "mlp.c_proj.bias"]
    x = ln(x, "ln_f")
    out.append(x @ t.get("lm_head.weight", t["wte.weight"]).T)
  return np.stack(out)


def np_inv_freq(cfg: dict, dim: int) -> np.ndarray:
  """transformers' rope init functions (default, linear, llama3), one frequency at a time."""
  inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, dim, 2) / dim)
  s = cfg.get("rope_scaling")
  kind = (s or {}).get("rope_type", (s or {}).get("type"))
  if kind == "linear":
    return inv / s["factor"]
  if kind == "llama3":
    orig, lo, hi, factor = (
      s["original_max_position_embeddings"],
      s["low_freq_factor"],
      s["high_freq_factor"],
      s["factor"],
    )
    out = []
    for f in inv:
      wavelen = 2 * math.pi / f
      if wavelen < orig / hi:  # high frequency: kept
        out.append(f)
      elif wavelen > orig / lo:  # low frequency: interpolated by the factor
        out.append(f / factor)
      else:
        smooth = (orig / wavelen - lo) / (hi - lo)
        out.append((1 - smooth) * f / factor + smooth * f)
    return np.array(out)
  return inv


def _np_rope(x: np.ndarray, inv: np.ndarray, rot: int) -> np.ndarray:
  """x [heads, L, dim] with rotate_half (modeling_llama/modeling_gpt_neox) on its first ``rot`` dims, frequencies
  ``inv``; the other dims pass through (GPT-NeoX's partial rotary)."""
  freqs = np.arange(x.shape[1])[:, None] * inv[None]
  emb = np.concatenate([freqs, freqs], -1)
  r, rest = x[..., :rot], x[..., rot:]
  turned = np.concatenate([-r[..., rot // 2 :], r[..., : rot // 2]], -1)
  return np.concatenate([r * np.cos(emb) + turned * np.sin(emb), rest], -1)


def np_llama(cfg: dict, t: dict, ids: np.ndarray) -> np.ndarray:
  t = {k: v.astype(np.float64) for k, v in t.items()}
  h, g, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rms_norm_eps"]
  dim = cfg["hidden_size"] // h
  inv = np_inv_freq(cfg, dim)

  def rms(x, w):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w

  def linear(x, name):
    return x @ t[name + ".weight"].T + t.get(name + ".bias", 0.0)

  out = []
  for row in ids:
    x = t["model.embed_tokens.weight"][row]
    n = len(row)
    for i in range(cfg["num_hidden_layers"]):
      p = f"model.layers.{i}."
      a = rms(x, t[p + "input_layernorm.weight"])
      q = linear(a, p + "self_attn.q_proj").reshape(n, h, dim).transpose(1, 0, 2)
      k = linear(a, p + "self_attn.k_proj").reshape(n, g, dim).transpose(1, 0, 2)
      v = linear(a, p + "self_attn.v_proj").reshape(n, g, dim).transpose(1, 0, 2)
      q, k = _np_rope(q, inv, dim), _np_rope(k, inv, dim)
      k, v = np.repeat(k, h // g, axis=0), np.repeat(v, h // g, axis=0)  # repeat_kv
      x = x + linear(_causal_attention(q, k, v), p + "self_attn.o_proj")
      m = rms(x, t[p + "post_attention_layernorm.weight"])
      gate = linear(m, p + "mlp.gate_proj")
      x = x + linear(gate / (1 + np.exp(-gate)) * linear(m, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, t["model.norm.weight"])
    out.append(x @ t.get("lm_head.weight", t["model.embed_tokens.weight"]).T)
  return np.stack(out)


def np_neox(cfg: dict, t: dict, ids: np.ndarray) -> np.ndarray:
  """modeling_gpt_neox: fused query_key_value viewed [L, H, 3K] (q, k, v per head), rotary on the first
  int(K·rotary_pct) dims, parallel or sequential residual, exact or tanh GELU, untied ``embed_out``."""
  t = {k: v.astype(np.float64) for k, v in t.items()}
  h, eps, gelu = cfg["num_attention_heads"], cfg["layer_norm_eps"], _gelu(cfg["hidden_act"])
  rope = cfg.get("rope_parameters") or {}
  fraction, theta = (
    rope.get("partial_rotary_factor", cfg.get("rotary_pct")),
    rope.get("rope_theta", cfg.get("rotary_emb_base")),
  )
  dim = cfg["hidden_size"] // h
  rot = int(dim * fraction)
  inv = 1.0 / theta ** (np.arange(0, rot, 2) / rot)

  def ln(x, name):
    return _layer_norm(x, t[name + ".weight"], t[name + ".bias"], eps)

  def linear(x, name):
    return x @ t[name + ".weight"].T + t[name + ".bias"]

  def mlp(y, p):
    return linear(gelu(linear(y, p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")

  out = []
  for row in ids:
    x = t["gpt_neox.embed_in.weight"][row]
    n = len(row)
    for i in range(cfg["num_hidden_layers"]):
      p = f"gpt_neox.layers.{i}."
      qkv = linear(ln(x, p + "input_layernorm"), p + "attention.query_key_value").reshape(n, h, 3 * dim)
      q, k, v = (m.transpose(1, 0, 2) for m in np.split(qkv, 3, axis=-1))
      a = linear(_causal_attention(_np_rope(q, inv, rot), _np_rope(k, inv, rot), v), p + "attention.dense")
      if cfg["use_parallel_residual"]:
        x = x + a + mlp(ln(x, p + "post_attention_layernorm"), p)
      else:
        x = x + a
        x = x + mlp(ln(x, p + "post_attention_layernorm"), p)
    x = ln(x, "gpt_neox.final_layer_norm")
    out.append(x @ t.get("embed_out.weight", t["gpt_neox.embed_in.weight"]).T)
  return np.stack(out)


def reference(cfg: dict, tensors: dict, ids: np.ndarray) -> np.ndarray:
  return {"gpt2": np_gpt2, "gpt_neox": np_neox}.get(cfg["model_type"], np_llama)(cfg, tensors, ids)


def ids_for(cfg: dict) -> np.ndarray:
  return np.random.default_rng(7).integers(0, cfg["vocab_size"], (2, L))


def relative_error(got, want) -> float:
  return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, ids):
  return nnx.merge(graphdef, state, copy=True)(ids)


def logits(model, ids) -> np.ndarray:
  return np.asarray(_forward(*nnx.split(model), ids))


def params(model) -> dict:
  return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# ----------------------------------------------------------------------------------------------------------------
# Import, export, round trip
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_reference_and_export_round_trips(case, tmp_path):
  cfg, tensors = CASES[case]()
  model = hf.load(write(tmp_path / "src", cfg, tensors))
  assert models.param_count(model) == models.expected_param_count(model.config)
  ids = ids_for(cfg)
  want = reference(cfg, tensors, ids)
  got = logits(model, ids)
  assert got.dtype == np.float32
  assert relative_error(got, want) < 1e-4, relative_error(got, want)

  # Export: the same tensors bit for bit (our names carry the LM class's prefix; buffers are not weights).
  hf.save(model, str(tmp_path / "out"))
  exported = read(tmp_path / "out")
  source = {
    ("transformer." + k if cfg["model_type"] == "gpt2" and not k.startswith(("transformer.", "lm_head")) else k): v
    for k, v in tensors.items()
    if not k.endswith(".attn.bias")
  }
  assert sorted(exported) == sorted(source)
  for name, value in source.items():
    assert exported[name].dtype == np.float32 and np.array_equal(exported[name], value), name
  out_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
  assert out_cfg["architectures"] == cfg["architectures"]
  again = hf.load(str(tmp_path / "out"))
  assert again.config == model.config
  a, b = params(model), params(again)
  assert sorted(a) == sorted(b) and all(np.array_equal(a[p], b[p]) for p in a)
  np.testing.assert_array_equal(logits(again, ids), got)


def test_bfloat16_checkpoints(tmp_path):
  cfg, tensors = CASES["llama_gqa_llama3_rope"]()
  model = hf.load(write(tmp_path / "src", cfg, tensors, dtype=ml_dtypes.bfloat16))
  rounded = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in tensors.items()}
  ids = ids_for(cfg)
  assert relative_error(logits(model, ids), reference(cfg, rounded, ids)) < 1e-4
  assert relative_error(logits(model, ids), reference(cfg, tensors, ids)) > 1e-4  # the rounding is really there
  hf.save(model, str(tmp_path / "out"), dtype="bfloat16")
  exported, source = read(tmp_path / "out"), read(tmp_path / "src")
  assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
  assert sorted(exported) == sorted(source)
  for name in source:
    assert exported[name].dtype == ml_dtypes.bfloat16
    assert exported[name].tobytes() == source[name].tobytes(), name


def test_sharded_checkpoint_and_each_tensor_read_once(tmp_path, monkeypatch):
  cfg, tensors = CASES["qwen2_gqa"]()
  names = sorted(tensors)
  half = {n: ("model-00001-of-00002.safetensors" if i % 2 else "model-00002-of-00002.safetensors")
          for i, n in enumerate(names)}  # fmt: skip
  os.makedirs(tmp_path / "src")
  (tmp_path / "src" / "config.json").write_text(json.dumps(cfg))
  (tmp_path / "src" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": half}))
  for file in set(half.values()):
    save_file({n: tensors[n] for n in names if half[n] == file}, str(tmp_path / "src" / file))
  reads: list[str] = []
  get = hf.Weights.get
  monkeypatch.setattr(hf.Weights, "get", lambda self, name: reads.append(name) or get(self, name))
  model = hf.load(str(tmp_path / "src"))
  assert sorted(reads) == names  # streamed: every tensor read once, none twice
  ids = ids_for(cfg)
  assert relative_error(logits(model, ids), reference(cfg, tensors, ids)) < 1e-4


@pytest.mark.parametrize(
  "overrides",
  [
    dict(positions="learned", norm="layernorm", attention_bias="all", mlp_bias=True, norm_eps=1e-5),
    dict(mlp="swiglu", num_kv_heads=2, tie_embeddings=False, rope_base=5e5),
    dict(mlp="swiglu", attention_bias="qkv", rope_scaling="linear", rope_factor=2.0),
    dict(mlp="swiglu", attention_bias="all", mlp_bias=True, rope_scaling="llama3", rope_factor=8.0),
    dict(positions="learned", norm="layernorm", attention_bias="all", mlp_bias=True, mlp="gelu_exact"),
    dict(
      norm="layernorm",
      attention_bias="all",
      mlp_bias=True,
      mlp="gelu_exact",
      rotary_fraction=0.25,
      parallel_residual=True,
      tie_embeddings=False,
      norm_eps=1e-5,
    ),  # fmt: skip
    dict(norm="layernorm", mlp_bias=True, rotary_fraction=0.5, rope_scaling="linear", rope_factor=2.0),
  ],
)
def test_config_round_trip(overrides):
  c = models.ModelConfig(vocab_size=100, **overrides)
  assert hf.config_from_hf(json.loads(json.dumps(hf.hf_config(c)))) == c


def test_config_extra_sets_special_ids_but_not_the_architecture(tmp_path):
  model = hf.load(write(tmp_path / "src", *CASES["gpt2_untied"]()))
  hf.save(model, str(tmp_path / "out"), config_extra=dict(bos_token_id=50, eos_token_id=50, pad_token_id=None))
  written = json.loads((tmp_path / "out" / "config.json").read_text())
  assert (written["bos_token_id"], written["eos_token_id"], written["pad_token_id"]) == (50, 50, None)
  with pytest.raises(UserError, match="n_layer"):
    hf.save(model, str(tmp_path / "bad"), config_extra=dict(n_layer=3))
  assert not (tmp_path / "bad").exists()


def test_tie_default_follows_transformers():
  for case, tied in (("gpt2_untied", True), ("qwen2", False), ("llama_biases_linear_rope", False)):
    cfg = {k: v for k, v in CASES[case]()[0].items() if k != "tie_word_embeddings"}
    assert hf.config_from_hf(cfg).tie_embeddings is tied, case


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line naming what is wrong, nothing written
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "change,match",
  [
    (dict(architectures=["MistralForCausalLM"], model_type="mistral"), "unsupported Hugging Face architecture Mistral"),
    (dict(use_sliding_window=True), "use_sliding_window"),
    (dict(rope_scaling=dict(rope_type="yarn", factor=4.0)), "rope_scaling type 'yarn'"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(head_dim=16), "head_dim"),
  ],
)
def test_unsupported_configs(change, match, tmp_path):
  cfg, tensors = CASES["qwen2"]()
  with pytest.raises(UserError, match=match):
    hf.load(write(tmp_path, {**cfg, **change}, tensors))


def test_unsupported_activations_name_the_supported_ones():
  cfg, _ = CASES["gpt2_untied"]()
  with pytest.raises(UserError, match="activation_function='relu'.*gelu_new"):
    hf.config_from_hf({**cfg, "activation_function": "relu"})
  cfg, _ = CASES["gpt_neox_pythia"]()
  with pytest.raises(UserError, match="hidden_act='silu'.*gelu"):
    hf.config_from_hf({**cfg, "hidden_act": "silu"})


def test_missing_and_unexpected_files_and_tensors(tmp_path):
  cfg, tensors = CASES["gpt2_untied"]()
  with pytest.raises(UserError, match="no config.json"):
    hf.load(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "config.json").write_text(json.dumps(cfg))
  (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(UserError, match="safetensors weights only"):
    hf.load(str(tmp_path / "empty"))
  lacking = {k: v for k, v in tensors.items() if k != "transformer.h.1.mlp.c_fc.bias"}
  with pytest.raises(UserError, match=r"lacks transformer\.h\.1\.mlp\.c_fc\.bias"):
    hf.load(write(tmp_path / "a", cfg, lacking))
  with pytest.raises(UserError, match="would not use: transformer.h.2.ln_1.weight"):
    hf.load(write(tmp_path / "b", cfg, {**tensors, "transformer.h.2.ln_1.weight": tensors["transformer.ln_f.weight"]}))
  with pytest.raises(UserError, match="shape"):
    hf.load(write(tmp_path / "c", {**cfg, "n_positions": 8}, tensors))


@pytest.mark.parametrize(
  "overrides,match",
  [
    (dict(), "neither GPT-2"),  # the tiny default: rotary + RMSNorm + plain GELU
    (dict(positions="learned", norm="layernorm"), "attention_bias=all"),
    (dict(mlp="swiglu", attention_bias="qkv", mlp_bias=True), "Qwen2 has no MLP biases"),
    (dict(parallel_residual=True), "GPT-NeoX's, which has rotary positions and LayerNorm"),
    (dict(norm="layernorm"), "GPT-NeoX-shaped decoder"),
  ],
)
def test_export_of_inexpressible_model_writes_nothing(overrides, match, tmp_path):
  model = models.create("decoder", "tiny", 50, **overrides)
  with pytest.raises(UserError, match=match):
    hf.save(model, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  with pytest.raises(UserError, match="only a decoder"):
    hf.save(models.create("encoder", "tiny", 50), str(tmp_path / "out"))
