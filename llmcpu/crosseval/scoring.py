"""Scoring one CPU on foreign machine code: exact bits per byte, accuracy, illegal opcodes, and the baselines.

Bits per byte is Σ NLL over *content* targets / (ln 2 · Σ UTF-8 bytes of the pieces those targets name): content
means the document's own ids (regular ids and UNK), so EOS, BOS, PAD, MASK and span sentinels never count, whatever
the objective. Compilers are lossless, so over one ``Pipeline.eval_batches()`` pass of ``lm`` every content id is a
target exactly once and the bytes sum to the split's raw bytes; for ``mlm`` and ``span_corruption`` the bytes are
those of the masked pieces, exactly. ``mlm`` chooses whole words per document over byte spans and ``prefix_lm`` cuts
at words (``llmcpu.data.units``), so every ISA scores the same bytes and the figure is comparable across ISAs;
``span_corruption`` on prose draws its spans over one ISA's tokens, so its columns score different bytes.

Illegal opcodes: an input id ≥ the model's vocabulary goes through the model's policy (mapped to UNK and counted by
its ``IllegalOpcodes`` counter). An illegal *target* cannot be named by the model; it is scored from the model's
probability of UNK (the id the policy maps it to), counted, and never gathered out of range (JAX would clamp). The
UNK mass is shared uniformly by UNK and the ``V_eval − V_model`` ids the model cannot name:
``p(t) = p(UNK) / (V_eval − V_model + 1)`` for t = UNK or t ≥ V_model, so the model's scores form a proper
distribution over the evaluation ISA's ids. Plain p(UNK) would not: one UNK would stand for hundreds of pieces, and
a CPU that cannot even name a long piece could beat its own native cell by predicting "something unknown" (seen on
tiny models: bpe500 on bpe1000 code scored 3.56 vs 3.77 bits per byte natively). When V_eval ≤ V_model (every
native cell) the share is 1 and nothing changes.

Baselines, per cell, over the same scored fields (``scored_fields``):
  * ``bpb_uniform``: log2(model vocabulary) bits per scored token;
  * ``bpb_unigram``: the evaluation ISA's unigram model — id counts on its train split plus one EOS per document,
    add-one smoothed over its vocabulary — on the same targets (paired with the cell, document by document);
  * ``bpb_matched``: the native cell of the same architecture on the same corpus (filled in by ``add_baselines``).
``normalized_score = (bpb_unigram − bpb) / (bpb_unigram − bpb_matched)``: 1 = as good as the native CPU, 0 = no
better than counting opcodes, < 0 = confidently wrong. Null when there is no matched cell or it does not beat the
unigram model (the scale would be meaningless). The matched cell is the native cell *of the same seed*.

Intervals: a cell keeps its per-document sums (NLL, bytes, unigram bits) under the private key ``_docs`` and each
document's cluster under ``_clusters`` (``llmcpu.data.clusters``; neither is written out); ``bits_per_byte_ci`` and
``normalized_score_ci`` are 95% cluster-bootstrap intervals over documents (``intervals.py``; ``<key>_ci_info`` says
how many clusters), the latter resampling the cell, the unigram baseline and the matched cell on the same documents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmcpu import compilers, models, specials
from llmcpu.crosseval import intervals
from llmcpu.data.compiled import CompiledSplit
from llmcpu.training import loss

PASS_SUM_KEYS = ("nll", "tokens", "bytes", "correct", "unigram_bits", "illegal_targets", "illegal_inputs")
DOC_KEYS = ("nll", "bytes", "unigram_bits")  # per-document sums, for intervals over documents


def scored_fields(split: CompiledSplit, objective: str) -> list[str]:
  """The document fields whose ids are targets: a program's answer for lm_targets/seq2seq, else everything."""
  if objective in ("lm_targets", "seq2seq"):
    return ["target"]
  return ["text"] if split.kind == "text" else ["input", "target"]


def unk_share_nats(model_vocab: int, eval_vocab: int) -> float:
  """ln(ids sharing the UNK mass): UNK itself plus every evaluation id the model cannot name."""
  return math.log(max(eval_vocab - model_vocab, 0) + 1)


def make_sums_fn(graphdef: nnx.GraphDef, vocab_size: int, unk_id: int = specials.UNK_ID):
  """A jitted ``(params, rest, batch, unk_share) -> figures`` for one model (``unk_share`` from ``unk_share_nats``,
  a traced scalar): per position the NLL of content targets (nats, 0 elsewhere), content and hits, and the illegal
  counts. Batch shapes are fixed per model, so one XLA compile serves every ISA. ``unk_id``: the model's stand-in for
  ids it does not know (``ModelConfig.unk_id``)."""

  def sums(params, rest, batch, unk_share):
    model = nnx.merge(graphdef, params, rest, copy=True)
    before = sum(jnp.sum(x) for x in jax.tree.leaves(nnx.state(model, models.IllegalOpcodes)))
    logits, targets, weights = loss.forward(model, batch)
    after = sum(jnp.sum(x) for x in jax.tree.leaves(nnx.state(model, models.IllegalOpcodes)))
    logits = logits.astype(jnp.float32)
    illegal = (targets < 0) | (targets >= vocab_size)
    safe = jnp.where(illegal, unk_id, targets)  # score from p(UNK): what the input policy maps it to
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    nll = nll + jnp.where(safe == unk_id, unk_share, 0.0)
    content = loss.content_mask(targets, weights, batch.get("content"))  # the evaluation ISA's own roles
    return {
      "nll": nll * content,
      "content": content,
      # An illegal target can never be the argmax: comparing raw targets keeps it wrong.
      "correct": (jnp.argmax(logits, axis=-1) == targets) * content,
      "illegal_targets": jnp.sum(illegal * content),
      "illegal_inputs": (after - before).astype(jnp.float32),
    }

  return jax.jit(sums)


def run_pass(sums_fn, params, rest, batches, unk_share: float, unigram_bits: np.ndarray, num_docs: int) -> dict:
  """One pass over evaluation batches (built with ``document_ids=True``): totals in float64 and per-document sums
  (``docs[key]`` for ``DOC_KEYS``, NLL in nats). ``unigram_bits``: −log2 p of the evaluation ISA's unigram model per
  id, scored on the same targets (a paired baseline). Dispatch stays asynchronous until the end."""
  share = jnp.float32(unk_share)
  host, outs = [], []
  for b in batches:
    docs, tbytes = b.pop("target_docs"), b["target_bytes"]
    targets = b["decoder_targets"] if "decoder_targets" in b else b["targets"]
    host.append((docs, tbytes, targets))
    outs.append(sums_fn(params, rest, b, share))
  total = dict.fromkeys(PASS_SUM_KEYS, 0.0)
  per_doc = {k: np.zeros(num_docs) for k in DOC_KEYS}
  for (docs, tbytes, targets), out in zip(host, jax.device_get(outs), strict=True):
    scored = docs >= 0
    d = docs[scored]
    nll = np.asarray(out["nll"], np.float64)[scored]
    uni = unigram_bits[targets[scored]]
    nbytes = np.asarray(tbytes, np.float64)[scored]
    per_doc["nll"] += np.bincount(d, weights=nll, minlength=num_docs)
    per_doc["bytes"] += np.bincount(d, weights=nbytes, minlength=num_docs)
    per_doc["unigram_bits"] += np.bincount(d, weights=uni, minlength=num_docs)
    total["nll"] += float(np.sum(out["nll"], dtype=np.float64))
    total["tokens"] += float(np.sum(out["content"], dtype=np.float64))
    total["correct"] += float(np.sum(out["correct"], dtype=np.float64))
    total["bytes"] += float(np.sum(tbytes, dtype=np.float64))
    total["unigram_bits"] += float(uni.sum())
    total["illegal_targets"] += float(out["illegal_targets"])
    total["illegal_inputs"] += float(out["illegal_inputs"])
  return {"total": total, "docs": per_doc}


def bits_per_byte(nll_nats: float, nbytes: float) -> float | None:
  return nll_nats / (math.log(2) * nbytes) if nbytes > 0 else None


def field_ids(split: CompiledSplit, fields: Sequence[str]) -> np.ndarray:
  return np.concatenate([np.asarray(split.fields[f].tokens) for f in fields])


def field_bytes(split: CompiledSplit, fields: Sequence[str]) -> int:
  return int(sum(int(split.fields[f].nbytes.sum()) for f in fields))


def unigram_log2_probs(train: CompiledSplit, fields: Sequence[str]) -> np.ndarray:
  """log2 p(id) of the ISA's add-one-smoothed unigram model over its whole vocabulary (EOS counted per document)."""
  counts = np.bincount(field_ids(train, fields), minlength=train.vocab_size).astype(np.float64)
  counts[train.roles.eos] += train.num_docs
  counts += 1.0
  return np.log2(counts / counts.sum())


def illegal_rate(split: CompiledSplit, vocab_size: int) -> tuple[float, int, int]:
  """(share of ids ≥ the model's vocabulary over every id of the split, illegal ids, all ids)."""
  ids = field_ids(split, list(split.fields))
  n_illegal = int(np.count_nonzero((ids < 0) | (ids >= vocab_size)))
  return n_illegal / max(len(ids), 1), n_illegal, int(len(ids))


def misread_rate(split: CompiledSplit, own_pieces: Sequence[str], eval_pieces: Sequence[str]) -> float:
  """Share of the split's ids that are legal for the model but name another piece in its ISA (silently misread)."""
  common = min(len(own_pieces), len(eval_pieces))
  differs = np.array([own_pieces[i] != eval_pieces[i] for i in range(common)], bool)
  ids = field_ids(split, list(split.fields))
  legal = ids[(ids >= 0) & (ids < common)]
  return float(np.count_nonzero(differs[legal]) / max(len(ids), 1))


def normalized_score(bpb: float | None, unigram: float | None, matched: float | None) -> float | None:
  if bpb is None or unigram is None or matched is None or not unigram - matched > 1e-9:
    return None
  return (unigram - bpb) / (unigram - matched)


def _doc_table(r: dict, *keys: str) -> np.ndarray:
  return np.stack([r["_docs"][k] for k in keys], axis=1)


def store_bpb_interval(r: dict, seed: int = 0) -> None:
  """``bits_per_byte_ci`` (and ``_ci_info``): the 95% cluster-bootstrap interval of a cell's bits per byte."""
  table = _doc_table(r, "nll", "bytes")
  ratio = intervals.ratio(0, 1, 1.0 / math.log(2))
  intervals.store(r, "bits_per_byte", table, ratio, clusters=r.get("_clusters"), seed=seed)


def _normalized(sums: np.ndarray) -> np.ndarray:
  """(unigram − cell) / (unigram − matched) from sums of [cell nats, unigram bits, matched nats] (bytes cancel)."""
  cell, uni, matched = sums[..., 0] / math.log(2), sums[..., 1], sums[..., 2] / math.log(2)
  den = uni - matched
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(den > 1e-9 * np.abs(uni), (uni - cell) / den, np.nan)


def add_baselines(rows: list[dict]) -> None:
  """Fills ``bpb_matched``, ``normalized_score`` and its interval from the native cell of the same architecture,
  corpus, split, evaluation ISA and seed.

  An evaluation ISA that no CPU was trained on but that permutes one that was (a damage point) is matched by exact
  symmetry: a CPU trained on it is the base ISA's CPU with its embedding rows permuted, so its native bits per byte
  is the base CPU's on the base ISA (``bpb_matched_via`` names the base)."""

  def key(r: dict, fingerprint: str | None = None) -> tuple:
    return (r["arch"], r["corpus"], r["split"], fingerprint or r["eval_fingerprint"], r.get("seed"))

  native = {key(r): r for r in rows if r.get("status") == "ok" and r.get("native") and r.get("bits_per_byte")}
  fingerprints = {r["eval_isa_spec"]: r["eval_fingerprint"] for r in rows if r.get("eval_isa_spec")}
  for r in rows:
    if r.get("status") != "ok":
      continue
    matched, r["bpb_matched_via"] = native.get(key(r)), None
    spec = compilers.parse(r["eval_isa_spec"]) if matched is None and r.get("eval_isa_spec") else None
    if spec is not None and spec.permuted and str(spec.base) in fingerprints:
      matched = native.get(key(r, fingerprints[str(spec.base)]))
      r["bpb_matched_via"] = str(spec.base) if matched else None
    r["bpb_matched"] = matched["bits_per_byte"] if matched else None
    r["normalized_score"] = normalized_score(r.get("bits_per_byte"), r.get("bpb_unigram"), r["bpb_matched"])
    r["normalized_score_ci"] = None
    if r["normalized_score"] is not None and "_docs" in r and "_docs" in matched:
      table = np.stack([r["_docs"]["nll"], r["_docs"]["unigram_bits"], matched["_docs"]["nll"]], axis=1)
      seed = r.get("seed") or 0
      intervals.store(r, "normalized_score", table, _normalized, clusters=r.get("_clusters"), seed=seed)
