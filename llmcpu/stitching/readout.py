"""Embedding languages: a decoder that reads one embedding of encoder A and writes back the program it came from
(wikivec2text done properly), then fed the embeddings of other encoders.

The readout is an encoder-decoder with A's encoder frozen inside it (``ModelConfig.encoder_config``) and
``pool=k``: A's embedding of a program (the mean of its final states, ``Encoder.embed_pooled``'s definition) is
projected to k vectors the decoder cross-attends to; with ``relative=K`` the embedding is first read as its cosines to
the embeddings of K anchor programs (Moschella et al. 2023). It trains through the one loop on the ``reconstruct``
objective (target = the input), only the projection, decoder and its table trainable.

``feed`` gives the readout embeddings from elsewhere: another encoder as is (``none``), mapped into A's space by an
orthogonal map fitted on parallel anchors (``procrustes``: the same training programs embedded by both), read
relatively (the relative readout with the other encoder's own anchor embeddings: no fitting at all), and the seed's
control, raw token ids zero-padded to the embedding width (``ids``). ``reconstruction`` scores what comes back.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from llmcpu import models, toolchain
from llmcpu.compilers import Compiler
from llmcpu.crosseval import intervals
from llmcpu.data import programs as program_data
from llmcpu.errors import UserError
from llmcpu.metrics import text as text_metrics
from llmcpu.specials import EOS_ID, PAD_ID
from llmcpu.stitching import closed_form, states
from llmcpu.stitching.swap import encoder_config_of
from llmcpu.training import derived, trainer
from llmcpu.training.run_config import base_config

TRAINABLE = r"^prefix/,^decoder/,^embed/,^head/"  # the readout learns; A's encoder (encoder_embed, encoder) is frozen
ALIGNMENTS = ("none", "procrustes", "relative")


def readout_config(config: ml_collections.ConfigDict, meta: dict) -> ml_collections.ConfigDict:
  """The training config of a readout of ``config.encoder`` (its ISA, corpus and compile dir)."""
  c = base_config("encoder_decoder", config.preset)
  d = meta["config"]["data"]
  c.data.update(corpus=d["corpus"], isa=d["isa"], compile_dir=config.compile_dir or d["compile_dir"])
  c.data.update(objective="reconstruct", input_length=config.length, target_length=config.length, truncate=True)
  c.model.encoder_config = encoder_config_of(meta, config.encoder)
  shape = ("d_model", "num_heads", "d_ff", "max_len", "mlp", "norm", "positions", "dtype", "attention_impl")
  c.model.update({k: meta["model_config"][k] for k in shape})  # the decoder as wide as the embedding it reads
  c.model.update(pool=config.pool, relative=config.relative, decoder_context=0)  # its decoder reads no prompt
  c.seed = config.seed
  c.train.update(steps=config.steps, batch_size=config.batch_size, trainable=TRAINABLE, eval_every=0)
  c.train.warmup_steps = max(1, config.steps // 20)
  c.checkpoint.every = max(1, config.steps // 4)
  return c


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  should_stop: Callable[[int], bool] | None = None,
  log: Callable[[str], None] = print,
) -> trainer.TrainResult:
  """Trains (or resumes) a readout of ``config.encoder`` (an encoder or encoder-decoder checkpoint) into workdir."""
  if not config.encoder:
    raise UserError("no --config.encoder: pass the CPU whose embeddings the readout learns to read")
  encoder = derived.Source.load(config.encoder)
  meta = encoder.meta
  train_config = readout_config(config, meta)
  provenance = {
    "encoder": encoder.record("isa", "step", "isa_fingerprint"),
    "readout": {"pool": config.pool, "relative": config.relative},
  }

  def initialize(model, setup: trainer.Setup) -> None:
    source, _, _ = encoder.load_model()
    nnx.update(model.encoder_embed, nnx.state(source.embed, nnx.Param))
    nnx.update(model.encoder, nnx.state(source.encoder, nnx.Param))
    if config.relative:  # the anchors: the embeddings of the first K training programs, by the encoder read
      docs = programs(setup.config.data.compile_dir, setup.config.data.corpus, setup.compiler, "train")
      model.prefix.anchors[...] = jnp.asarray(states.embeddings(model, docs[: config.relative], config.length))

  log(f"training a readout of {meta['isa_name']} ({meta['arch']}) embeddings: pool {config.pool}, relative "
      f"{config.relative}")  # fmt: skip
  return derived.train(
    train_config, workdir, provenance=provenance, initialize=initialize, should_stop=should_stop, log=log
  )


def programs(compile_dir: str, corpus: str, compiler: Compiler, split: str) -> list[np.ndarray]:
  """Every program input of a split, compiled by ``compiler`` (ids)."""
  tools = toolchain.Toolchain(compile_dir)
  field = tools.split(tools.corpus_name(corpus, compiler), compiler, split).fields["input"]
  return [np.asarray(field.doc(i)) for i in range(len(field))]


def read(readout, vectors: np.ndarray, compiler: Compiler, max_new: int, batch: int = 64) -> list[str]:
  """The texts a readout writes (greedy) from embeddings [N, D], decoded by its ISA's compiler."""
  texts = []
  for start in range(0, len(vectors), batch):
    v = np.zeros((batch, vectors.shape[1]), np.float32)
    chunk = vectors[start : start + batch]
    v[: len(chunk)] = chunk
    out = np.asarray(models.generate_from_embedding(readout, v, max_new))[: len(chunk)]
    for row in out:
      ids = [int(t) for t in row.tolist()]
      ids = ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids
      texts.append(compiler.decode([t for t in ids if t != PAD_ID]))
  return texts


def with_anchors(readout, anchors: np.ndarray):
  """A copy of a relative readout reading another encoder: its anchors replaced by that encoder's embeddings of the
  same anchor programs."""
  graphdef, state = nnx.split(readout)
  copy = nnx.merge(graphdef, state, copy=True)
  copy.prefix.anchors[...] = jnp.asarray(anchors, jnp.float32)
  return copy


def procrustes_map(x_train: np.ndarray, y_train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
  """Another encoder's embeddings → A's space: orthogonal Procrustes (+ translation) on parallel training anchors."""
  rotation, bias = closed_form.fit_procrustes(x_train, y_train)
  return lambda x: closed_form.apply(x, rotation, bias).astype(np.float32)


def _ci(items: np.ndarray, seed: int) -> tuple[float, float] | None:
  return intervals.bootstrap(np.stack([items, np.ones_like(items)], 1), intervals.ratio(0, 1), seed=seed)


def reconstruction(texts: Sequence[str], references: Sequence[str], cosines: np.ndarray, seed: int = 0) -> dict:
  """vec2text's figures of reconstructions against the originals: corpus BLEU and chrF, token F1 and exact match
  (each with a 95% bootstrap interval over programs), and the cosine between the original's embedding and the
  re-embedded reconstruction's (mean, interval)."""
  f1 = text_metrics.token_f1_items(texts, references)
  em = text_metrics.exact_match_items(texts, references)
  cos = np.asarray(cosines, np.float64)
  return {
    "bleu": text_metrics.bleu(texts, references),
    "chrf": text_metrics.chrf(texts, references),
    "token_f1": float(f1.mean()),
    "token_f1_ci": _ci(f1, seed),
    "exact_match": float(em.mean()),
    "exact_match_ci": _ci(em, seed),
    "cosine": float(cos.mean()),
    "cosine_ci": _ci(cos, seed),
    "programs": len(texts),
    "samples": [{"reference": r, "read": t} for r, t in list(zip(references, texts, strict=True))[:3]],
  }


def reembed_cosines(encoder, compiler: Compiler, texts: Sequence[str], originals: np.ndarray, length: int):
  """Cosine between each original embedding and the embedding (by the same encoder) of what was read back."""
  docs = [np.asarray(compiler.encode(t), np.int32) for t in texts]
  return text_metrics.cosine_rows(originals, states.embeddings(encoder, docs, length))


def template_floor(references: Sequence[str], seed: int = 0, split: str = "test") -> dict:
  """What a readout that gets only the task right scores: each reference program's task with operands drawn at
  random by the corpus's own generator (``programs.example``, ``split``'s operands), scored against the references
  by chrF and token F1 — a right task with wrong operands shares the task word and ``=``, so these figures do not
  start at 0. ``above_floor`` reads a readout's figure against it."""
  rng = random.Random(f"llmcpu.stitching.readout.template_floor/{seed}")
  templates = []
  for i, ref in enumerate(references):
    task = ref.split(" ", 1)[0]
    if task not in program_data.TASKS:
      raise UserError(f"reference {i} ({ref!r}) is not a program input: a template floor needs one of the tasks "
                      f"{', '.join(program_data.TASKS)}")  # fmt: skip
    templates.append(program_data.example(task, rng, split)["input"])
  f1 = text_metrics.token_f1_items(templates, references)
  return {"chrf": text_metrics.chrf(templates, references), "token_f1": float(f1.mean()), "templates": templates}


def above_floor(value: float, floor: float, top: float) -> float | None:
  """The share of what lies above the floor that ``value`` restores: (value − floor) / (top − floor); 0 = no better
  than the right task with random operands, 1 = perfect, negative = below the floor. None if the floor is the top."""
  return None if top == floor else (value - floor) / (top - floor)
