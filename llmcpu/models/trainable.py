"""Which parameters a training run updates: all of them, or those whose path matches a pattern (porting relearns
the embeddings only; a stitch trains one map). The rest are frozen: passed through the step unchanged, with no
gradient and no optimizer state."""

from __future__ import annotations

import re
from typing import Any

from flax import nnx

from llmcpu.errors import UserError


def path_name(path: tuple) -> str:
  """``('decoder', 'layers', 0, 'attn', 'qkv', 'kernel')`` → ``'decoder/layers/0/attn/qkv/kernel'``."""
  return "/".join(str(part) for part in path)


def split(model: nnx.Module, trainable: str = "") -> tuple[Any, nnx.State, nnx.State | None, nnx.State]:
  """(graphdef, trainable parameters, frozen parameters or None, everything else) of ``model``.

  ``trainable``: comma-separated regular expressions searched in each parameter's path (``path_name``); '' = every
  parameter (no frozen group). ``nnx.merge(graphdef, params, [frozen,] rest)`` puts the model back together."""
  if not trainable.strip():
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, None, rest
  try:
    patterns = [re.compile(p.strip()) for p in trainable.split(",") if p.strip()]
  except re.error as e:
    raise UserError(f"--config.train.trainable={trainable!r} is not a list of regular expressions ({e})") from e

  def chosen(path, value) -> bool:
    return isinstance(value, nnx.Param) and any(p.search(path_name(path)) for p in patterns)

  graphdef, params, frozen, rest = nnx.split(model, chosen, nnx.Param, ...)
  if not nnx.to_flat_state(params):
    names = [path_name(path) for path, _ in nnx.to_flat_state(frozen)][:4]
    raise UserError(f"--config.train.trainable={trainable!r} matches no parameter; paths look like: {', '.join(names)}")
  return graphdef, params, frozen, rest
