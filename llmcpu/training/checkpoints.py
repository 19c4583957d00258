"""Checkpoints: orbax checkpoints of a CPU that carry the ISA it was trained on.

A checkpoint step holds two items: ``state`` (parameters, optimizer state, counters; arrays) and ``meta`` (JSON:
config, architecture, model config, the compiler's manifest *and files*, step, tokens seen, data position, and a
checksum of every array). ``load_meta`` and ``load_compiler`` read what a checkpoint speaks without touching its
arrays; ``restore`` checks every array against the checksum recorded at save (orbax itself keeps none), so a
flipped bit is refused instead of trained on or evaluated.
"""

from __future__ import annotations

import dataclasses
import errno
import sys
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from llmcpu import compilers, fs
from llmcpu.errors import UserError
from llmcpu.models import ModelConfig

ITEMS = ("state", "meta")
META_FORMAT = 1


def manager(directory: str, *, keep: int = 2, async_save: bool = True) -> ocp.CheckpointManager:
  """The run's checkpoint manager, keeping the newest ``keep`` steps (0: all)."""
  # cleanup_tmp_directories: a save cut short (killed, disk full) leaves a *.orbax-checkpoint-tmp directory that
  # never counts as a step; the next manager removes it and gets its space back.
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep or None, enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True
  )
  return ocp.CheckpointManager(fs.abspath(directory), item_names=ITEMS, options=options)


def make_meta(
  *,
  config: dict,
  model_config: ModelConfig,
  compiler: compilers.Compiler,
  step: int,
  tokens_seen: int,
  data_step: int,
  provenance: dict | None = None,
  input_compiler: compilers.Compiler | None = None,
) -> dict:
  """``provenance``: where the parameters came from when not from random init (a source checkpoint, a port).
  ``input_compiler``: the ISA a stitched encoder reads, when not ``compiler``'s (``input_isa_*`` keys)."""
  reads = {}
  if input_compiler is not None:
    reads = {
      "input_isa_name": input_compiler.name,
      "input_isa_fingerprint": input_compiler.fingerprint,
      "input_compiler_files": compilers.to_blob(input_compiler),
    }
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
    "provenance": provenance or {},
    **reads,
  }


# ---------------------------------------------------------------------------------------------------------------
# Checksums: one 32-bit word per array, computed on device (sharded arrays included; integer sums are exact, so
# the value does not depend on the mesh) and recorded in ``meta`` at save.
# ---------------------------------------------------------------------------------------------------------------


def _words(x: jax.Array) -> jax.Array:
  """The array's bits as uint32 words (narrower dtypes widened, 64-bit split in two)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size in (1, 2):
    return jax.lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8 bytes: a trailing axis of two words


@jax.jit
def _checksum_tree(tree: Any) -> Any:
  def one(x):
    words = _words(x).reshape(-1)
    # Position-weighted (odd weights): any single flipped bit changes the sum, and so do most swaps.
    weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.sum(words * weights, dtype=jnp.uint32)

  return jax.tree.map(one, tree)


def checksums(state: Any) -> dict[str, int]:
  """``{array path: checksum}`` for every array in ``state``."""
  sums = jax.device_get(_checksum_tree(state))
  return {_path_name(path): int(v) for path, v in jax.tree_util.tree_flatten_with_path(sums)[0]}


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def damaged_arrays(state: Any, meta: dict) -> list[str]:
  """Paths of the arrays of ``state`` whose checksum differs from the one ``meta`` recorded at save (none recorded:
  nothing to compare, e.g. a checkpoint from before checksums)."""
  recorded = meta.get("checksums") or {}
  if not recorded:
    return []
  now = checksums(state)
  return sorted(k for k, v in recorded.items() if k in now and now[k] != v)


# ---------------------------------------------------------------------------------------------------------------
# Save and restore.
# ---------------------------------------------------------------------------------------------------------------


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
  """Dispatches an (asynchronous) save of ``state`` and ``meta`` (plus the arrays' checksums) at ``step``.

  A failed write (this one, or the previous asynchronous one, which orbax reports here) is one UserError."""
  meta = {**meta, "checksums": checksums(state)}
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
  try:
    return mngr.save(step, args=args, force=force)
  except Exception as e:
    raise _write_error(e, mngr, step) from e


def finish(mngr: ocp.CheckpointManager) -> None:
  """Waits for an asynchronous save to be committed; a failed one is one UserError."""
  try:
    mngr.wait_until_finished()
  except Exception as e:
    raise _write_error(e, mngr, None) from e


def close(mngr: ocp.CheckpointManager) -> None:
  """``finish`` then close; after a failed save, closing (which reports the same failure again) stays quiet."""
  try:
    finish(mngr)
  except UserError:
    try:
      mngr.close()
    except Exception:  # noqa: S110 - the failure was just raised by finish
      pass
    raise
  mngr.close()


def _write_error(e: Exception, mngr: ocp.CheckpointManager, step: int | None) -> Exception:
  text = f"{type(e).__name__}: {e}"
  full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
  full = full or any(s in text for s in ("No space left on device", "os_error_code='28'", "Disk quota exceeded"))
  if not (full or isinstance(e, OSError) or "Error writing" in text or "Failed writing" in text):
    return e  # not a write failure: keep its traceback
  good = [s for s in mngr.all_steps() if s != step]
  resume = f"it resumes from step {max(good)}" if good else "it starts again from step 0"
  what = "disk full" if full else f"cannot write ({first_line(text)})"
  fix = "free space (or lower --config.checkpoint.keep)" if full else "check the disk"
  return UserError(f"{what} while saving a checkpoint in {mngr.directory}; {fix} and rerun the same command: {resume}")


def first_line(text: str, limit: int = 300) -> str:
  line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
  return line if len(line) <= limit else line[: limit - 1] + "…"


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, *, partial: bool = False) -> tuple[Any, dict]:
  """Restores onto the shardings carried by ``abstract_state`` (any device count) and checks every array against
  its recorded checksum. ``partial``: ``abstract_state`` names a part of the saved state (e.g. no optimizer
  moments), and only that part is read."""
  if partial:
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
    item = ocp.args.PyTreeRestore(abstract_state, restore_args=restore_args, partial_restore=True)
  else:
    item = ocp.args.StandardRestore(abstract_state)
  args = ocp.args.Composite(state=item, meta=ocp.args.JsonRestore())
  where = f"checkpoint step {step} in {mngr.directory}"
  fix = f"delete {mngr.directory}/{step} to fall back to an earlier step, or retrain"
  try:
    out = mngr.restore(step, args=args)
  except Exception as e:  # orbax raises many types for damaged files; one line says which checkpoint
    root = e
    while root.__cause__ is not None:  # orbax wraps TensorStore's own message (e.g. a byte range past the end)
      root = root.__cause__
    raise UserError(f"cannot restore {where} ({first_line(root)}); {fix}") from e
  bad = damaged_arrays(out["state"], out["meta"])
  if bad:
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    raise UserError(f"{where} is damaged: array {bad[0]}{more} differs from its checksum at save; {fix}")
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


def find_runs(path: str) -> list[str]:
  """Every run at or below ``path``, at any depth, sorted: each directory holding checkpoint steps (step directories
  named by their number), in it or in its ``checkpoints/``; a run's own tree is not searched."""
  path = fs.abspath(path).rstrip("/")
  if _holds_steps(fs.join(path, "checkpoints")) or _holds_steps(path):
    return [path]
  out: list[str] = []
  for name in fs.listdir(path):
    child = fs.join(path, name)
    if not name.startswith(".") and not name.endswith(".orbax-checkpoint-tmp") and fs.isdir(child):
      out += find_runs(child)
  return out


def _holds_steps(directory: str) -> bool:
  return any(name.isdigit() and fs.isdir(fs.join(directory, name)) for name in fs.listdir(directory))


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


def abstract(tree: Any) -> Any:
  """Shape/dtype/sharding skeleton of a tree of arrays (restore target)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def verify(path: str) -> None:
  """Reads every array of the newest checkpoint at ``path`` (optimizer moments included) and checks each against
  its recorded checksum: a UserError naming the step if one differs or cannot be read. Nothing is kept."""
  _read(path, moments=True)


def _read(path: str, *, moments: bool) -> tuple[Any, dict, dict]:
  """(graphdef, state, meta) of the newest checkpoint at ``path``, read onto the default device into shapes built
  from its metadata (nothing initialised first), every array read checked against its checksum. ``moments``: the
  whole training state, optimizer included; else only the model's arrays (params, frozen, rest)."""
  import ml_collections
  from flax import nnx

  from llmcpu import models
  from llmcpu.training import placement
  from llmcpu.training.optim import make_optimizer

  meta = load_meta(path)
  shapes = nnx.eval_shape(lambda: models.create_from_config(ModelConfig(**meta["model_config"]), seed=0))
  train_config = ml_collections.ConfigDict(meta["config"]["train"])
  graphdef, params, frozen, rest = models.split_trainable(shapes, train_config.get("trainable", ""))
  if moments:
    tx = make_optimizer(train_config)[0]
    state = jax.eval_shape(lambda p, f, r: placement.host_state(p, f, r, tx), params, frozen, rest)
  else:
    state = {"params": params, "rest": rest} | ({"frozen": frozen} if frozen is not None else {})
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)
  directory, step = find(path)
  mngr = ocp.CheckpointManager(directory, item_names=ITEMS)
  try:
    state, _ = restore(mngr, step, target, partial=not moments)
  finally:
    mngr.close()
  return graphdef, state, meta


def load_model(path: str):
  """(model with the checkpoint's parameters, meta, compiler) for a run workdir or checkpoint directory.

  Reads the model's arrays only (parameters and their companions, never the optimizer's moments) into a model
  built from shapes, so the host holds the weights once: 0.5 GB, not 3 GB, for a 124M-parameter checkpoint."""
  from flax import nnx

  from llmcpu import models

  graphdef, state, meta = _read(path, moments=False)
  compiler = load_compiler(meta)
  model = nnx.merge(graphdef, state["params"], *([state["frozen"]] if "frozen" in state else []), state["rest"])
  models.reset_illegal_count(model)
  return model, meta, compiler
