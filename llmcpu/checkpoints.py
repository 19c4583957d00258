"""Binaries: orbax checkpoints that carry the ISA they were compiled for.

A checkpoint step holds two items: ``state`` (parameters, optimizer state, counters; arrays) and ``meta`` (JSON:
config, architecture, model config, the compiler's manifest *and files*, step, tokens seen, data position).
``load_meta`` and ``load_compiler`` read what a checkpoint speaks without touching its arrays.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from llmcpu import compilers, fs
from llmcpu.errors import UserError
from llmcpu.models import ModelConfig

ITEMS = ("state", "meta")
META_FORMAT = 1


def manager(directory: str, *, keep: int = 2, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(fs.abspath(directory), item_names=ITEMS, options=options)


def make_meta(
  *, config: dict, model_config: ModelConfig, compiler: compilers.Compiler, step: int, tokens_seen: int, data_step: int
) -> dict:
  return {
    "format": META_FORMAT,
    "arch": model_config.arch,
    "model_config": dataclasses.asdict(model_config),
    "config": config,
    "isa": compiler.manifest,
    "isa_name": compiler.name,
    "isa_fingerprint": compiler.fingerprint,
    "compiler_files": compilers.to_blob(compiler),
    "step": step,
    "tokens_seen": tokens_seen,
    "data_step": data_step,
  }


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
  """Dispatches an (asynchronous) save of ``state`` and ``meta`` at ``step``."""
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
  return mngr.save(step, args=args, force=force)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """Restores onto the shardings carried by ``abstract_state`` (any device count)."""
  args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
  try:
    out = mngr.restore(step, args=args)
  except Exception as e:  # orbax raises many types for damaged files; one line says which checkpoint
    raise UserError(f"cannot restore checkpoint step {step} in {mngr.directory} ({type(e).__name__}: {e})") from e
  return out["state"], out["meta"]


def find(path: str) -> tuple[str, int]:
  """(checkpoint directory, step) for a run workdir, its ``checkpoints/`` directory, or one step directory."""
  path = fs.abspath(path).rstrip("/")
  for directory in (fs.join(path, "checkpoints"), path):
    steps = [int(name) for name in fs.listdir(directory) if name.isdigit()]  # not orbax's *.orbax-checkpoint-tmp
    if steps:
      return directory, max(steps)
  base = path.rsplit("/", 1)[-1]
  if base.isdigit():
    return fs.dirname(path), int(base)
  raise UserError(f"no checkpoint under {path}; pass a training workdir or a checkpoint step directory")


def saved_ns(path: str) -> int:
  """When the newest checkpoint at ``path`` was written, in ns; unknown = the far future (whatever was computed
  from it counts as stale)."""
  directory, step = find(path)
  marker = fs.join(directory, str(step), "_CHECKPOINT_METADATA")  # orbax writes it with every step
  return fs.stat(marker)[1] if fs.exists(marker) else sys.maxsize


def load_meta(path: str) -> dict:
  """The JSON metadata of the newest checkpoint at ``path`` (see ``find``), without reading any array."""
  directory, step = find(path)
  mngr = ocp.CheckpointManager(directory, item_names=ITEMS)
  try:
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:
    raise UserError(f"checkpoint {directory}/{step} has no readable metadata ({type(e).__name__}: {e})") from e
  finally:
    mngr.close()
  if not isinstance(meta, dict) or "isa" not in meta or "compiler_files" not in meta:
    raise UserError(f"checkpoint {directory}/{step} carries no ISA metadata; it was not written by llmcpu's trainer")
  return meta


def load_compiler(meta: dict) -> compilers.Compiler:
  """The compiler a checkpoint was trained with, rebuilt from the files it carries."""
  compiler = compilers.from_blob(meta["compiler_files"])
  if compiler.fingerprint != meta["isa_fingerprint"]:
    raise UserError(f"checkpoint ISA files do not match its fingerprint {meta['isa_fingerprint']}")
  return compiler


def model_config(meta: dict) -> ModelConfig:
  return ModelConfig(**meta["model_config"])


def abstract(tree: Any) -> Any:
  """Shape/dtype/sharding skeleton of a tree of arrays (restore target)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def load_model(path: str):
  """(model with the checkpoint's parameters, meta, compiler) for a run workdir or checkpoint directory."""
  import ml_collections
  from flax import nnx

  from llmcpu import models
  from llmcpu.optim import make_optimizer

  meta = load_meta(path)
  compiler = load_compiler(meta)
  model = models.create_from_config(model_config(meta), seed=0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx, _ = make_optimizer(ml_collections.ConfigDict(meta["config"]["train"]))
  state = {"params": params, "opt_state": tx.init(params), "rest": rest, "step": jax.numpy.zeros((), "int32")}
  directory, step = find(path)
  mngr = ocp.CheckpointManager(directory, item_names=ITEMS)
  try:
    state, _ = restore(mngr, step, abstract(state))
  finally:
    mngr.close()
  model = nnx.merge(graphdef, state["params"], state["rest"])
  models.reset_illegal_count(model)
  return model, meta, compiler
