"""The cross-evaluation matrix: every CPU (checkpoint) × every evaluation ISA, machine code fed as is.

Each checkpoint is loaded with its own compiler (from its metadata). For every evaluation ISA, the model receives
that ISA's compiled split of the checkpoint's corpus — never re-tokenized: foreign opcodes are the point. Batch
shapes depend only on the model (its batch size and lengths, fitted once over every evaluation ISA for seq2seq),
so each model's scoring function and generation are compiled by XLA once and serve every ISA.

A checkpoint that cannot be read, an ISA missing from the compile dir, or any error inside one cell becomes a row
with ``status: "failed"`` and a one-line ``error``; the rest of the matrix is still computed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from llmcpu import compilers, specials
from llmcpu.compilers import Compiler
from llmcpu.crosseval import calibration, coherence, generation, intervals, resume, scoring
from llmcpu.crosseval.library import Library, one_line
from llmcpu.data import objectives as obj
from llmcpu.data.compiled import CompiledSplit
from llmcpu.data.pipeline import Pipeline, bytes_per_token
from llmcpu.errors import Stopped, UserError
from llmcpu.metrics import text as text_metrics
from llmcpu.training import checkpoints

_NEW_BYTES, _TAIL_BYTES = coherence.NEW_BYTES, coherence.TAIL_BYTES  # the field `coherence` hides the module below


@dataclasses.dataclass
class CrossEvalOptions:
  """Knobs of a cross-evaluation; the defaults keep a tiny-model matrix to seconds per cell on a CPU.

  These defaults are the only ones: configs/cross_eval.py and an experiment's ``crosseval`` block are made from them.
  """

  split: str = "test"  # the held-out split every cell is scored on
  train_split: str = "train"  # unigram counts, the judge and the lexicon
  batch_size: int = 0  # rows per eval batch; 0 = the checkpoint's training batch size
  max_docs: int = 0  # score only the first N documents of the split; 0 = all
  seed: int = 0  # MLM masks, span corruption, sampling
  coherence: bool = True  # generate and judge (decoders, encoder-decoders)
  prompts: int = 64  # prose prompts (held-out documents long enough, evenly spread over the split)
  program_prompts: int = 1000  # programs prompts
  prompt_bytes: int = 64  # prose prompt: cut at the first shared word boundary at or past this many bytes
  new_bytes: int = _NEW_BYTES  # prose: bytes of output (and of the true continuation) judged
  new_tokens: int = 0  # prose token budget; 0 = enough for new_bytes in the CPU's own ISA (its bytes per token)
  tail_bytes: int = _TAIL_BYTES  # relevance beyond the tail: the prompt's last bytes held fixed
  answer_tokens: int = 48  # programs: answer budget (generation stops at EOS)
  temperature: float = 0.8  # the sampled generation (the other is greedy)
  shuffled_prompts: bool = True  # calibration: native CPUs also run their prompts with the ids shuffled
  judge_order: int = 5
  judge_max_bytes: int = 16 << 20
  representation_docs: int = 32  # encoders: documents embedded natively and foreign
  samples: int = 3  # generations kept per cell in results.jsonl
  equivalence_margin: float = intervals.EQUIVALENCE_MARGIN  # TOST: |relevance| below this is "does not execute"

  def __post_init__(self):
    if not self.equivalence_margin > 0:
      raise UserError(
        f"equivalence_margin must be > 0 (|relevance| below it counts as 0), got {self.equivalence_margin}"
      )

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> CrossEvalOptions:
    """The options among ``config``'s keys (configs/cross_eval.py); the other keys are not options."""
    return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config})


@dataclasses.dataclass
class LoadedModel:
  """A CPU already in memory (e.g. straight after training): what ``checkpoints.load_model`` returns, named."""

  model: object
  meta: dict
  compiler: Compiler
  name: str


_SUMMARY_FIGURES = ("fluency", "relevance", "coherence", "relevance_beyond_tail")


def _round_up(n: int, k: int = 8) -> int:
  return -(-n // k) * k


class ModelEvaluator:
  """One CPU against any number of ISAs; jitted functions are built once here and reused by every cell."""

  def __init__(self, loaded: LoadedModel, library: Library, options: CrossEvalOptions, corpus: str | None = None):
    self.loaded, self.lib, self.opt = loaded, library, options
    self.model, self.meta, self.own = loaded.model, loaded.meta, loaded.compiler
    self.config = ml_collections.ConfigDict(self.meta["config"])
    self.arch = self.meta["arch"]
    self.mc = self.model.config
    self.corpus = corpus or self.config.data.corpus
    self.batch_size = options.batch_size or self.config.train.batch_size
    self.length = self.config.data.length
    self.input_length, self.target_length = self.config.data.input_length, self.config.data.target_length
    graphdef, params, rest = nnx.split(self.model, nnx.Param, ...)
    # Private committed copies: the split states share Variables with the model, and generate() swaps its counter
    # for a committed array, which would change the jit signature and compile the scoring function again.
    device = jax.local_devices()[0]  # this process' own (on a pod slice devices()[0] may be another host's)
    self.params, self.rest = jax.tree.map(lambda x: jax.device_put(x, device), (params, rest))
    self.sums_fn = scoring.make_sums_fn(graphdef, self.mc.vocab_size, self.mc.unk_id)
    self.embed_fn = None
    if self.arch == "encoder":
      self.embed_fn = jax.jit(
        lambda p, r, ids, seg: nnx.merge(graphdef, p, r, copy=True).embed_pooled(ids, segment_ids=seg)
      )
    self.planned = False
    self.evaluation: list[Compiler] = []  # the matrix's evaluation ISAs: prose prompts are cut where all agree

  @property
  def xla_compiles(self) -> int:
    return int(self.sums_fn._cache_size())

  def plan(self, evaluation: Sequence[Compiler]) -> None:
    """Fixes every shape before the first cell: seq2seq lengths fitted over all evaluation ISAs' splits."""
    self.evaluation = list(evaluation)
    splits = []
    for comp in evaluation:
      try:
        splits.append(self.lib.split(self.lib.corpus_name(self.corpus, comp), comp, self.opt.split))
      except Exception:  # noqa: BLE001 - that cell fails later with its own message
        continue
    seq2seq = [s for s in splits if s.kind == "seq2seq"]
    if self.arch == "encoder_decoder" and seq2seq:
      need_in = max(int(s.fields["input"].lengths.max(initial=0)) + 1 for s in seq2seq)
      need_tg = max(int(s.fields["target"].lengths.max(initial=0)) + 1 for s in seq2seq)
      self.input_length = max(self.input_length, _round_up(need_in))
      self.target_length = max(self.target_length, _round_up(need_tg))
      if self.mc.positions == "learned":  # a longer row would not fit the position table: truncate (counted)
        self.input_length = min(self.input_length, self.mc.max_len)
        self.target_length = min(self.target_length, self.mc.max_len)
    self.planned = True

  # --- one cell -----------------------------------------------------------------------------------------------

  def pipeline(self, split: CompiledSplit, objective: str) -> Pipeline:
    extra = {"truncate": True} if objective == "seq2seq" else {}
    extra.update(obj.context_options(objective, self.mc.decoder_context))
    return Pipeline(
      split,
      objective=objective,
      global_batch=self.batch_size,
      seed=self.opt.seed,
      length=self.length,
      input_length=self.input_length,
      target_length=self.target_length,
      shuffle=False,
      document_ids=True,
      **extra,
    )

  def score(self, comp: Compiler) -> dict:
    """The scoring part of a cell (bits per byte, accuracy, illegal opcodes, baselines): the pure eval."""
    if not self.planned:
      self.plan([comp])
    corpus_name = self.lib.corpus_name(self.corpus, comp)
    test = self.lib.split(corpus_name, comp, self.opt.split)
    objective = obj.objective_for(self.config, test.kind)
    pipe = self.pipeline(test, objective)
    share = scoring.unk_share_nats(self.mc.vocab_size, comp.vocab_size)
    policy = self.mc.illegal_id_policy
    fields = scoring.scored_fields(test, objective)
    unigram = self.lib.unigram_bits(corpus_name, comp, fields, self.opt.train_split)
    scored = scoring.run_pass(self.sums_fn, self.params, self.rest, pipe.eval_batches(), share, unigram, test.num_docs)
    sums = scored["total"]
    rate, n_illegal, n_ids = scoring.illegal_rate(test, self.mc.vocab_size)
    all_ids = scoring.field_ids(test, list(test.fields))
    bpt = float(np.mean([bytes_per_token(test, f) for f in fields]))
    context = self.input_length if objective in obj.SEQ2SEQ else self.length
    row = {
      "corpus_name": corpus_name,
      "objective": objective,
      "bits_per_byte": scoring.bits_per_byte(sums["nll"], sums["bytes"]),
      "bpb_uniform": math.log2(self.mc.vocab_size) * sums["tokens"] / sums["bytes"] if sums["bytes"] else None,
      "bpb_unigram": sums["unigram_bits"] / sums["bytes"] if sums["bytes"] else None,
      "token_accuracy": sums["correct"] / sums["tokens"] if sums["tokens"] else None,
      "illegal_rate": rate,
      "illegal_ids": n_illegal,
      "misread_rate": scoring.misread_rate(test, self.own.pieces, comp.pieces),
      "illegal_targets": int(sums["illegal_targets"]),
      "illegal_inputs": int(sums["illegal_inputs"]),
      # An external ISA keeps its own ids: "UNK" here is id 1 (llmcpu.models.opcodes), whatever that id is there.
      "illegal_policy": f"{policy}: inputs mapped to UNK; targets scored as p(UNK)/{math.exp(share):.0f}",
      "documents": test.num_docs,
      "ids": n_ids,
      "bytes": scoring.field_bytes(test, fields),
      "scored_tokens": int(sums["tokens"]),
      "scored_bytes": sums["bytes"],
      "bytes_per_token": bpt,
      "byte_context": context * bpt,
      "unk_rate": float(np.count_nonzero(all_ids == _unk(comp)) / max(len(all_ids), 1)),
      "truncated_examples": int(pipe.summary().get("truncated_examples", 0)),
      "xla_compiles": self.xla_compiles,
      "_docs": scored["docs"],
      "_clusters": self.lib.clusters(self.corpus, corpus_name, comp, self.opt.split),
    }
    row["clusters"] = len(set(row["_clusters"]))
    scoring.store_bpb_interval(row, seed=self.opt.seed)
    return row

  def cell(self, comp: Compiler, eval_label: str) -> dict:
    t0 = time.time()
    row = self.identity(eval_label) | {
      "status": "ok",
      "eval_isa_spec": str(comp.spec),
      "eval_fingerprint": comp.fingerprint,
      "eval_vocab": comp.vocab_size,
      "native": comp.fingerprint == self.own.fingerprint,
      "isa_overlap": compilers.isa_overlap(self.own, comp),
    }
    row.update(self.score(comp))
    row["coherence"] = None
    # The scored part stands on its own: a failure in generation or embedding is recorded next to it.
    try:
      if self.arch == "encoder":
        row["representation_agreement"] = self.representation_agreement(comp, row["corpus_name"])
      elif self.opt.coherence:
        row.update(self.coherence(comp, row["corpus_name"], native=row["native"]))
    except Exception as e:  # noqa: BLE001
      key = "representation_error" if self.arch == "encoder" else "coherence_error"
      row[key] = one_line(e)
    row["seconds"] = time.time() - t0
    return row

  def identity(self, eval_label: str) -> dict:
    return {
      "checkpoint": self.loaded.name,
      "step": self.meta.get("step"),
      "seed": self.config.get("seed"),
      "arch": self.arch,
      "model_isa": self.own.name,
      "model_isa_spec": str(self.own.spec),
      "model_fingerprint": self.own.fingerprint,
      "model_vocab": self.mc.vocab_size,
      "eval_isa": eval_label,
      "corpus": self.corpus,
      "split": self.opt.split,
    }

  # --- coherence (decoders, encoder-decoders) -------------------------------------------------------------------

  def coherence(self, comp: Compiler, corpus_name: str, *, native: bool = False) -> dict:
    """Generate from held-out prompts compiled by ``comp``; judge fluency, relevance and coherence with intervals.

    A native cell also runs its prompts shuffled (the CPU's own opcodes in a random order): a calibration that
    relevance measures execution of *this* program, not of any text made of its pieces.
    """
    opt = self.opt
    test = self.lib.split(corpus_name, comp, opt.split)
    raw = self.lib.raw_texts(corpus_name, comp, opt.split)
    fill_span = self.arch == "encoder_decoder" and obj.objective_for(self.config, test.kind) == "span_corruption"
    if test.kind == "seq2seq":
      docs = list(range(min(opt.program_prompts, test.num_docs)))
      prompts = generation.program_prompts(test, raw["input"], raw["target"], docs)
      longest = max((len(raw["input"][d].encode("utf-8")) for d in docs), default=1)
      width, new = _round_up(longest + 2), opt.answer_tokens
    else:
      comps = [*self.evaluation, *([] if comp in self.evaluation else [comp])]
      cuts = self.lib.prompt_cuts(self.corpus, comps, opt.split, opt.prompt_bytes, opt.new_bytes)
      docs = generation.pick_cuts(cuts, opt.prompts)
      if not docs:
        return {"coherence_error": f"no held-out document has a shared word boundary past {opt.prompt_bytes} bytes"}
      width = _round_up(opt.prompt_bytes + generation.CUT_SLACK + 2)  # ≥ 1 byte per token, + BOS/sentinel/EOS
      prompts = generation.prose_prompts(comp, raw["text"], cuts, docs)
      new = self.token_budget() + (1 if fill_span else 0)  # + the leading sentinel
    if self.mc.positions == "learned":
      new = min(new, self.mc.max_len - (width if self.arch == "decoder" else 0))
    run = dict(arch=self.arch, width=width, new_tokens=new, own=self.own, foreign=comp, fill_span=fill_span)

    def generate(p: generation.Prompts) -> tuple[list[str], list[str], list[str], int]:
      greedy, greedy_foreign, truncated = generation.generate_texts(self.model, p, **run, temperature=0.0)
      sampled, _, _ = generation.generate_texts(self.model, p, **run, temperature=opt.temperature, seed=opt.seed)
      return greedy, sampled, greedy_foreign, truncated

    greedy, sampled, greedy_foreign, truncated = generate(prompts)
    out: dict = {"prompts": len(prompts.ids), "prompts_truncated": truncated, "new_tokens": new}
    swapped = None
    if prompts.kind == "prose":
      # Relevance beyond the tail: the same CPU after each prompt with its head swapped for another document's.
      hybrid_texts, partner = coherence.head_swap(prompts.texts, opt.tail_bytes)
      hybrid = dataclasses.replace(
        prompts,
        ids=[np.asarray(x, np.int32) for x in comp.encode_batch(hybrid_texts)],
        texts=hybrid_texts,
        references=[prompts.references[j] for j in partner],
      )
      h_greedy, h_sampled, _, h_truncated = generate(hybrid)
      out["prompts_truncated"] += h_truncated
      swapped = [[coherence.cut_bytes(t, opt.new_bytes) for t in x] for x in (h_greedy, h_sampled)]
      out["prompt_bytes_mean"] = float(np.mean([len(t.encode("utf-8")) for t in prompts.texts]))
      out["outputs_short"] = sum(len(g.encode("utf-8")) < opt.new_bytes for g in [*greedy, *sampled])
      # Positions a decoder's longest prompt + output reaches, next to the row length it was trained on: past it a
      # fine-grained ISA (a byte per token) runs on positions it never saw.
      out["positions_needed"] = int(max(len(ids) for ids in prompts.ids)) + 1 + new
      out["trained_length"] = int(self.length)
      greedy, sampled, greedy_foreign = (
        [coherence.cut_bytes(t, opt.new_bytes) for t in x] for x in (greedy, sampled, greedy_foreign)
      )
    out.update(self.judge(prompts, corpus_name, comp, greedy, sampled, swapped))
    if prompts.kind == "programs":
      out["exact_match_eval_reading"] = text_metrics.exact_match(greedy_foreign, prompts.references)
    else:
      refs = [coherence.cut_bytes(c, opt.new_bytes) for c in prompts.references]
      out["chrf_eval_reading"] = text_metrics.chrf(greedy_foreign, refs)
    if native and opt.shuffled_prompts:
      shuffled = prompts.shuffled(opt.seed)
      s_greedy, s_sampled, _, _ = generate(shuffled)
      s_greedy, s_sampled = ([coherence.cut_bytes(t, opt.new_bytes) for t in x] for x in (s_greedy, s_sampled))
      judged = self.judge(prompts, corpus_name, comp, s_greedy, s_sampled)  # judged against the real prompts
      keep = [*_SUMMARY_FIGURES, *(f"{f}_ci{x}" for f in _SUMMARY_FIGURES for x in ("", "_info"))]
      out["shuffled_prompt"] = {k: judged.get(k) for k in [*keep, "relevance_ci90", "relevance_verdict"]}
    rows = zip(prompts.texts, prompts.references, greedy, sampled, greedy_foreign, strict=True)
    out["samples"] = [
      {"prompt": p, "reference": r[:200], "greedy": g, "sampled": s, "greedy_eval_reading": f}
      for p, r, g, s, f in list(rows)[: opt.samples]
    ]
    return out

  def token_budget(self) -> int:
    """Prose tokens to generate: ``new_tokens`` when set, else enough for ``new_bytes`` with pieces half as long as
    the CPU's own ISA's average on this corpus (babble runs to short pieces: spaces, newlines), never more than
    ``new_bytes`` + 4 (every regular piece is at least a byte); rows still short are counted in ``outputs_short``."""
    if self.opt.new_tokens:
      return self.opt.new_tokens
    try:
      own = self.lib.split(self.lib.corpus_name(self.corpus, self.own), self.own, self.opt.split)
      bpt = max(bytes_per_token(own, "text"), 1.0) if "text" in own.fields else 1.0
    except UserError:  # the CPU's own ISA has no compile of this corpus: assume its finest, a byte per token
      bpt = 1.0
    return int(math.ceil(self.opt.new_bytes / max(bpt / 2.0, 1.0))) + 4

  def judge(self, prompts: generation.Prompts, corpus_name: str, comp: Compiler, greedy, sampled, swapped=None) -> dict:
    """Fluency, relevance, coherence (+ intervals over clusters of prompts, relevance's TOST verdict) and their
    parts for one set of generations; ``swapped`` (greedy and sampled after the head-swapped prompts) gives
    relevance beyond the tail."""
    every = self.lib.clusters(self.corpus, corpus_name, comp, self.opt.split)
    stats = dict(seed=self.opt.seed, clusters=[every[d] for d in prompts.docs], margin=self.opt.equivalence_margin)
    if prompts.kind == "programs":
      table = coherence.program_table(greedy, prompts.references, prompts.tasks)
      out = coherence.assess(table, "programs", keys=_SUMMARY_FIGURES, **stats)
      out["prompt_table"] = coherence.table_record(table, prompts.docs, stats["clusters"], kind="programs")
      out["exact_match_sampled"] = text_metrics.exact_match(sampled, prompts.references)
      out["exact_match_by_task"] = coherence.exact_match_by_task(greedy, prompts.references, prompts.tasks)
      out["exact_match_ci"], out["exact_match_ci_info"] = out["relevance_ci"], out["relevance_ci_info"]
      out["chrf"] = text_metrics.chrf(greedy, prompts.references)
      return out
    opt = self.opt
    judge, lexicon = self.lib.judge(corpus_name, comp, opt.train_split)
    table = coherence.prose_table(
      judge,
      lexicon,
      prompts.texts,
      [greedy, sampled],
      prompts.references,
      nbytes=opt.new_bytes,
      tail_bytes=opt.tail_bytes,
      swapped=swapped,
    )
    out = coherence.assess(table, "prose", **stats)
    out["prompt_table"] = coherence.table_record(table, prompts.docs, stats["clusters"])  # for paired comparisons
    gens = [*greedy, *sampled]
    out["chrf"] = text_metrics.chrf(gens, [coherence.cut_bytes(c, opt.new_bytes) for c in prompts.references] * 2)
    out["empty_generations"] = sum(not g for g in gens)
    return out

  # --- representation agreement (encoders) ----------------------------------------------------------------------

  def representation_agreement(self, comp: Compiler, corpus_name: str) -> float | None:
    """Mean cosine of pooled embeddings of the same documents (same text span) compiled natively vs by ``comp``."""
    opt = self.opt
    native = self.lib.split(self.lib.corpus_name(self.corpus, self.own), self.own, opt.split)
    foreign = self.lib.split(corpus_name, comp, opt.split)
    field = "text" if foreign.kind == "text" else "input"
    raw = self.lib.raw_texts(corpus_name, comp, opt.split)[field]
    n = min(opt.representation_docs, foreign.num_docs, native.num_docs)
    width = self.length
    batches = np.full((2, n, width), specials.PAD_ID, np.int32)
    segments = np.zeros((2, n, width), np.int32)  # explicit: in a file's ISA the PAD id may be an ordinary piece
    for i in range(n):
      pair = [(self.own, np.asarray(native.fields[field].doc(i))), (comp, np.asarray(foreign.fields[field].doc(i)))]
      reach = min(len(c.decode(ids[: width - 1]).encode("utf-8")) for c, ids in pair)  # both can cover this span
      for j, (c, ids) in enumerate(pair):
        k = generation.token_prefix(c, ids, raw[i], reach, width - 1)
        batches[j, i, : k + 1] = [c.roles.bos, *ids[:k].tolist()]
        segments[j, i, : k + 1] = 1
    emb = [
      np.asarray(self.embed_fn(self.params, self.rest, jnp.asarray(b), jnp.asarray(s)), np.float64)
      for b, s in zip(batches, segments, strict=True)
    ]
    cos = np.sum(emb[0] * emb[1], axis=1) / np.maximum(
      np.linalg.norm(emb[0], axis=1) * np.linalg.norm(emb[1], axis=1), 1e-12
    )
    return float(cos.mean()) if n else None


# ------------------------------------------------------------------------------------------------- the matrix


def _failed(checkpoint: str, eval_label: str, error: BaseException, split: str, known: dict | None = None) -> dict:
  row = {"status": "failed", "error": one_line(error), "checkpoint": checkpoint, "eval_isa": eval_label, "split": split}
  row.update({"arch": None, "model_isa": None, "corpus": None} | (known or {}))
  return row


def _load(entry: str | LoadedModel) -> LoadedModel:
  if isinstance(entry, LoadedModel):
    return entry
  model, meta, compiler = checkpoints.load_model(entry)
  if meta.get("input_isa_fingerprint"):  # a matrix cell feeds one ISA to both stacks; this CPU reads another
    raise UserError(
      f"{entry} is a stitched encoder-decoder: it reads ISA {meta['input_isa_name']} and writes {meta['isa_name']}; "
      "score it with llmcpu.stitching.score (as configs/experiments/swap.py does), not the cross-ISA matrix"
    )
  return LoadedModel(model, meta, compiler, str(entry))


def evaluate(
  checkpoints: Sequence[str | LoadedModel],
  isas: Sequence[str],
  compile_dir: str,
  *,
  corpus: str | None = None,
  options: CrossEvalOptions | None = None,
  log: Callable[[str], None] = print,
  cells: str | None = None,
) -> list[dict]:
  """Rows of the matrix (one per checkpoint × ISA, failed cells included); see the package docstring for keys.

  ``isas``: compiler specs or names under ``compile_dir/compilers`` (empty: all of them). ``corpus``: evaluate
  every checkpoint on this corpus instead of its training corpus. ``cells``: a directory where each finished cell is
  kept (``resume.CellStore``): a rerun after an interruption continues from there, and SIGTERM stops the matrix
  (the cell in progress dropped) by raising ``Stopped``; the caller removes the directory once it has the report.
  """
  opt = options or CrossEvalOptions()
  lib = Library(compile_dir, max_docs=opt.max_docs, judge_order=opt.judge_order, judge_max_bytes=opt.judge_max_bytes)
  isas = list(isas) or lib.available()
  columns: list[tuple[str, Compiler | BaseException]] = []
  for isa in isas:
    try:
      comp = lib.compiler(isa)
      columns.append((comp.name, comp))
    except Exception as e:  # noqa: BLE001 - recorded as failed cells in this column
      columns.append((Library.label(isa), e))
      log(f"ISA {isa}: {one_line(e)}")
  matrix = _Matrix(lib, opt, corpus, columns, resume.CellStore(cells) if cells else None, log)
  rows: list[dict] = []
  with resume.Sigterm(enabled=cells is not None) as sigterm:
    try:
      for entry in checkpoints:
        matrix.checkpoint_rows(entry, rows, sigterm)
      if sigterm.requested:  # arrived while the last cell was being stored: the report is the rerun's to write
        raise resume.Dropped
    except resume.Dropped:
      total = len(checkpoints) * len(columns)
      message = f"stopped by SIGTERM after {len(rows)} of {total} cells; rerun the same command to continue"
      raise Stopped(message) from None
  scoring.add_baselines(rows)
  return rows


@dataclasses.dataclass
class _Matrix:
  """What every checkpoint's row of cells shares: the library, options, columns and the store of finished cells."""

  lib: Library
  opt: CrossEvalOptions
  corpus: str | None
  columns: list[tuple[str, Compiler | BaseException]]
  store: resume.CellStore | None
  log: Callable[[str], None]

  def keys(self, entry: str | LoadedModel) -> list[dict | None]:
    """Each column's cell key for ``entry`` (None: not kept, e.g. a model in memory or a failed column)."""
    if self.store is None or isinstance(entry, LoadedModel):
      return [None] * len(self.columns)
    stamp = resume.checkpoint_stamp(str(entry))
    every = [c.fingerprint if isinstance(c, Compiler) else label for label, c in self.columns]
    matrix = dict(
      isas=every, corpus=self.corpus, compile_dir=self.lib.compile_dir, options=dataclasses.asdict(self.opt)
    )
    return [
      resume.CellStore.key(str(entry), stamp, label, comp.fingerprint, **matrix) if isinstance(comp, Compiler) else None
      for label, comp in self.columns
    ]

  def checkpoint_rows(self, entry: str | LoadedModel, rows: list[dict], sigterm: resume.Sigterm) -> None:
    """Appends ``entry``'s row of cells to ``rows``: kept ones read back, the others computed (and kept)."""
    name = entry.name if isinstance(entry, LoadedModel) else str(entry)
    keys = self.keys(entry)
    done = [self.store.load(k) if self.store else None for k in keys]
    if any(done):
      self.log(f"checkpoint {name}: {sum(d is not None for d in done)} cells kept from an earlier run")
    if all(d is not None for d in done):  # nothing to compute: the model is not even loaded
      rows.extend(done)
      return
    try:
      with sigterm.interruptible():
        loaded = _load(entry)
        evaluator = ModelEvaluator(loaded, self.lib, self.opt, self.corpus)
        evaluator.plan([c for _, c in self.columns if isinstance(c, Compiler)])
    except Exception as e:  # noqa: BLE001 - a bad checkpoint fails its row, not the matrix
      self.log(f"checkpoint {name}: {one_line(e)}")
      rows.extend(_failed(name, label, e, self.opt.split) for label, _ in self.columns)
      return
    for (label, comp), key, kept in zip(self.columns, keys, done, strict=True):
      tag = f"{evaluator.arch}/{loaded.compiler.name} on {label}"
      if kept is not None:
        rows.append(kept)
      elif not isinstance(comp, Compiler):
        rows.append(_failed(name, label, comp, self.opt.split, evaluator.identity(label)))
      else:
        try:
          with sigterm.interruptible():
            row = evaluator.cell(comp, label)
        except Exception as e:  # noqa: BLE001 - one bad cell must not stop the others
          self.log(f"{tag}: failed: {one_line(e)}")
          rows.append(_failed(name, label, e, self.opt.split, evaluator.identity(label)))
          continue
        if self.store:
          self.store.save(key, row)  # a SIGTERM meanwhile is remembered: the cell is kept, the next one stops
        rows.append(row)
        _log_cell(self.log, tag, row)


def _log_cell(log: Callable[[str], None], tag: str, row: dict) -> None:
  extra = f", coherence {row['coherence']:.3f}" if row.get("coherence") is not None else ""
  log(
    f"{tag}: bpb {row['bits_per_byte']:.3f} (unigram {row['bpb_unigram']:.3f}), acc {row['token_accuracy']:.3f}, "
    f"illegal {row['illegal_rate']:.3f}{extra} [{row['seconds']:.1f}s]"
  )


def calibrate(
  compile_dir: str, corpus: str, isas: str | Sequence[str], options: CrossEvalOptions | None = None
) -> list[dict]:
  """The calibration rows of one corpus (see ``calibration.py``), read from ``compile_dir``; ``isas``: the matrix's
  evaluation ISAs (prose prompts are cut where all of them have a token boundary, as in the cells)."""
  opt = options or CrossEvalOptions()
  lib = Library(compile_dir, max_docs=opt.max_docs, judge_order=opt.judge_order, judge_max_bytes=opt.judge_max_bytes)
  isas = [isas] if isinstance(isas, str) else list(isas)
  return calibration.calibrate(lib, corpus, [lib.compiler(isa) for isa in isas], opt)


def _unk(comp: Compiler) -> int:
  """The evaluation ISA's UNK id (-1, matching no id, for an ISA without one: GPT-2's)."""
  return -1 if comp.roles.unk is None else comp.roles.unk
