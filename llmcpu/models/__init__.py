"""The CPUs: encoder, decoder and encoder-decoder transformers in Flax NNX, with cached decoding.

Entry points::

  model = llmcpu.models.create("decoder", "tiny", vocab_size=8000, seed=0)
  logits_BxLxV = model(ids_BxL)
  new_ids = llmcpu.models.generate(model, prompt_ids, max_new_tokens=32, temperature=0.0)
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from llmcpu.errors import UserError
from llmcpu.models.architectures import ARCH_CLASSES, Decoder, Encoder, EncoderDecoder
from llmcpu.models.config import (
  ARCHS,
  PRESETS,
  ModelConfig,
  expected_param_count,
  flops_per_token,
  matmul_param_count,
  presets,
)
from llmcpu.models.decoding import filter_logits, generate, generate_from_embedding
from llmcpu.models.opcodes import IllegalOpcodes, illegal_count, reset_illegal_count, sanitize_ids
from llmcpu.models.sharding import batch_sharding, logical_axis_rules, param_shardings
from llmcpu.models.trainable import split as split_trainable

Model = Encoder | Decoder | EncoderDecoder


def create_from_config(model_config: ModelConfig, seed: int = 0) -> Model:
  """The NNX module for ``model_config``; the same seed gives identical parameters."""
  return ARCH_CLASSES[model_config.arch](model_config, rngs=nnx.Rngs(seed))


def create(arch: str, preset: str, vocab_size: int, seed: int = 0, **overrides: Any) -> Model:
  """``arch`` in encoder, decoder, encoder_decoder; ``preset`` in tiny, small, base; overrides are ModelConfig
  fields (e.g. ``positions='learned'``)."""
  if arch not in ARCHS:
    raise UserError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
  fields = {**presets(preset, arch), **overrides, "arch": arch, "vocab_size": vocab_size}
  return create_from_config(ModelConfig(**fields), seed=seed)


def param_count(model: nnx.Module) -> int:
  """Number of trainable parameters (``nnx.Param`` entries)."""
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


__all__ = [
  "ARCHS",
  "PRESETS",
  "Decoder",
  "Encoder",
  "EncoderDecoder",
  "IllegalOpcodes",
  "Model",
  "ModelConfig",
  "batch_sharding",
  "create",
  "create_from_config",
  "expected_param_count",
  "filter_logits",
  "flops_per_token",
  "generate",
  "generate_from_embedding",
  "illegal_count",
  "logical_axis_rules",
  "matmul_param_count",
  "param_count",
  "param_shardings",
  "presets",
  "reset_illegal_count",
  "sanitize_ids",
  "split_trainable",
]
