"""Encoder states of programs, batched as training lays them out (ids + EOS, padded to ``length``): per token (the
anchors a stitch is fitted on) or pooled (embeddings a readout reads)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmcpu.models.architectures import Encoder
from llmcpu.specials import EOS_ID, PAD_ID


def _batches(docs: Sequence[np.ndarray], length: int, batch: int) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
  """(documents, ids [batch, length], segment ids) per batch; a document is cut to ``length`` − 1 ids + EOS."""
  for start in range(0, len(docs), batch):
    chunk = [np.asarray(d)[: length - 1] for d in docs[start : start + batch]]
    ids = np.full((batch, length), PAD_ID, np.int32)
    for i, d in enumerate(chunk):
      ids[i, : len(d)], ids[i, len(d)] = d, EOS_ID
    yield chunk, ids, (ids != PAD_ID).astype(np.int32)


def token_states(model, docs: Sequence[np.ndarray], length: int, batch: int = 64) -> list[np.ndarray]:
  """Each document's encoded states [len(doc), D] (float32) by an encoder-decoder's ``encode`` or an Encoder's
  ``hidden``."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def encode(state, ids, seg):
    m = nnx.merge(graphdef, state, copy=True)
    return (m.hidden if isinstance(m, Encoder) else m.encode)(ids, segment_ids=seg).astype(jnp.float32)

  out = []
  for chunk, ids, seg in _batches(docs, length, batch):
    h = np.asarray(encode(state, ids, seg))
    out += [h[i, : len(d)] for i, d in enumerate(chunk)]
  return out


def embeddings(model, docs: Sequence[np.ndarray], length: int, batch: int = 64) -> np.ndarray:
  """Embeddings [N, D] (float32): an Encoder's ``embed_pooled``, a readout's ``embedding``, or an encoder-decoder's
  encoder states averaged the same way (over the document's ids and its EOS)."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def pooled(state, ids, seg):
    m = nnx.merge(graphdef, state, copy=True)
    if isinstance(m, Encoder):
      return m.embed_pooled(ids, segment_ids=seg)
    if m.config.pool:
      return m.embedding(ids, segment_ids=seg)
    h, w = m.encode(ids, segment_ids=seg).astype(jnp.float32), (seg != 0).astype(jnp.float32)
    return jnp.einsum("bld,bl->bd", h, w) / jnp.maximum(w.sum(1, keepdims=True), 1.0)

  out = [np.asarray(pooled(state, ids, seg))[: len(chunk)] for chunk, ids, seg in _batches(docs, length, batch)]
  return np.concatenate(out) if out else np.zeros((0, model.config.d_model), np.float32)
