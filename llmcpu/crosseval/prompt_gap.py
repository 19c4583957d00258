"""Does a CPU read its prompt? The teacher-forced own-vs-other-prompt gap (issue 23).

Each held-out document is cut at a byte offset (``generation.shared_cuts``: just before a space that starts a word,
at or past ``prompt_bytes``, a token boundary of every ISA involved, so every checkpoint reads the same prompt bytes)
and its target is the bytes from the cut to the first such shared token boundary at or past ``target_bytes`` more.
The target is scored teacher-forced twice: after its own prompt and after the prompt of another document (a fixed
derangement of the chosen documents). A CPU that executes its prompt spends fewer bits per byte after its own; one
that ignores it spends the same. The gap is ``bpb(other) − bpb(own)`` (bits per byte, positive = reads the prompt),
with a cluster bootstrap interval over documents, and the same over the target's first ``head_bytes`` bytes (the
part of a continuation that most depends on its prompt). ``per_byte`` adds the mean gap at each target byte 0..N
(byte 0 is the space at the cut; bytes 1.. are the next word's first letters): an id's NLL is spread evenly over
its bytes, so for a char or byte ISA it is exactly the NLL of the id at that byte. Byte 0's mean gap is 0 by
construction when every target starts with the same id (the same space after the same prompts, permuted): a check
of the pairing, not a finding (its interval resamples documents apart from their partners and means nothing).

A decoder reads ``[BOS] + prompt + target``; an encoder-decoder's encoder reads ``prompt + [EOS]`` (the prefix LM
source) and its decoder ``[BOS] + target``, or ``[BOS] + tail + target`` with a decoder context (the prompt's last
ids, ``ModelConfig.decoder_context``) — the same bytes, laid out as each was trained.

``keep_tail_bytes`` = K > 0 asks the like-for-like question "does the CPU read its prompt *beyond its last K
bytes*?": the other condition keeps the document's own prompt from a tail start on (the last shared word start at
or before ``cut − K``, ``splice_points``) and puts another document's opening before it (that document's text from
its start to a shared word start, no longer than the head it replaces and not past its own tail start: the spliced
prompt is never more bytes than the own one). A CPU that reads only the prompt's last K bytes — a local n-gram
model, or an encoder-decoder whose decoder reads the tail itself (``decoder_context`` ≤ K) and ignores its encoder —
has a gap of 0 by construction; both architectures get the same bytes and the same K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmcpu import specials
from llmcpu.compilers import Compiler
from llmcpu.crosseval import generation, intervals
from llmcpu.data import objectives
from llmcpu.data.compiled import CompiledSplit
from llmcpu.errors import UserError

HEAD_BYTES = 8


def derangement(n: int, seed: int) -> np.ndarray:
  """``other[i] ≠ i`` for every i (n ≥ 2): a random cyclic order, each document paired with the next in it."""
  if n < 2:
    raise UserError(f"the other-prompt control needs at least 2 documents, got {n}")
  order = np.random.default_rng([seed, 23]).permutation(n)
  other = np.empty(n, np.int64)
  other[order] = np.roll(order, -1)
  return other


def target_ends(
  raw: Sequence[str], compiled: Sequence[tuple[Compiler, CompiledSplit]], cuts: dict[int, int], target_bytes: int
) -> dict[int, int]:
  """Per document with a cut: the first byte offset at or past ``cut + target_bytes`` that is a token boundary in
  every ``(compiler, split)`` (documents without one are left out)."""
  ends = {}
  for d, cut in cuts.items():
    size = len(raw[d].encode("utf-8"))
    cand = np.arange(cut + target_bytes, size + 1)
    for comp, split in compiled:
      cand = np.intersect1d(cand, generation.token_ends(comp, split.fields["text"].doc(d)))
    if len(cand):
      ends[d] = int(cand[0])
  return ends


def splice_points(
  raw: Sequence[str], compiled: Sequence[tuple[Compiler, CompiledSplit]], cuts: dict[int, int], keep_bytes: int
) -> dict[int, np.ndarray]:
  """Per document with a cut: every offset in ``(0, cut − keep_bytes]`` just before a space that starts a word and
  is a token boundary in every ``(compiler, split)``, ascending (documents without one are left out). The last is
  where the prompt's kept tail begins; the others are where another document's opening may end, so that a spliced
  prompt joins at a word start in every ISA."""
  points = {}
  for d, cut in cuts.items():
    cand = generation.shared_word_starts(raw[d].encode("utf-8"), compiled, d, 1, cut - keep_bytes)
    if len(cand):
      points[d] = cand.astype(np.int64)
  return points


def spliced_prompts(comp: Compiler, prompts: Sequence[np.ndarray], points: Sequence[np.ndarray], other: np.ndarray):
  """``other[i]``'s opening + ``prompts[i]`` from its tail start (``points[i][-1]``): the opening ends at the last of
  ``points[other[i]]`` at or before ``points[i][-1]`` (empty if there is none). Returns (prompts, opening bytes)."""
  ends = [generation.token_ends(comp, p) for p in prompts]  # each prompt's, once: it is a head and a tail
  out, opened = [], []
  for i, j in enumerate(other):
    start = points[i][-1]
    fits = points[j][points[j] <= start]
    head_end = int(fits[-1]) if len(fits) else 0
    tail = prompts[i][np.searchsorted(ends[i], start, side="right") :]
    out.append(np.concatenate([prompts[j][: np.searchsorted(ends[j], head_end, side="right")], tail]))
    opened.append(head_end)
  return out, opened


def split_ids(
  comp: Compiler, split: CompiledSplit, doc: int, cut: int, end: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(prompt ids, target ids, each target id's bytes) of one document: its compiled ids ending at or before byte
  ``cut``, and those in ``[cut, end)`` (both are token boundaries of ``comp``'s compile)."""
  ids = np.asarray(split.fields["text"].doc(doc), np.int64)
  ends = generation.token_ends(comp, ids)
  starts = ends - comp.piece_bytes[ids]
  prompt = ids[ends <= cut]
  inside = (starts >= cut) & (ends <= end)
  return prompt, ids[inside], np.asarray(comp.piece_bytes[ids[inside]], np.float64)


def _pad(rows: Sequence[Sequence[int]], width: int, pad: int = specials.PAD_ID) -> tuple[np.ndarray, np.ndarray]:
  out = np.full((len(rows), width), pad, np.int32)
  seg = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    out[i, : len(r)] = r
    seg[i, : len(r)] = 1
  return out, seg


def _nll_fn(graphdef: nnx.GraphDef, arch: str):
  """Jitted ``(state, batch) -> NLL [B, L]`` (nats, float32) of ``batch["targets"]`` under the model."""

  def nll(state, batch):
    model = nnx.merge(graphdef, state, copy=True)
    if arch == "decoder":
      logits = model(batch["ids"], segment_ids=batch["seg"])
    else:
      logits = model(batch["enc"], batch["ids"], encoder_segment_ids=batch["enc_seg"], decoder_segment_ids=batch["seg"])
    logits = logits.astype(jnp.float32)
    gold = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - gold

  return jax.jit(nll)


def target_nll(
  model,
  arch: str,
  prompts: Sequence[np.ndarray],
  targets: Sequence[np.ndarray],
  *,
  batch_size: int = 32,
  roles: specials.Roles = specials.OWN,
  piece_bytes: np.ndarray | None = None,
) -> list[np.ndarray]:
  """Teacher-forced NLL (nats) of each target id after its prompt: one array per row, as long as its target.
  ``roles``: where the model's ISA keeps BOS/EOS/PAD. ``piece_bytes`` (the prompts' ISA's): an encoder-decoder with
  a decoder context reads the prompt's last ids in its decoder too (prose; without them, as a program's answer)."""
  if arch not in ("decoder", "encoder_decoder"):
    raise UserError(f"the prompt gap needs a decoder or an encoder_decoder, not an {arch}")
  graphdef, state = nnx.split(model)
  fn = _nll_fn(graphdef, arch)
  if arch == "decoder":
    seqs = [[roles.bos, *p.tolist(), *t.tolist()] for p, t in zip(prompts, targets, strict=True)]
    width = max(len(s) for s in seqs) - 1
  else:
    srcs = [[*p.tolist(), roles.eos] for p in prompts]
    context = model.config.decoder_context if piece_bytes is not None else 0
    tails = [objectives.tail_ids(p, piece_bytes, context) if context else p[:0] for p in prompts]
    seqs = [[roles.bos, *a.tolist(), *t.tolist()] for a, t in zip(tails, targets, strict=True)]
    width, src_width = max(len(s) for s in seqs) - 1, max(len(s) for s in srcs)
  out: list[np.ndarray] = []
  n = len(seqs)
  for lo in range(0, n, batch_size):
    rows = list(range(lo, min(lo + batch_size, n)))
    rows += [rows[-1]] * (batch_size - len(rows))  # a fixed batch shape: one compile
    ids, seg = _pad([seqs[i][:-1] for i in rows], width)
    tgt, _ = _pad([seqs[i][1:] for i in rows], width)
    batch = {"ids": ids, "seg": seg, "targets": tgt}
    if arch == "encoder_decoder":
      batch["enc"], batch["enc_seg"] = _pad([srcs[i] for i in rows], src_width)
    nll = np.asarray(jax.device_get(fn(state, batch)), np.float64)
    for j, i in enumerate(rows[: min(batch_size, n - lo)]):
      k = len(targets[i])
      stop = len(seqs[i]) - 1  # the last k positions of the row predict the target
      out.append(nll[j, stop - k : stop])
  return out


def gap_table(
  own: Sequence[np.ndarray], other: Sequence[np.ndarray], nbytes: Sequence[np.ndarray], head_bytes: int
) -> np.ndarray:
  """Per document [n, 6]: NLL own, NLL other, bytes over the whole target, then the same over the ids that end
  within its first ``head_bytes`` bytes."""
  rows = []
  for a, b, w in zip(own, other, nbytes, strict=True):
    head = np.cumsum(w) <= head_bytes
    rows.append([a.sum(), b.sum(), w.sum(), a[head].sum(), b[head].sum(), w[head].sum()])
  return np.asarray(rows, np.float64).reshape(-1, 6)


def _bpb(nll, nbytes):
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(nbytes > 0, nll / (math.log(2) * nbytes), np.nan)


def byte_table(
  own: Sequence[np.ndarray], other: Sequence[np.ndarray], nbytes: Sequence[np.ndarray], last_byte: int
) -> np.ndarray:
  """Per document [n, 2 (last_byte + 1)]: the gap (other − own, bits) at target bytes 0..last_byte, then 1 where
  the target reaches that byte (0 and a gap of 0 where it is shorter). Each id's gap is spread over its bytes."""
  width = last_byte + 1
  rows = np.zeros((len(own), 2 * width), np.float64)
  for i, (a, b, w) in enumerate(zip(own, other, nbytes, strict=True)):
    counts = w.astype(np.int64)
    per_byte = np.repeat((b - a) / (math.log(2) * w), counts)[:width]
    rows[i, : len(per_byte)] = per_byte
    rows[i, width : width + len(per_byte)] = 1.0
  return rows


def byte_figures(table: np.ndarray, clusters: Sequence | None = None, seed: int = 0) -> list[dict]:
  """Per target byte: the mean gap (bits) over the documents that reach it, with its bootstrap interval."""
  width = table.shape[1] // 2
  out = []
  for k in range(width):
    t = table[:, [k, width + k]]
    n = float(t[:, 1].sum())
    b = intervals.bootstrap_info(t, lambda s: _mean(s[..., 0], s[..., 1]), clusters=clusters, seed=seed)
    gap = float(_mean(t[:, 0].sum(), n))
    out.append({"byte": k, "documents": int(n), "gap": gap, "gap_ci": b["ci"], "gap_ci_info": b["info"]})
  return out


def _mean(total, count):
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(count > 0, total / count, np.nan)


def gap_figures(table: np.ndarray, clusters: Sequence | None = None, seed: int = 0) -> dict:
  """Bits per byte own / other and their difference (other − own), with its bootstrap interval, for the whole
  target and its head."""
  out: dict = {"documents": len(table)}
  for name, cols in (("", slice(0, 3)), ("head_", slice(3, 6))):
    t = table[:, cols]
    total = t.sum(0)
    out[f"{name}bpb_own"] = float(_bpb(total[0], total[2]))
    out[f"{name}bpb_other"] = float(_bpb(total[1], total[2]))
    out[f"{name}gap"] = out[f"{name}bpb_other"] - out[f"{name}bpb_own"]
    b = intervals.bootstrap_info(t, lambda s: _bpb(s[..., 1] - s[..., 0], s[..., 2]), clusters=clusters, seed=seed)
    out[f"{name}gap_ci"], out[f"{name}gap_ci_info"] = b["ci"], b["info"]
  return out


def prompt_gap(
  model,
  arch: str,
  comp: Compiler,
  split: CompiledSplit,
  cuts: dict[int, int],
  ends: dict[int, int],
  docs: Sequence[int],
  *,
  clusters: Sequence | None = None,
  head_bytes: int = HEAD_BYTES,
  seed: int = 0,
  max_prompt_ids: int = 0,
  max_row_ids: int = 0,
  batch_size: int = 32,
  per_byte: int = 0,
  points: dict[int, np.ndarray] | None = None,
) -> dict:
  """The gap of one CPU (``model`` of ``arch``, ISA ``comp``, ``split`` its compile of the documents) over ``docs``
  (each with a cut and an end). ``max_prompt_ids``: the most ids of prompt an encoder-decoder was trained to read;
  ``max_row_ids``: the longest row a decoder was trained on ([BOS] + prompt + target); 0 = any. ``per_byte`` = N > 0
  adds ``per_byte``: the mean gap at target bytes 0..N (``byte_figures``). ``points`` (``splice_points``): the other
  condition keeps each document's own prompt from its tail start on and swaps only what comes before it."""
  parts = [split_ids(comp, split, d, cuts[d], ends[d]) for d in docs]
  prompts, targets, nbytes = (list(x) for x in zip(*parts, strict=True))
  other = derangement(len(prompts), seed)
  if points is None:
    others = [prompts[j] for j in other]
  else:
    others, opened = spliced_prompts(comp, prompts, [points[d] for d in docs], other)
  longest = max(len(p) for p in prompts + others)
  if max_prompt_ids and longest > max_prompt_ids:
    raise UserError(
      f"a prompt is {longest} ids of ISA {comp.name}, more than the {max_prompt_ids} this CPU reads: "
      "lower --prompt_bytes"
    )
  row = 1 + max(len(p) + len(t) for ps in (prompts, others) for p, t in zip(ps, targets, strict=True))
  if max_row_ids and row > max_row_ids:
    raise UserError(
      f"a prompt and its target are {row} ids of ISA {comp.name} with BOS, longer than the {max_row_ids} this decoder "
      "was trained on: lower --prompt_bytes or --target_bytes"
    )
  cl = None if clusters is None else [clusters[d] for d in docs]
  out = _gap(model, arch, comp, prompts, others, targets, nbytes, cl, head_bytes, seed, per_byte, batch_size)
  if points is not None:
    out["kept_tail_bytes_mean"] = float(np.mean([cuts[d] - points[d][-1] for d in docs]))
    out["other_opening_bytes_mean"] = float(np.mean(opened))
    out["own_head_bytes_mean"] = float(np.mean([points[d][-1] for d in docs]))
  return out


def _gap(
  model, arch, comp, prompts, others, targets, nbytes, clusters, head_bytes, seed, per_byte, batch_size, prose=True
) -> dict:
  """Own vs other prompts (``others[i]`` in place of ``prompts[i]``), teacher-forced on the same targets:
  ``gap_figures`` (+ ``per_byte``)."""
  run = dict(batch_size=batch_size, roles=comp.roles, piece_bytes=comp.piece_bytes if prose else None)
  nll_own = target_nll(model, arch, prompts, targets, **run)
  nll_other = target_nll(model, arch, others, targets, **run)
  table = gap_table(nll_own, nll_other, nbytes, head_bytes)
  out = gap_figures(table, clusters, seed)
  out.update(head_bytes=head_bytes, target_bytes_total=float(table[:, 2].sum()))
  if per_byte > 0:
    out["per_byte"] = byte_figures(byte_table(nll_own, nll_other, nbytes, per_byte), clusters, seed)
  return out


def program_gap(
  model, arch: str, comp: Compiler, split: CompiledSplit, docs: Sequence[int], *, head_bytes: int = HEAD_BYTES,
  seed: int = 0, per_byte: int = 0, batch_size: int = 32,
) -> dict:  # fmt: skip
  """The gap on input/target programs: each answer after its own program vs another's (each program its own
  cluster), fed as the CPU was trained (a decoder ``[BOS] input target``, an encoder-decoder ``input EOS`` →
  ``[BOS] target``)."""
  inp, tgt = split.fields["input"], split.fields["target"]
  prompts = [np.asarray(inp.doc(d), np.int64) for d in docs]
  targets = [np.asarray(tgt.doc(d), np.int64) for d in docs]
  if any(len(t) == 0 for t in targets):
    raise UserError("a program with an empty answer has nothing to score; pick other programs")
  nbytes = [np.asarray(comp.piece_bytes[t], np.float64) for t in targets]
  others = [prompts[j] for j in derangement(len(prompts), seed)]
  return _gap(model, arch, comp, prompts, others, targets, nbytes, None, head_bytes, seed, per_byte, batch_size,
              prose=False)  # fmt: skip


def measure(
  paths: Sequence[str],
  *,
  compile_dir: str = "",
  corpus: str = "",
  split: str = "test",
  prompt_bytes: int = 64,
  target_bytes: int = 40,
  num_docs: int = 256,
  head_bytes: int = HEAD_BYTES,
  seed: int = 0,
  per_byte: int = 0,
  keep_tail_bytes: int = 0,
  log=print,
) -> list[dict]:
  """The gap of every checkpoint (a run workdir or checkpoint directory) on the same documents, prompt bytes and
  target bytes: cuts and ends are shared token boundaries of all their ISAs. ``compile_dir``/``corpus`` default to
  the first checkpoint's training config. ``per_byte`` = N > 0: also the mean gap at target bytes 0..N.
  ``keep_tail_bytes`` = K > 0: swap only the prompt before its last ≥ K bytes (``splice_points``)."""
  from llmcpu.crosseval.library import Library
  from llmcpu.training import checkpoints

  _check_sizes(prompt_bytes, target_bytes, num_docs, head_bytes, per_byte, keep_tail_bytes)
  loaded = [checkpoints.load_model(p) for p in paths]
  cfg = loaded[0][1]["config"]
  compile_dir = compile_dir or cfg["data"]["compile_dir"]
  corpus = corpus or cfg["data"]["corpus"]
  lib = Library(compile_dir)
  comps = list({c.fingerprint: c for _, _, c in loaded}.values())
  compiled = [(c, lib.split(lib.corpus_name(corpus, c), c, split)) for c in comps]
  name0 = lib.corpus_name(corpus, comps[0])
  if compiled[0][1].kind == "seq2seq":  # programs: the prompt is the program, the target its answer
    if keep_tail_bytes:
      raise UserError("--keep_tail_bytes splices prose prompts; a program has no word starts to splice at: drop it")
    return _measure_programs(paths, loaded, lib, corpus, split, compiled[0][1].num_docs, num_docs, head_bytes, seed,
                             per_byte, log)  # fmt: skip
  raw = lib.raw_texts(name0, comps[0], split)["text"]
  cuts = lib.prompt_cuts(corpus, comps, split, prompt_bytes, target_bytes + generation.CUT_SLACK)
  ends = target_ends(raw, compiled, cuts, target_bytes)
  points = splice_points(raw, compiled, {d: cuts[d] for d in ends}, keep_tail_bytes) if keep_tail_bytes else None
  docs = generation.pick_cuts({d: cuts[d] for d in (ends if points is None else points)}, num_docs)
  if len(docs) < 2:
    where = f" and a word start {keep_tail_bytes} bytes before its end" if keep_tail_bytes else ""
    raise UserError(
      f"only {len(docs)} documents of {corpus}/{split} have a {prompt_bytes}-byte prompt{where} and a target"
    )
  clusters = lib.clusters(corpus, name0, comps[0], split)
  rows = []
  for path, (model, meta, comp) in zip(paths, loaded, strict=True):
    arch = meta["model_config"]["arch"]
    data = meta["config"]["data"]
    limit = data["input_length"] - 1 if arch == "encoder_decoder" else 0
    row_limit = data["length"] if arch == "decoder" else 0
    s = lib.split(lib.corpus_name(corpus, comp), comp, split)
    row = prompt_gap(
      model,
      arch,
      comp,
      s,
      cuts,
      ends,
      docs,
      clusters=clusters,
      head_bytes=head_bytes,
      seed=seed,
      max_prompt_ids=limit,
      max_row_ids=row_limit,
      per_byte=per_byte,
      points=points,
    )
    row.update(checkpoint=str(path), arch=arch, isa=comp.name, corpus=corpus, split=split)
    row.update(prompt_bytes=prompt_bytes, target_bytes=target_bytes, seed=seed, keep_tail_bytes=keep_tail_bytes)
    log(format_row(row))
    if per_byte > 0:
      log(format_bytes(row))
    rows.append(row)
  return rows


def _check_sizes(prompt_bytes, target_bytes, num_docs, head_bytes, per_byte, keep_tail_bytes) -> None:
  """One line for sizes ``measure`` cannot use."""
  if prompt_bytes < 1 or target_bytes < 1 or num_docs < 2 or head_bytes < 1 or per_byte < 0 or keep_tail_bytes < 0:
    raise UserError("prompt_bytes, target_bytes and head_bytes must be ≥ 1, docs ≥ 2, per_byte and keep_tail_bytes ≥ 0")
  if keep_tail_bytes >= prompt_bytes:
    raise UserError(
      f"keep_tail_bytes ({keep_tail_bytes}) keeps the whole {prompt_bytes}-byte prompt: raise --prompt_bytes"
    )


def _measure_programs(paths, loaded, lib, corpus, split, n, num_docs, head_bytes, seed, per_byte, log) -> list[dict]:
  """``measure`` on an input/target corpus: ``num_docs`` of its ``n`` programs, evenly spread."""
  docs = sorted({int(d) for d in np.linspace(0, n - 1, min(num_docs, n))})
  if len(docs) < 2:
    raise UserError(f"only {len(docs)} programs in {corpus}/{split}: the other-prompt control needs 2")
  rows = []
  for path, (model, meta, comp) in zip(paths, loaded, strict=True):
    arch = meta["model_config"]["arch"]
    s = lib.split(lib.corpus_name(corpus, comp), comp, split)
    row = program_gap(model, arch, comp, s, docs, head_bytes=head_bytes, seed=seed, per_byte=per_byte)
    row.update(checkpoint=str(path), arch=arch, isa=comp.name, corpus=corpus, split=split, seed=seed)
    log(format_row(row))
    if per_byte > 0:
      log(format_bytes(row))
    rows.append(row)
  return rows


def format_row(r: dict) -> str:
  def ci(key):
    c = r.get(key)
    return f"[{c[0]:+.3f}, {c[1]:+.3f}]" if c else "(no interval)"

  swapped = "other"
  if r.get("keep_tail_bytes"):
    swapped = (
      f"other's first {r['other_opening_bytes_mean']:.1f} bytes (own {r['own_head_bytes_mean']:.1f}) + own last "
      f"{r['kept_tail_bytes_mean']:.1f} (≥ {r['keep_tail_bytes']})"
    )
  return (
    f"{r['arch']} {r['isa']} ({r['checkpoint']}): {r['documents']} docs, bits per byte own {r['bpb_own']:.3f} vs "
    f"{swapped} {r['bpb_other']:.3f}, gap {r['gap']:+.3f} {ci('gap_ci')}; first {r['head_bytes']} bytes "
    f"{r['head_bpb_own']:.3f} vs {r['head_bpb_other']:.3f}, gap {r['head_gap']:+.3f} {ci('head_gap_ci')}"
  )


def format_bytes(r: dict) -> str:
  """The per-byte gaps of one row: ``byte k: gap [lo, hi]``, byte 0 the space at the cut."""
  cells = []
  for b in r["per_byte"]:
    c = b["gap_ci"]
    cells.append(f"{b['byte']}: {b['gap']:+.3f}" + (f" [{c[0]:+.3f}, {c[1]:+.3f}]" if c else " (no interval)"))
  return f"{r['arch']} {r['isa']} gap per target byte (bits, other − own): " + "; ".join(cells)
