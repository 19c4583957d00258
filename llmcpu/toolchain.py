"""The toolchain: compilers built once, and every corpus compiled by every compiler once (the compile cache).

Layout under a workdir ``DIR``::

  DIR/compilers/<compiler name>/          a saved compiler (see llmcpu.compilers)
  DIR/data/<corpus name>/<compiler name>/<split>/   a compiled split (see llmcpu.data.compiled)

``Toolchain`` is what every reader of a compile directory holds (the trainer, the cross-evaluation's ``Library``,
the stitching scores): its compilers and compiled splits, and the one ``compile_hint`` that says how to build
what is missing. An ISA travels as its spec (``bpe:4000+perm:1``, ``str(CompilerSpec)``; the ``data.isa`` of a
training config); its name (``bpe4000-perm1``) is a directory and a table label, derived from the spec. A user may
name a saved compiler either way (``Toolchain.resolve`` is the one place that reads a name back to its spec).

Compilers are trained on the train split of every corpus given. A rerun reuses what is current and rebuilds
what is stale: a compiler whose spec, training corpus or trainer options changed, a split whose compiler
fingerprint, model or corpus fingerprint changed. Everything is written to a temporary directory and renamed
into place, so an interrupted run leaves nothing that looks valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from llmcpu import compilers, fs, specials
from llmcpu.compilers import Compiler, CompilerSpec, external
from llmcpu.data import compiled
from llmcpu.errors import UserError

ENCODE_BATCH = 2048  # documents per encode call: large enough for SentencePiece's threads, small in memory


WAIT_POLL_S = 5.0  # how often a follower process looks for what the leader compiles
WAIT_TIMEOUT_S = 24 * 3600.0  # a follower gives up after this long (compiling a large corpus takes hours)
WAIT_LOG_S = 60.0  # a waiting follower says so this often


def compiler_dir(workdir: str, name: str) -> str:
  return fs.join(workdir, "compilers", name)


def split_dir(workdir: str, corpus_name: str, compiler_name: str, split: str) -> str:
  return fs.join(workdir, "data", corpus_name, compiler_name, split)


def await_current(what: str, current: Callable[[], object], log: Callable[[str], None], timeout_s: float | None = None):
  """Polls ``current()`` until it returns something (a follower process waiting for the leader's committed output:
  a compiler's ``isa.json`` or a split's ``manifest.json``, both written last); a half-written item reads as absent."""
  timeout_s = WAIT_TIMEOUT_S if timeout_s is None else timeout_s
  t0 = last_log = time.time()
  while True:
    try:
      found = current()
    except UserError:  # the leader is rewriting it (marker of the old one, files of the new): not ready yet
      found = None
    if found:
      return found
    waited = time.time() - t0
    if waited > timeout_s:
      raise UserError(
        f"waited {waited:.0f}s for process 0 to compile {what}; it did not appear. Check process 0's log, or run "
        "scripts/compile.py once before starting the processes"
      )
    if time.time() - last_log >= WAIT_LOG_S:
      log(f"{what}: waiting for process 0 to compile it ({waited:.0f}s)")
      last_log = time.time()
    time.sleep(WAIT_POLL_S)


def compile_hint(compile_dir: str, corpus: str = "<corpus>", isa: CompilerSpec | str | None = None) -> str:
  """How to build what is missing from ``compile_dir``: "build it with: python scripts/compile.py …" (every message
  that sends a user to scripts/compile.py ends with this)."""
  isa_flag = f" --config.compilers={isa}" if isa else ""
  return f"build it with: python scripts/compile.py --config.corpus={corpus}{isa_flag} --workdir={compile_dir}"


def load_split(workdir: str, corpus_name: str, compiler: Compiler, split: str) -> compiled.CompiledSplit:
  """Reads one compiled split and checks it was built by ``compiler``; says how to build it if missing.

  The split carries the compiler's ``piece_bytes`` (what a ``Pipeline`` needs for bits per byte) and
  ``piece_spaces`` (where words start, for objectives that choose words).
  """
  path = split_dir(workdir, corpus_name, compiler.name, split)
  if compiled.read_manifest(path) is None:
    raise UserError(
      f"no compiled data for corpus {corpus_name!r}, ISA {compiler.name}, split {split!r} under {workdir}; "
      + compile_hint(workdir, "<that corpus>", compiler.spec)
    )
  loaded = compiled.load(path, expect_fingerprint=compiler.fingerprint)
  return dataclasses.replace(
    loaded, piece_bytes=compiler.piece_bytes, piece_spaces=compiler.piece_spaces, roles=compiler.roles
  )


@dataclasses.dataclass
class IsaStats:
  """What one ISA makes of one corpus (all splits together)."""

  corpus: str
  compiler: str
  vocab_size: int
  fingerprint: str
  docs: int = 0
  tokens: int = 0
  bytes: int = 0
  unk: int = 0
  lossy_bytes: int | None = None  # an existing tokenizer file's bytes not round-tripped (None: lossless by design)

  @property
  def lossy_share(self) -> float | None:
    return None if self.lossy_bytes is None else self.lossy_bytes / max(self.bytes, 1)

  @property
  def bytes_per_token(self) -> float:
    return self.bytes / max(self.tokens, 1)

  @property
  def unk_rate(self) -> float:
    return self.unk / max(self.tokens, 1)


def training_texts(corpora: Sequence) -> Iterable[str]:
  """Every text field of every corpus' train split, in a fixed order (sentinel marks left out: they are no text)."""
  for corpus in corpora:
    for doc in corpus.documents("train"):
      for field in corpus.fields:
        yield specials.strip_marks(doc[field]) if corpus.marked else doc[field]


def corpora_fingerprint(corpora: Sequence) -> str:
  return hashlib.sha256("|".join(c.fingerprint for c in corpora).encode()).hexdigest()[:16]


def build_compilers(
  specs: Sequence[CompilerSpec],
  corpora: Sequence,
  workdir: str,
  *,
  options: dict | None = None,
  rebuild: bool = False,
  leader: bool = True,
  log: Callable[[str], None] = print,
) -> list[Compiler]:
  """Trains (or reuses) each compiler; permuted ISAs reuse their base's training.

  Many processes on one directory (a pod slice): only the ``leader`` (process 0) builds; the others wait until each
  compiler it writes is committed and current, instead of racing it."""
  options = options or {}
  corpus_info = {
    "specs": [c.spec for c in corpora],
    "names": [c.name for c in corpora],
    "fingerprint": corpora_fingerprint(corpora),
  }
  bases: dict[CompilerSpec, Compiler] = {}
  out = []
  for spec in specs:
    path = compiler_dir(workdir, spec.name)
    if not leader:
      out.append(
        await_current(
          f"compiler {spec.name}", lambda p=path, s=spec: _current_compiler(p, s, corpus_info, options), log
        )
      )
      continue
    cached = None if rebuild else _current_compiler(path, spec, corpus_info, options)
    if cached is not None:
      log(f"compiler {spec.name}: cached ({cached.fingerprint})")
      out.append(cached)
      continue
    t0 = time.time()
    base = bases.get(spec.base)
    if base is None and spec.base != spec:
      base = _current_compiler(compiler_dir(workdir, spec.base.name), spec.base, corpus_info, options)
    if base is None:
      log(f"compiler {spec.base.name}: training on {', '.join(corpus_info['specs'])} …")
      base = compilers.train(spec.base, training_texts(corpora), corpus=corpus_info, options=options)
    bases[spec.base] = base
    compiler = compilers.train(spec, base=base)
    compiler.manifest["requested_options"] = options
    compiler.save(path)
    log(f"compiler {spec.name}: built in {time.time() - t0:.1f}s, vocab {compiler.vocab_size} ({compiler.fingerprint})")
    out.append(compiler)
  return out


def trained_on(workdir: str, spec: CompilerSpec) -> dict | None:
  """The training-corpus record ({specs, names, fingerprint}) of the saved compiler for ``spec``, if any."""
  path = compiler_dir(workdir, spec.name)
  if spec.family == "byte" or spec.external or not fs.exists(fs.join(path, "isa.json")):
    return None
  return compilers.load(path).manifest.get("corpus")


def _current_compiler(path: str, spec: CompilerSpec, corpus_info: dict, options: dict) -> Compiler | None:
  """The saved compiler at ``path`` if it is what would be built now, else None (stale or absent)."""
  if not fs.exists(fs.join(path, "isa.json")):
    return None
  try:
    c = compilers.load(path)
  except UserError as e:
    raise UserError(f"{e} — or rerun scripts/compile.py with --config.rebuild") from e
  if spec.external:  # read from a file, not trained: current while the file is unchanged
    try:
      with open(spec.path, "rb") as f:
        same = hashlib.sha256(f.read()).hexdigest() == c.manifest.get("model_sha256")
    except OSError:
      same = True  # the file is gone: the saved copy is what the ISA was
    return c if same and c.manifest.get("spec") == str(spec) else None
  current = (
    c.manifest.get("spec") == str(spec)
    and (spec.family == "byte" or c.manifest.get("corpus", {}).get("fingerprint") == corpus_info["fingerprint"])
    and c.manifest.get("requested_options", {}) == options
  )
  return c if current else None


def compile_split(
  compiler: Compiler,
  documents: Iterable[dict],
  fields: Sequence[str],
  label_fields: Sequence[str],
  path: str,
  manifest: dict,
  *,
  progress: Callable[[int], None] | None = None,
  marked: bool = False,
) -> dict:
  """Encodes every document's fields with ``compiler`` and commits the split at ``path``. ``marked``: the texts
  hold sentinel marks (``Compiler.encode_marked``); a document's bytes are then those of its text without them."""
  unk = compiler.roles.unk
  writer = compiled.SplitWriter(path, fields, label_fields, unk_id=-1 if unk is None else unk)
  lossless = {f: {"lossy_bytes": 0, "piece_bytes": 0} for f in fields} if compiler.spec.external else None
  docs = iter(documents)
  n = 0
  while batch := list(itertools.islice(docs, ENCODE_BATCH)):
    for field in fields:
      texts = [d[field] for d in batch]
      flat, lengths = (compiler.encode_marked if marked else compiler.encode_flat)(texts)
      texts = [specials.strip_marks(t) for t in texts] if marked else texts
      writer.add(field, flat, lengths, texts)
      if lossless is not None:
        _count_lossy(compiler, flat, lengths, texts, lossless[field])
    for name in label_fields:
      writer.add_labels(name, [d[name] for d in batch])
    n += len(batch)
    if progress:
      progress(n)
  manifest = dict(
    manifest,
    compiler=compiler.name,
    compiler_spec=str(compiler.spec),
    compiler_fingerprint=compiler.fingerprint,
    model_sha256=compiler.manifest.get("model_sha256"),
    vocab_size=compiler.vocab_size,
  )
  if lossless is not None:
    manifest["lossless"] = lossless
  return writer.commit(manifest)


def _count_lossy(compiler: Compiler, flat, lengths, texts: Sequence[str], out: dict) -> None:
  """Adds a batch's bytes not round-tripped (``external.lossy_bytes`` of decode(encode(text)) against the text) and
  the piece bytes its ids claim to ``out``: an existing tokenizer file need not be lossless, and is never assumed so."""
  out["piece_bytes"] += int(compiler.piece_bytes[flat].sum())
  for text, ids in zip(texts, np.split(flat, np.cumsum(lengths)[:-1]), strict=True):
    out["lossy_bytes"] += external.lossy_bytes(text, compiler.decode(ids))


def _split_current(path: str, compiler: Compiler, corpus, log: Callable[[str], None] = print) -> bool:
  """Whether the split at ``path`` is what would be compiled now, its files intact (sizes and sha256 as recorded)."""
  m = compiled.read_manifest(path)
  current = (
    m is not None
    and m.get("format") == compiled.FORMAT_VERSION
    and m.get("compiler_fingerprint") == compiler.fingerprint
    and m.get("model_sha256") == compiler.manifest.get("model_sha256")
    and m.get("corpus_fingerprint") == corpus.fingerprint
  )
  damaged = compiled.damaged_files(path, m) if current else []
  if damaged:
    log(f"{path}: damaged ({', '.join(damaged)}); compiling it again")
  return current and not damaged


def compile_corpora(
  corpora: Sequence,
  compiler_list: Sequence[Compiler],
  workdir: str,
  *,
  rebuild: bool = False,
  leader: bool = True,
  log: Callable[[str], None] = print,
) -> list[IsaStats]:
  """Compiles every split of every corpus with every compiler (reusing current splits); returns per-ISA stats.
  A process that is not the ``leader`` waits for each split to be committed instead (see ``build_compilers``)."""
  stats = []
  jobs = [(c, k, s) for c in corpora for k in compiler_list for s in c.splits]
  for i, (corpus, compiler, split) in enumerate(jobs, 1):
    path = split_dir(workdir, corpus.name, compiler.name, split)
    tag = f"[{i}/{len(jobs)}] {corpus.name}/{compiler.name}/{split}"
    if not leader:
      await_current(tag, lambda p=path, k=compiler, c=corpus: _split_current(p, k, c), log)
    elif not rebuild and _split_current(path, compiler, corpus, log):
      log(f"{tag}: cached")
    else:
      t0 = time.time()

      def progress(n_docs: int, tag=tag, t0=t0) -> None:
        log(f"{tag}: {n_docs} docs, {n_docs / max(time.time() - t0, 1e-9):.0f} docs/s")

      m = compile_split(
        compiler,
        corpus.documents(split),
        corpus.fields,
        corpus.label_fields,
        path,
        {"corpus": corpus.spec, "corpus_name": corpus.name, "corpus_fingerprint": corpus.fingerprint, "split": split},
        progress=progress,
        marked=corpus.marked,
      )
      toks = sum(f["tokens"] for f in m["stats"].values())
      log(f"{tag}: {m['num_docs']} docs, {toks} tokens in {time.time() - t0:.1f}s")
    stats.append((corpus.name, compiler, compiled.read_manifest(path)))
  return _isa_stats(stats)


def _isa_stats(entries) -> list[IsaStats]:
  """Per (corpus, ISA) totals over its splits, from the manifests (counted when each split was written)."""
  table: dict[tuple[str, str], IsaStats] = {}
  for corpus_name, compiler, manifest in entries:
    key = (corpus_name, compiler.name)
    row = table.setdefault(key, IsaStats(corpus_name, compiler.name, compiler.vocab_size, compiler.fingerprint))
    row.docs += manifest["num_docs"]
    for f in manifest["stats"].values():
      row.tokens += f["tokens"]
      row.bytes += f["bytes"]
      row.unk += f["unk"]
    for f in manifest.get("lossless", {}).values():
      row.lossy_bytes = (row.lossy_bytes or 0) + f["lossy_bytes"]
  return list(table.values())


def format_isa_table(stats: Sequence[IsaStats]) -> str:
  """The per-ISA table, in Markdown."""
  lines = [
    "| corpus | ISA | vocab | docs | tokens | bytes/token | unk rate | bytes not round-tripped | fingerprint |",
    "|---|---|---:|---:|---:|---:|---:|---:|---|",
  ]
  for s in stats:
    lossy = "lossless by design" if s.lossy_share is None else f"{s.lossy_share:.4f}"
    lines.append(
      f"| {s.corpus} | {s.compiler} | {s.vocab_size} | {s.docs} | {s.tokens} | {s.bytes_per_token:.2f} | "
      f"{s.unk_rate:.4f} | {lossy} | {s.fingerprint} |"
    )
  return "\n".join(lines)


def format_overlap_matrix(compiler_list: Sequence[Compiler]) -> str:
  """ISA overlap (share of regular ids decoding to the same piece), in Markdown."""
  names = [c.name for c in compiler_list]
  lines = ["| ISA overlap | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
  for a in compiler_list:
    lines.append(f"| {a.name} | " + " | ".join(f"{compilers.isa_overlap(a, b):.2f}" for b in compiler_list) + " |")
  return "\n".join(lines)


def find_corpus_name(compile_dir: str, corpus_spec: str, compiler: Compiler) -> str:
  """The cache key of ``corpus_spec`` in ``compile_dir``, read from the compiled splits' manifests (no TFDS needed)."""
  root = fs.join(compile_dir, "data")
  for name in fs.listdir(root):
    base = fs.join(root, name, compiler.name)
    for split in fs.listdir(base):
      m = compiled.read_manifest(fs.join(base, split))
      if m is not None and m.get("corpus") == corpus_spec:
        return name
  raise UserError(
    f"no data compiled from corpus {corpus_spec!r} with ISA {compiler.name} in {compile_dir}; "
    + compile_hint(compile_dir, corpus_spec, compiler.spec)
  )


def split_stats(workdir: str, corpus, compiler: Compiler) -> dict[str, dict]:
  """``{split: {docs, bytes[, files]}}`` of a compiled corpus, from its manifests (raw bytes: the same for every
  ISA); ``files`` where the corpus is made of files (``text:``, ``jsonl:``, ...)."""
  files = corpus.info.get("files_per_split", {})
  out = {}
  for split in corpus.splits:
    m = compiled.read_manifest(split_dir(workdir, corpus.name, compiler.name, split))
    if m is None:
      raise UserError(f"corpus {corpus.spec!r} split {split!r} is not compiled with {compiler.name} in {workdir}")
    row = {"docs": int(m["num_docs"]), "bytes": sum(int(f["bytes"]) for f in m["stats"].values())}
    if split in files:
      row["files"] = int(files[split])
    out[split] = row
  return out


def format_split_stats(spec: str, stats: dict[str, dict]) -> str:
  """One line: documents, bytes (and files) per split."""
  parts = []
  for split, row in stats.items():
    files = f"{row['files']} file{'s' * (row['files'] != 1)}, " if "files" in row else ""
    parts.append(f"{split} {files}{row['docs']} docs, {row['bytes'] / 1000:.1f} KB")
  return f"corpus {spec}: " + "; ".join(parts)


class Toolchain:
  """The compilers and compiled splits of one compile directory (``scripts/compile.py``'s workdir), for the code that
  reads them; every missing piece is one ``UserError`` ending in ``compile_hint``."""

  def __init__(self, compile_dir: str):
    self.compile_dir = fs.abspath(compile_dir)

  def names(self) -> list[str]:
    """The names of the saved compilers, sorted."""
    root = fs.join(self.compile_dir, "compilers")
    return [n for n in fs.listdir(root) if fs.exists(fs.join(root, n, compilers.MANIFEST))]

  def resolve(self, isa: CompilerSpec | str) -> CompilerSpec:
    """The spec of ``isa``: a spec, or the name of a compiler saved here (read back from its manifest)."""
    if isinstance(isa, CompilerSpec):
      return isa
    isa = isa.strip()
    manifest = fs.join(compiler_dir(self.compile_dir, isa), compilers.MANIFEST)
    if isa and fs.exists(manifest):
      try:
        return compilers.parse(json.loads(fs.read_text(manifest))["spec"])
      except (ValueError, KeyError) as e:
        raise UserError(f"corrupt compiler manifest {manifest} ({e}); rebuild it with scripts/compile.py") from e
    return compilers.parse(isa)

  def compiler(self, isa: CompilerSpec | str, *, corpus: str = "<corpus>", role: str = "") -> Compiler:
    """The saved compiler of ``isa`` (a spec or a saved name; see ``resolve``); ``corpus`` and ``role`` (the config
    key that asked for it) complete the message when it is missing."""
    try:
      spec = self.resolve(isa)
    except UserError as e:
      raise UserError(f"{e}; saved ISAs in {self.compile_dir}: {', '.join(self.names()) or 'none'}") from e
    path = compiler_dir(self.compile_dir, spec.name)
    if not fs.exists(fs.join(path, compilers.MANIFEST)):
      raise UserError(
        f"no compiler {spec}{f' ({role})' if role else ''} under {self.compile_dir} (have: "
        f"{', '.join(self.names()) or 'none'}); " + compile_hint(self.compile_dir, corpus, spec)
      )
    return compilers.load(path)

  def corpus_name(self, corpus_spec: str, compiler: Compiler) -> str:
    """The cache key of ``corpus_spec`` here (see ``find_corpus_name``)."""
    return find_corpus_name(self.compile_dir, corpus_spec, compiler)

  def split(self, corpus_name: str, compiler: Compiler, split: str) -> compiled.CompiledSplit:
    """One compiled split, checked against ``compiler`` (see ``load_split``)."""
    return load_split(self.compile_dir, corpus_name, compiler, split)
