"""Swap the encoder of an encoder-decoder (ISA A) for another CPU's (ISA B), through the one training loop.

The swapped CPU is an ordinary checkpoint of a *stitched* encoder-decoder (``ModelConfig.encoder_config`` and
``stitch``): B's token table and encoder stack read programs compiled by B (``data.input_isa``), a linear
``stitch`` maps B's encoded states into A's width, and A's cross-attention, decoder and output head write A's ISA.
Variants (``VARIANTS``):

  zero_shot     identity stitch, nothing trained: B's states go to A's cross-attention as they are
  lstsq         the stitch fitted in closed form (least squares, with bias) on parallel anchors, nothing trained
  procrustes    the stitch fitted as an orthogonal map (+ bias) on the same anchors, nothing trained
  stitch        identity stitch, then only the stitch trains (everything else frozen, bit-identical)
  stitch_xattn  identity stitch, then the stitch and A's cross-attention (with its norm) train

Parallel anchors are free: the same training programs compiled by both ISAs. Each token of B is paired with the
token of A holding its last byte (``anchors``); x = B's encoded state, y = A's own encoded state (what A's
cross-attention was trained to read). The checkpoint's metadata carries ISA A (what it writes), the ISA it reads
(``input_isa_*``) and the provenance: both sources (checkpoint, ISA, fingerprint, step), the variant, the steps, the
anchors and the fit's residual.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from llmcpu import fs, toolchain
from llmcpu.errors import UserError
from llmcpu.stitching import anchors, closed_form, states
from llmcpu.training import derived, trainer

CLOSED_FORM = ("lstsq", "procrustes")
TRAINED = ("stitch", "stitch_xattn")
VARIANTS = ("zero_shot", *CLOSED_FORM, *TRAINED)
# The control of stitch_xattn: the native CPU reading its OWN encoder through the identity stitch (frozen), its
# cross-attention trained the same steps on the same data as stitch_xattn's: a swap's penalty against it is what the
# swap costs, not what 300 more steps of cross-attention training gain.
CONTROL = "native_xattn"
TRAINABLE = {
  "stitch": r"^stitch/",
  "stitch_xattn": r"^stitch/,/cross/,/cross_norm/",
  CONTROL: r"/cross/,/cross_norm/",
}
SOURCE_FIELDS = ("arch", "isa", "isa_fingerprint", "step")  # each source's provenance


def encoder_config_of(meta: dict, path: str) -> dict:
  """The ModelConfig fields of a checkpoint's encoder (an encoder, or an encoder-decoder's encoder stack)."""
  mc = dict(meta["model_config"])
  if mc["arch"] == "decoder":
    raise UserError(
      f"{path} holds a decoder-only CPU: it has no encoder to swap in; pass an encoder or encoder_decoder checkpoint"
    )
  if mc.get("encoder_config") or mc.get("stitch"):
    raise UserError(f"{path} is itself stitched; swap in the encoder of a CPU trained as one")
  enc_dec_only = {"encoder_positions": "", "cross_positions": "", "cross_zero_init": False, "decoder_context": 0}
  return {**mc, "arch": "encoder", "num_decoder_layers": None, "encoder_config": None, "stitch": "", **enc_dec_only}


def swap_config(
  config: ml_collections.ConfigDict, meta_a: dict, meta_b: dict, path_b: str
) -> ml_collections.ConfigDict:
  """The training config of the swapped CPU: A's, reading ISA B through B's encoder, for ``config.steps`` steps."""
  c = derived.continued_config(meta_a, config, trained=config.variant in TRAINABLE)
  c.data.input_isa = meta_b["config"]["data"]["isa"]
  c.model.encoder_config = encoder_config_of(meta_b, path_b)
  c.model.stitch = "linear"
  c.train.trainable = TRAINABLE.get(config.variant, "")
  return c


def swap_encoder(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  should_stop: Callable[[int], bool] | None = None,
  log: Callable[[str], None] = print,
) -> trainer.TrainResult:
  """Swaps ``config.encoder``'s encoder into ``config.decoder`` by ``config.variant`` into ``workdir``; resumable."""
  if config.variant not in (*VARIANTS, CONTROL):
    raise UserError(f"unknown swap variant {config.variant!r}; choose one of {', '.join((*VARIANTS, CONTROL))}")
  for key, what in (("decoder", "the encoder-decoder whose decoder is kept"), ("encoder", "the CPU whose encoder")):
    if not config[key]:
      raise UserError(f"no --config.{key}: pass {what} (a training workdir or checkpoint directory)")
  source_a, source_b = derived.Source.load(config.decoder), derived.Source.load(config.encoder)
  meta_a, meta_b = source_a.meta, source_b.meta
  if meta_a["arch"] != "encoder_decoder" or meta_a["model_config"].get("encoder_config"):
    what = "a stitched encoder_decoder" if meta_a["arch"] == "encoder_decoder" else f"a {meta_a['arch']}"
    raise UserError(
      f"--config.decoder={config.decoder} holds {what}; the decoder side of a swap is an encoder_decoder trained as one"
    )
  if config.variant == CONTROL and fs.abspath(config.decoder) != fs.abspath(config.encoder):
    raise UserError(
      f"{CONTROL} is the control of a CPU reading its own encoder: pass the same checkpoint as --config.decoder and "
      f"--config.encoder (got {config.decoder} and {config.encoder})"
    )
  encoder_config_of(meta_b, config.encoder)  # refuses a CPU without an encoder before anything else
  corpus_a, corpus_b = source_a.corpus, source_b.corpus
  if corpus_a != corpus_b:
    raise UserError(
      f"the decoder's CPU was trained on corpus {corpus_a!r} and the encoder's on {corpus_b!r}: a swap needs one "
      "corpus compiled by both ISAs (its parallel anchors and its task)"
    )
  train_config = swap_config(config, meta_a, meta_b, config.encoder)
  provenance = {
    "decoder": source_a.record(*SOURCE_FIELDS),
    "encoder": source_b.record(*SOURCE_FIELDS),
    "variant": config.variant,
    "steps": train_config.train.steps,
  }

  def initialize(model, setup: trainer.Setup) -> None:  # a fresh run only: a resumed one holds its stitch
    model_a, _, _ = source_a.load_model()
    model_b, _, _ = source_b.load_model()
    transplant_stacks(model, model_a, model_b)
    if config.variant in CLOSED_FORM:
      x, y = anchor_states(model_a, model_b, setup, config.anchor_docs, config.anchor_pairs, config.seed)
      fit = closed_form.fit_linear if config.variant == "lstsq" else closed_form.fit_procrustes
      kernel, bias = fit(x, y)
      model.stitch.kernel[...] = jnp.asarray(kernel, jnp.float32)
      model.stitch.bias[...] = jnp.asarray(bias, jnp.float32)
      residual = closed_form.apply(x, kernel, bias) - y
      provenance["anchors"] = {
        "docs": config.anchor_docs,
        "pairs": len(x),
        "relative_residual": float(np.sum(residual**2) / np.sum((y - y.mean(0)) ** 2)),
      }

  log(f"swapping the encoder of {meta_b['isa_name']} ({meta_b['arch']}) into {meta_a['isa_name']} by {config.variant}")
  return derived.train(
    train_config,
    workdir,
    provenance=provenance,
    initialize=initialize,
    count_tokens=True,
    should_stop=should_stop,
    log=log,
  )


def transplant_stacks(model, model_a, model_b) -> None:
  """A's token table, decoder (and untied head) and B's table and encoder stack, copied bit-exactly into ``model``."""
  for dst, src in (
    (model.embed, model_a.embed),
    (model.decoder, model_a.decoder),
    (model.encoder_embed, model_b.embed),
    (model.encoder, model_b.encoder),
  ):
    nnx.update(dst, nnx.state(src, nnx.Param))
  if not model.config.tie_embeddings:
    nnx.update(model.head, nnx.state(model_a.head, nnx.Param))


def anchor_states(model_a, model_b, setup: trainer.Setup, docs: int, max_pairs: int, seed: int):
  """(x, y): B's and A's encoded states of the same tokens of the first ``docs`` training programs, paired by bytes."""
  compile_dir = fs.abspath(setup.config.data.compile_dir)
  corpus = setup.config.data.corpus
  split = setup.config.data.train_split
  comp_a, comp_b = setup.compiler, setup.input_compiler or setup.compiler
  tools = toolchain.Toolchain(compile_dir)
  name = tools.corpus_name(corpus, comp_a)
  field_a = tools.split(name, comp_a, split).fields["input"]
  field_b = tools.split(name, comp_b, split).fields["input"]
  length = setup.config.data.input_length
  fits = [i for i in range(len(field_a)) if max(len(field_a.doc(i)), len(field_b.doc(i))) < length][:docs]
  ids_a = [field_a.doc(i) for i in fits]
  ids_b = [field_b.doc(i) for i in fits]
  h_a = states.token_states(model_a, ids_a, length)
  h_b = states.token_states(model_b, ids_b, length)
  return anchors.pairs(h_b, h_a, ids_b, ids_a, comp_b.piece_bytes, comp_a.piece_bytes, max_pairs=max_pairs, seed=seed)
