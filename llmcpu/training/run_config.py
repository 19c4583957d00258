"""The training config, as data: one ml_collections block per concern, filled from a model preset.

``configs/<arch>.py`` files are thin: ``get_config("small")`` → ``base_config(arch, "small")``. Every key can be
overridden on the command line (``--config.train.steps=500``); unknown keys are refused by ml_collections.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from llmcpu.errors import UserError
from llmcpu.models.config import ModelConfig, presets, saved_fields

# Training-size presets, paired with the model presets of the same name.
TRAIN_PRESETS = {
  "tiny": dict(steps=200, batch_size=16, length=128, input_length=128, target_length=64, learning_rate=3e-3),
  "small": dict(steps=2000, batch_size=32, length=256, input_length=256, target_length=64, learning_rate=1e-3),
  "base": dict(steps=100_000, batch_size=256, length=1024, input_length=512, target_length=128, learning_rate=6e-4),
}


def base_config(arch: str, preset: str = "tiny") -> ml_collections.ConfigDict:
  preset = preset or "tiny"
  if preset not in TRAIN_PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(TRAIN_PRESETS)}")
  p = TRAIN_PRESETS[preset]
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.corpus = "python_docs"  # any corpus string: python_docs, programs, tfds:NAME[:KEY], text:GLOB
  c.data.compile_dir = "runs/compiled"  # the scripts/compile.py --workdir holding the compiled corpus
  c.data.isa = "bpe:4000"  # compiler spec; its compiled data must exist under compile_dir
  c.data.objective = ""  # '' → lm (decoder; lm_targets on input/target corpora), mlm, prefix_lm/seq2seq
  c.data.length = p["length"]  # decoder / encoder rows
  c.data.input_length = p["input_length"]  # encoder_decoder source
  c.data.target_length = p["target_length"]  # encoder_decoder target
  c.data.pairs_per_row = 1  # prefix_lm: (prefix, continuation) pairs packed per training row, each its own segment
  c.data.head_weight = 1.0  # prefix_lm: training loss weight of continuation tokens in its first head_bytes bytes
  c.data.head_bytes = 8
  c.data.curriculum_steps = 0  # prefix_lm: steps over which the scored continuation grows to its full length; 0 = off
  c.data.curriculum_bytes = 8  # prefix_lm: continuation bytes scored at step 0 of the curriculum
  c.data.tail_weight = 1.0  # prefix_lm with model.decoder_context: training loss weight of the decoder context's ids
  c.data.tail_dropout = 0.0  # prefix_lm with model.decoder_context: share of training rows whose decoder reads no tail
  c.data.pack_windows = True  # prefix_lm training: windows packed into each row while their ids fit its widths
  c.data.pack_pairs = True  # seq2seq training: whole pairs packed up to data.length ids a row, as a decoder row holds
  c.data.truncate = False  # seq2seq: cut pairs longer than input/target_length (counted) instead of refusing them
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.input_isa = ""  # seq2seq: the ISA the encoder reads ('' = data.isa); a stitched encoder_decoder's

  # Every ModelConfig field, from the preset; vocab_size 0 = take it from the ISA.
  model = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
  model.update(presets(preset, arch), arch=arch, vocab_size=0)
  model["num_decoder_layers"] = model["num_decoder_layers"] or 0  # 0 = same as num_layers
  c.model = ml_collections.ConfigDict(model)
  c.model.preset = preset

  c.train = ml_collections.ConfigDict()
  c.train.steps = p["steps"]
  c.train.batch_size = p["batch_size"]  # global, across all devices and hosts
  c.train.learning_rate = p["learning_rate"]
  c.train.warmup_steps = max(1, p["steps"] // 20)
  c.train.min_lr_ratio = 0.1  # the schedule decays to this fraction of the peak
  c.train.schedule = "cosine"  # cosine | wsd (warmup-stable-decay: flat, then linear decay; see optim.make_schedule)
  c.train.decay_fraction = 0.2  # wsd: the share of steps spent decaying
  c.train.weight_decay = 0.1  # on matrices only (see optim.decay_mask)
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.grad_clip = 1.0  # global norm
  c.train.grad_accum = 1  # micro-batches per step (batch_size must divide by it)
  c.train.log_every = 10
  c.train.eval_every = max(1, p["steps"] // 4)
  c.train.eval_batches = 8
  c.train.peak_tflops = 0.0  # for MFU; 0 = measure this machine's matmul peak at start
  c.train.trainable = ""  # comma-separated regexes over parameter paths (e.g. 'embed,head'); '' = all train
  c.train.lr_scale = ""  # per-parameter learning-rate multipliers, 'REGEX=M,...' over parameter paths (first wins)
  c.train.init_from = ""  # a checkpoint of the same model config to start from (fresh runs only; not a resume)
  c.train.profile_start = 10  # first step of a jax.profiler trace (into the workdir's tensorboard/)
  c.train.profile_steps = 0  # steps to trace; 0 = no trace
  c.train.memory_limit_gb = 0.0  # refuse a step estimated above this per device; 0 = this host's available memory
  c.train.memory_target = (
    ""  # or check against an accelerator, NAME[:DEVICES] (v4, v5e, v6e, a100-40g, ...; see memory)
  )

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = max(1, p["steps"] // 4)
  c.checkpoint.keep = 2  # newest checkpoints kept; 0 = every one (a recovery curve reads each)
  c.checkpoint.at = ""  # extra steps to save at, comma-separated (e.g. '10,30,100'; 0 saves the initial state)
  c.checkpoint.async_save = True

  c.parallelism = "jit"  # jit: jax.jit over a device Mesh; pmap: the same step under jax.pmap
  c.mesh = ml_collections.ConfigDict()
  c.mesh.fsdp = 1  # devices that shard parameters (ZeRO-3 style); the rest are pure data parallel
  c.mesh.tensor = 1  # devices that shard heads / mlp / vocab
  return c


def checkpoint_config(old: dict) -> ml_collections.ConfigDict:
  """A checkpoint's training config on today's keys: the preset's defaults, overlaid with every value it has (a run
  continued from a checkpoint — a port, a stitch — starts from its source's config)."""
  c = base_config(old["model"]["arch"], old["model"].get("preset") or "tiny")
  # A model key the checkpoint lacks predates it: it was trained with that key's dataclass default (the old
  # design), not with what today's preset gives a new model (e.g. the encoder_decoder design of issue 23).
  old = {**old, "model": saved_fields(old["model"])}
  old["model"]["num_decoder_layers"] = old["model"]["num_decoder_layers"] or 0  # 0 = same as num_layers
  for key, value in old.items():
    if isinstance(value, dict) and key in c:
      for k, v in value.items():
        if k in c[key]:
          c[key][k] = v
    elif key in c:
      c[key] = value
  return c


def _at_least(lo: float) -> tuple:
  return (lambda v: v >= lo, f"at least {lo:g}")


# Numeric training keys and the values that mean something: anything else is refused in one line, never run
# (a negative learning rate would train by gradient ascent without a word).
RANGES: dict[str, tuple] = {
  "seed": _at_least(0),
  "data.length": _at_least(2),
  "data.input_length": _at_least(2),
  "data.target_length": _at_least(2),
  "data.pairs_per_row": _at_least(1),
  "data.head_weight": (lambda v: v > 0 and math.isfinite(v), "a positive finite number"),
  "data.head_bytes": _at_least(1),
  "data.curriculum_steps": _at_least(0),
  "data.curriculum_bytes": _at_least(1),
  "data.tail_weight": (lambda v: v >= 0 and math.isfinite(v), "a non-negative finite number"),
  "data.tail_dropout": (lambda v: 0 <= v <= 1, "a share in [0, 1]"),
  "train.steps": _at_least(0),  # 0: save the initial state (a port evaluated zero-shot) and stop
  "train.batch_size": _at_least(1),
  "train.learning_rate": (lambda v: v > 0 and math.isfinite(v), "a positive finite number"),
  "train.warmup_steps": _at_least(0),
  "train.min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
  "train.decay_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
  "train.weight_decay": _at_least(0),
  "train.b1": (lambda v: 0 <= v < 1, "in [0, 1)"),
  "train.b2": (lambda v: 0 <= v < 1, "in [0, 1)"),
  "train.grad_clip": (lambda v: v > 0, "positive"),
  "train.grad_accum": _at_least(1),
  "train.log_every": _at_least(1),
  "train.eval_every": _at_least(0),
  "train.eval_batches": _at_least(0),
  "train.peak_tflops": _at_least(0),
  "train.profile_start": _at_least(0),
  "train.profile_steps": _at_least(0),
  "train.memory_limit_gb": _at_least(0),
  "checkpoint.every": _at_least(1),
  "checkpoint.keep": _at_least(0),
}


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """Refuses the first numeric key outside its meaningful range (``RANGES``), naming the flag that sets it."""
  for key, (ok, meaning) in RANGES.items():
    value = config
    for part in key.split("."):
      value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
      raise UserError(f"--config.{key}={value!r} must be {meaning}")
