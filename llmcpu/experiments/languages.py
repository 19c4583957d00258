"""The embedding-languages experiment (``kind = "languages"``): readouts of every ISA's encoder, fed every other
encoder's embeddings, and embedding arithmetic with a known answer.

Stages, each resumable: compile every ISA; train MLM encoders on each, two seeds (the matrix's stages); train
two readouts of each ``readers`` ISA's seed-0 encoder (absolute: ``pool`` vectors from the embedding; relative: from
its cosines to ``relative`` anchor programs); read held-out programs back from

  native       the reader's own encoder (the ceiling)
  seed / ISA   another seed of the same ISA, and every other ISA's encoder: as is (``none``), mapped by Procrustes
               on parallel training programs (``procrustes``), or read relatively with that encoder's own anchor
               embeddings (``relative``: nothing fitted)
  ids          the seed's control: the program's token ids zero-padded to the embedding width, as is and through
               the Procrustes map the encoders get (fitted on the same training programs' padded ids)

scored as vec2text does (``readout.reconstruction``), and chrF / token F1 read above their template floor (the task
right, operands random: ``readout.template_floor``); then analogies from ``programs`` (``analogies.make``): is
``e(a) − e(b) + e(c)`` read back as the answer (decoded exact match), and is it nearest the answer's embedding among
every analogy text with a, b and c excluded (top-1)? Natively and with other encoders mapped into the reader's space;
the oracle rows (query = e(answer)) calibrate both readouts on a known answer, the c-only and b-only rows (query =
e(c), e(b)) are the baselines the arithmetic must beat.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import ml_collections
import numpy as np

from llmcpu import compilers, fs
from llmcpu.errors import UserError
from llmcpu.experiments import base, matrix, tables
from llmcpu.metrics import text as text_metrics
from llmcpu.stitching import analogies, closed_form, readout, states
from llmcpu.training import checkpoints


def languages_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  """configs/experiments/languages.py's base: MLM encoders (the natives) plus their readouts."""
  c = matrix.experiment_config(preset)
  c.kind = "languages"
  c.corpus = "programs"
  c.archs = "encoder"
  c.seeds = "0,1"  # seed 0: the readers' encoders; seed 1: "another seed of the same ISA"
  c.readers = ""  # ISAs whose encoder gets readouts ('' = every ISA)
  c.readout = ml_collections.ConfigDict(dict(pool=4, relative=64, steps=800, batch_size=64, length=48))
  c.anchor_docs = 1000  # training programs embedded by both encoders for a Procrustes map
  c.programs = 200  # held-out programs read back
  c.analogies = 200
  c.report = "report-languages"
  return c


@base.register("languages")
class Languages(matrix.Matrix):
  """The MLM encoders (the matrix's stages, without its cross-evaluation), then the readouts and what they read."""

  def plan(self) -> None:
    exp = self.config
    if base.split_list(exp.archs, "archs") != ["encoder"]:
      raise UserError("the embedding-languages experiment reads MLM encoders' embeddings: set --config.archs=encoder")
    if base.seed_list(exp.seeds)[:2] != [0, 1]:
      raise UserError("--config.seeds must start with 0,1 (the readers' encoders and another seed of the same ISA)")
    super().plan()

  def stages(self) -> bool:
    if not super().stages():  # compile, and train the encoders
      return False
    exp = self.config
    self.isas = [compilers.parse(s) for s in base.split_list(exp.compilers, "compilers")]
    self.readers = [compilers.parse(s) for s in base.split_list(exp.readers, "readers")] if exp.readers else self.isas
    jobs = [
      _readout(exp, self.workdir, corpus, reader, relative, self.log)
      for corpus in self.planned.corpora
      for reader in self.readers
      for relative in (0, exp.readout.relative)
    ]
    base.run_stages("readout", jobs, self.log)
    return True

  def report(self) -> dict[str, str]:
    exp, rows = self.config, []
    for corpus in self.planned.corpora:
      world = _World(exp, self.workdir, corpus, self.isas, self.log)
      for reader in self.readers:
        rows += world.feeds(reader)
        rows += world.analogies(reader)
    out = fs.join(self.workdir, exp.report)
    write_report(rows, out, exp, time.time() - self.t0)
    self.log(f"== embedding-languages report: {out}")
    return {exp.report: out}

  def printout(self, reports: dict[str, str]) -> str:
    (out,) = reports.values()
    return "\n" + fs.read_text(fs.join(out, "languages.md")) + f"\nReport: {out} (languages.md)"


def _readout_dir(workdir: str, corpus, spec, relative: int) -> str:
  return fs.join(workdir, "readouts", corpus.name, spec.name, f"relative{relative}" if relative else "absolute")


def _readout(exp, workdir: str, corpus, spec, relative: int, log: Callable) -> base.Stage:
  """The run that trains one readout of ``spec``'s seed-0 encoder (absolute, or relative to anchors)."""
  path = _readout_dir(workdir, corpus, spec, relative)
  config = ml_collections.ConfigDict(exp.readout.to_dict())
  config.update(relative=relative, preset=exp.preset, compile_dir="", seed=0)
  config.encoder = matrix.cpu_dir(workdir, corpus.name, "encoder", spec.name, 0)
  tag = f"{corpus.name} {spec.name} " + (f"relative {relative}" if relative else "absolute")
  return base.Stage(path, exp.readout.steps, tag, functools.partial(readout.train, config, path, log=log))


class _World:
  """Every encoder of one corpus, its held-out and anchor programs, and their embeddings (computed once)."""

  def __init__(self, exp, workdir: str, corpus, isas, log: Callable):
    self.exp, self.workdir, self.corpus, self.log = exp, workdir, corpus, log
    self.compile_dir = fs.join(workdir, "compiled")
    self.length = exp.readout.length
    self.encoders, self.compilers, self.docs = {}, {}, {}
    for spec in isas:
      for seed in (0, 1):
        path = matrix.cpu_dir(workdir, corpus.name, "encoder", spec.name, seed)
        model, meta, comp = checkpoints.load_model(path)
        self.encoders[(spec.name, seed)] = (model, path, meta)
        self.compilers[spec.name] = comp
      comp = self.compilers[spec.name]
      test = readout.programs(self.compile_dir, corpus.spec, comp, "test")[: exp.programs]
      train = readout.programs(self.compile_dir, corpus.spec, comp, "train")[: exp.anchor_docs]
      self.docs[spec.name] = (test, train)
    self._embedded: dict = {}

  def embedded(self, source: tuple[str, int], which: str) -> np.ndarray:
    """Embeddings of the held-out ('test') or anchor ('train') programs by one encoder, in its own ISA."""
    key = (source, which)
    if key not in self._embedded:
      docs = self.docs[source[0]][0 if which == "test" else 1]
      self._embedded[key] = states.embeddings(self.encoders[source][0], docs, self.length)
    return self._embedded[key]

  def _row(self, reader: str, source: tuple[str, int] | None, alignment: str) -> dict:
    row = {"corpus": self.corpus.name, "reader": reader, "alignment": alignment}
    if source is None:
      return row | {"source": "ids", "source_seed": None}
    kind = "native" if source == (reader, 0) else "seed" if source[0] == reader else "isa"
    _, path, meta = self.encoders[source]
    provenance = {
      "source_checkpoint": path,
      "source_step": meta["step"],
      "source_isa_fingerprint": meta["isa_fingerprint"],
    }
    return row | {"source": source[0], "source_seed": source[1], "kind": kind} | provenance

  def mapping(self, reader: str, source: tuple[str, int]) -> Callable[[np.ndarray], np.ndarray]:
    if source == (reader, 0):
      return lambda x: x
    return readout.procrustes_map(self.embedded(source, "train"), self.embedded((reader, 0), "train"))

  def feeds(self, spec: compilers.CompilerSpec) -> list[dict]:
    """Reconstruction rows of the reader ISA ``spec``: every source encoder × alignment, and the ids control."""
    exp, reader = self.exp, spec.name
    comp = self.compilers[reader]
    paths = {r: _readout_dir(self.workdir, self.corpus, spec, r) for r in (0, exp.readout.relative)}
    absolute, meta_abs, _ = checkpoints.load_model(paths[0])
    relative, meta_rel, _ = checkpoints.load_model(paths[exp.readout.relative])
    own = self.embedded((reader, 0), "test")
    references = [comp.decode(d.tolist()) for d in self.docs[reader][0]]
    encoder = self.encoders[(reader, 0)][0]
    provenance = {"readout_absolute": paths[0], "readout_relative": paths[exp.readout.relative]}
    provenance["readout_step"] = meta_abs["step"]
    floor = readout.template_floor(references, seed=exp.crosseval.seed)

    def score(model, vectors) -> dict:
      texts = readout.read(model, vectors, comp, self.length)
      cos = readout.reembed_cosines(encoder, comp, texts, own, self.length)
      row = readout.reconstruction(texts, references, cos, seed=exp.crosseval.seed) | provenance
      return row | _floors(row, floor)

    rows = []
    sources = [(reader, 0), (reader, 1)] + [(s, 0) for s in self.docs if s != reader]
    for source in sources:
      vectors = self.embedded(source, "test")
      rows.append(self._row(reader, source, "none") | score(absolute, vectors))
      if source != (reader, 0):  # the reader's own encoder needs no map
        rows.append(self._row(reader, source, "procrustes") | score(absolute, self.mapping(reader, source)(vectors)))
      anchors = self.embedded(source, "train")[: exp.readout.relative]
      rows.append(self._row(reader, source, "relative") | score(readout.with_anchors(relative, anchors), vectors))
      r = rows[-1]
      self.log(f"reader {reader} ← {source[0]} seed {source[1]} (relative): exact match {r['exact_match']:.3f}")
    ids, truncated = closed_form.padded_ids(self.docs[reader][0], own.shape[1])
    rows.append(self._row(reader, None, "none") | score(absolute, ids) | {"ids_truncated": truncated})
    # the ids given the same fitted map the encoders get: Procrustes on the same parallel training programs
    anchor_ids, _ = closed_form.padded_ids(self.docs[reader][1], own.shape[1])
    to_reader = readout.procrustes_map(anchor_ids, self.embedded((reader, 0), "train"))
    rows.append(self._row(reader, None, "procrustes") | score(absolute, to_reader(ids)) | {"ids_truncated": truncated})
    return rows

  def analogies(self, spec: compilers.CompilerSpec) -> list[dict]:
    """Decoded exact match and nearest-neighbour top-1 of e(a) − e(b) + e(c), per source encoder."""
    exp, reader = self.exp, spec.name
    comp = self.compilers[reader]
    absolute = checkpoints.load_model(_readout_dir(self.workdir, self.corpus, spec, 0))[0]
    items = analogies.make(exp.analogies, seed=exp.crosseval.seed, split="test")
    texts = list(dict.fromkeys(t for a in items for t in (a.a, a.b, a.c, a.answer)))
    index = {t: i for i, t in enumerate(texts)}
    reader_space = self._embed_texts((reader, 0), texts)
    rows = []
    for source in [(reader, 0)] + [(s, 0) for s in self.docs if s != reader]:
      mapped = self.mapping(reader, source)(self._embed_texts(source, texts))
      ia, ib, ic, ians = (np.array([index[getattr(a, k)] for a in items]) for k in ("a", "b", "c", "answer"))
      for query, vectors in analogies.queries(mapped, ia, ib, ic, ians).items():
        read = readout.read(absolute, vectors.astype(np.float32), comp, self.length)
        decoded = text_metrics.exact_match_items(read, [a.answer for a in items])
        top1 = analogies.top1_hits(vectors, reader_space, np.stack([ia, ib, ic], 1), ians)
        row = self._row(reader, source, "none" if source == (reader, 0) else "procrustes")
        row |= {"query": query, "analogies": len(items), "decoded_exact_match": float(decoded.mean())}
        row |= {"decoded_exact_match_ci": readout._ci(decoded, exp.crosseval.seed), "nn_top1": float(top1.mean())}
        row |= {"nn_top1_ci": readout._ci(top1, exp.crosseval.seed), "candidates": len(texts)}
        tasks = dict.fromkeys(a.task for a in items)
        row["by_task"] = {
          t: float(np.mean([d for d, a in zip(decoded, items, strict=True) if a.task == t])) for t in tasks
        }
        pairs = list(zip(items, read, strict=True))[:4]
        row["samples"] = [{"analogy": [a.a, a.b, a.c], "answer": a.answer, "read": r} for a, r in pairs]
        rows.append(row)
      r = rows[-4]
      self.log(f"analogies {reader} ← {source[0]}: decoded {r['decoded_exact_match']:.3f}, top-1 {r['nn_top1']:.3f}")
    return rows

  def _embed_texts(self, source: tuple[str, int], texts: list[str]) -> np.ndarray:
    comp = self.compilers[source[0]]
    docs = [np.asarray(comp.encode(t), np.int32) for t in texts]
    return states.embeddings(self.encoders[source][0], docs, self.length)


# ------------------------------------------------------------------------------------------------- report


def _floors(row: dict, floor: dict) -> dict:
  """A feed's template floors (the right task, random operands) and the share above them its figures restore."""
  out = {"chrf_floor": floor["chrf"], "token_f1_floor": floor["token_f1"]}
  out["chrf_above_floor"] = readout.above_floor(row["chrf"], floor["chrf"], 100.0)
  out["token_f1_above_floor"] = readout.above_floor(row["token_f1"], floor["token_f1"], 1.0)
  return out


def _who(r: dict) -> str:
  if r["source"] == "ids":
    return "token ids, zero-padded (control)"
  kind = {"native": "own encoder", "seed": f"{r['source']} seed {r['source_seed']}"}.get(r.get("kind"), r["source"])
  return kind


def markdown(rows: list[dict], exp) -> str:
  feed = [r for r in rows if "bleu" in r]
  lines = [
    f"Readouts of tiny MLM encoders' embeddings (pool {exp.readout.pool}, relative anchors {exp.readout.relative}, "
    f"{exp.readout.steps} steps), {exp.programs} held-out programs each; intervals are 95% bootstrap over programs.",
    "",
    "Floors: a right task with wrong operands already scores well on chrF and token F1 (the task word and `=` "
    "match), so each is also read above its *template floor* — every reference's task with operands drawn at random "
    "by the corpus's generator: above floor = (figure − floor) / (perfect − floor), 0 = no better than the task "
    "alone. The id control (token ids zero-padded) is shown as is and through the same Procrustes map the other "
    "encoders get, fitted on the same training programs.",
    "",
  ]
  floors = {(r["corpus"], r["reader"]): r for r in feed if "chrf_floor" in r}
  for (corpus, reader), r in floors.items():
    lines.append(f"- {corpus}, reader {reader}: template floor chrF {r['chrf_floor']:.1f}, token F1 "
                 f"{r['token_f1_floor']:.3f}")  # fmt: skip
  lines += [
    "",
    "| corpus | reader | embeddings from | alignment | BLEU | chrF | token F1 | exact match | cosine (re-embedded) "
    "| chrF above floor | token F1 above floor |",
    "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in feed:
    lines.append(
      f"| {r['corpus']} | {r['reader']} | {_who(r)} | {r['alignment']} | {r['bleu']:.1f} | {r['chrf']:.1f} | "
      f"{tables.fmt_key(r, 'token_f1')} | {tables.fmt_key(r, 'exact_match')} | {tables.fmt_key(r, 'cosine')} | "
      f"{tables.fmt_key(r, 'chrf_above_floor')} | {tables.fmt_key(r, 'token_f1_above_floor')} |"
    )
  return "\n".join(lines + _analogy_markdown([r for r in rows if "query" in r])) + "\n"


def _analogy_markdown(arith: list[dict]) -> list[str]:
  """The analogy and oracle rows, each beside its source's baselines: the nearest neighbour of e(c) alone and of
  e(b) alone (a, b, c excluded), decoded and by top-1."""
  if not arith:
    return []
  lines = [
    "",
    f"Analogies from programs ({arith[0]['analogies']}, held-out operands): e(a) − e(b) + e(c) read back by the "
    "reader (decoded exact match) and nearest the answer among every analogy text with a, b, c excluded (top-1, "
    f"{arith[0]['candidates']} candidates). Oracle: the query is e(answer) itself. Baselines beside each figure: "
    "the query e(c) alone and e(b) alone, through the same readout and nearest-neighbour search (with a, b, c "
    "excluded the answer is often the nearest text of c's task): arithmetic shows only where it beats them.",
    "",
    "| corpus | reader | embeddings from | query | decoded exact match | c only | b only | nearest-neighbour top-1 "
    "| c only | b only |",
    "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  by = {(r["corpus"], r["reader"], r["source"], r.get("source_seed"), r["alignment"], r["query"]): r for r in arith}
  for r in arith:
    if r["query"] not in ("analogy", "oracle"):
      continue
    key = (r["corpus"], r["reader"], r["source"], r.get("source_seed"), r["alignment"])
    c_only, b_only = by.get((*key, "c_only")), by.get((*key, "b_only"))
    figs = [tables.fmt_key(x, k) for k in ("decoded_exact_match", "nn_top1") for x in (r, c_only, b_only)]
    lines.append(
      f"| {r['corpus']} | {r['reader']} | {_who(r)} ({r['alignment']}) | {r['query']} | " + " | ".join(figs) + " |"
    )
  return lines


def write_report(rows: list[dict], out: str, exp, seconds: float) -> None:
  """results.jsonl (last: it marks the report finished) and languages.md."""
  base.write_report(out, rows, exp, seconds, texts={"languages.md": markdown(rows, exp)})
