"""Derived runs: a CPU trained from other CPUs' checkpoints (a port, an encoder swap, a readout) through the one loop.

  source = Source.load(path)                        # its metadata now (one line if it is no CPU), its weights later
  c = continued_config(source.meta, config, trained=True)  # the source's training config, continued
  return train(c, workdir, provenance={"source": source.record("isa", "step")}, initialize=..., log=log)

``initialize(model, setup)`` fills a fresh run's parameters from its sources (a resumed run already holds them), so a
source's weights are read once, and only when they are used. The provenance goes into every checkpoint's metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections

from llmcpu import fs
from llmcpu.training import checkpoints, trainer
from llmcpu.training.run_config import checkpoint_config


@dataclasses.dataclass(frozen=True)
class Source:
  """A checkpoint a derived run starts from: a training workdir or a checkpoint directory, and its metadata."""

  path: str
  meta: dict

  @classmethod
  def load(cls, path: str) -> Source:
    """Reads the metadata only; refuses (one line) a path holding no checkpoint that carries an ISA."""
    return cls(path, checkpoints.load_meta(path))

  @property
  def corpus(self) -> str:
    return self.meta["config"]["data"]["corpus"]

  def record(self, *fields: str) -> dict:
    """Its provenance: the checkpoint's absolute path, then the metadata ``fields`` in that order (``isa``: the
    ISA's name)."""
    return {"checkpoint": fs.abspath(self.path)} | {f: self.meta["isa_name" if f == "isa" else f] for f in fields}

  def load_model(self):
    """(model, metadata, compiler), as ``checkpoints.load_model``."""
    return checkpoints.load_model(self.path)


def continued_config(meta: dict, run: ml_collections.ConfigDict, *, trained: bool) -> ml_collections.ConfigDict:
  """The source's training config (on today's keys) continued as the derived run ``run`` asks (the keys every
  derived run's config has: configs/port.py, configs/swap.py): ``steps`` steps when ``trained`` (else 0: its initial
  state, saved and stopped), warmup at most a twentieth of them, saved at ``save_at`` (comma-separated steps, every
  one kept; trained runs only) or at the end, with ``seed``; ``learning_rate`` 0 and ``compile_dir`` '' keep the
  source's, as do ``batch_size`` and ``length`` (rows × ids a row) when 0 or absent: a 124M LLM imported with
  1024-id rows of the tiny preset's batch wants a smaller one on a host. No evaluation during training: a derived
  run is scored afterwards on its saved steps."""
  steps, save_at = (run.steps, run.save_at) if trained else (0, "")
  seed, learning_rate, compile_dir = run.seed, run.learning_rate, run.compile_dir
  c = checkpoint_config(meta["config"])
  c.data.compile_dir = compile_dir or c.data.compile_dir
  c.seed = seed
  c.train.steps = steps
  c.train.warmup_steps = min(c.train.warmup_steps, max(1, steps // 20))
  c.train.learning_rate = learning_rate or c.train.learning_rate
  c.train.batch_size = run.get("batch_size", 0) or c.train.batch_size
  c.data.length = run.get("length", 0) or c.data.length
  c.train.eval_every = 0
  c.train.init_from = ""
  c.checkpoint.every = max(1, steps)
  c.checkpoint.at = save_at
  c.checkpoint.keep = 0 if save_at else c.checkpoint.keep
  return c


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  provenance: dict,
  initialize: Callable[[object, trainer.Setup], None],
  count_tokens: bool = False,
  should_stop: Callable[[int], bool] | None = None,
  log: Callable[[str], None] = print,
) -> trainer.TrainResult:
  """``trainer.train`` of a derived run (resumable like any run). With ``count_tokens`` the provenance also records
  the tokens its steps will have seen (``tokens``, known once the trainer has set up the batch shape), added to any
  ``tokens`` that ``initialize`` recorded (text read before the first step, e.g. a distilled port's)."""

  def init(model, setup: trainer.Setup) -> None:  # a fresh run only
    initialize(model, setup)
    if count_tokens:
      provenance["tokens"] = provenance.get("tokens", 0) + config.train.steps * setup.tokens_per_step

  return trainer.train(config, workdir, should_stop=should_stop, initialize=init, provenance=provenance, log=log)
