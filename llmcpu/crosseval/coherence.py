"""Coherence of what a CPU generates, on two tokenizer-free axes: fluency and relevance.

A CPU that ignores its program and babbles fluently in its own ISA is not executing it. So every generation is judged
twice, against held-out text, by the byte judge (``judge.py``), which never sees a tokenizer:

* **fluency** — is the output well-formed text of the corpus? The weakest of four parts, each the generation's figure
  divided by the same figure of the true continuation cut to the generation's length (capped at 1, so held-out text
  scores exactly 1): judge plausibility ``8 − judge bpb`` (8 bits = uniform bytes), lexical validity (share of
  ``\\w+`` words found in the train split's lexicon), distinct-2, and 1 − repetition (repeated unit 4-grams). The
  minimum, not a mean: text that fails one test (a loop of one fluent word, bytes that are not words) is not
  fluent, and a geometric mean would still give a loop 0.2. It does not depend on the prompt: random bytes and a
  repeated piece score ≈ 0.
* **relevance** — how much the output depends on *its own* program: pointwise mutual information between prompt and
  output under the judge adapted to a prompt, ``PMI = bits(text | other prompts, mean) − bits(text | its own
  prompt)`` (every other prompt, or 16 spread over the split when there are more), pooled per byte over the
  prompts and divided by the same figure for the true continuations. The true continuation scores 1; a text
  independent of its prompt (another document's continuation, babble) 0 in expectation; a text echoing its prompt
  far above 1.
* **coherence** = ``fluency · fit(relevance)``, ``fit(r) = r`` on [0, 1], ``1/r`` above 1 (depending on the prompt
  more than real text does is echoing, not continuing), 0 below 0: the share of the real continuation's prompt
  dependence the output shows, counted only as far as the output is fluent. A product, not a geometric mean, so
  that a fluent babbler (relevance ≈ 0.05) scores ≈ 0.05 and not √0.05 ≈ 0.2; a parrot scores low too.

On ``programs`` the answer is known: relevance is exact match of the greedy answer (the computation was executed),
fluency the share of answers well-formed for their task (an integer for add, lowercase letters for sort, number
words for num2words …), and coherence is exact match (an exact answer is both).

Every figure is a function of sums over prompts (documents): a cell keeps the per-prompt table and the intervals
are bootstrapped over its rows (``intervals.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from llmcpu.crosseval import intervals
from llmcpu.crosseval.judge import ByteJudge
from llmcpu.metrics import text as text_metrics

UNIFORM_BITS = 8.0  # bits per byte of the uniform distribution over bytes
MIN_REFERENCE_CHARS = 32
OTHER_PROMPTS = 16  # prompts each text is also read after, for bits(text | another prompt)
FIGURES = ("fluency", "relevance", "coherence")
PROSE_FORMULA = (
  "fluency = the weakest of judge plausibility (8 − judge bpb), lexical validity, distinct-2 and 1 − repetition, "
  "each divided by the true continuation's (capped at 1); relevance = PMI per byte between prompt and output under "
  "the prompt-adapted byte judge (bits given every other prompt − bits given its own), over the same for the true "
  "continuation (1 = as prompt-dependent as real text, 0 = independent of its prompt); coherence = "
  "fluency · fit(relevance), fit(r) = r on [0, 1], 1/r above 1 (echoing the prompt), 0 below 0."
)
PROGRAMS_FORMULA = (
  "relevance = coherence = exact match of the greedy answer (decoded by the CPU's own compiler); fluency = share of "
  "answers well-formed for their task."
)
_WORD = re.compile(r"\w+")
_UNIT = re.compile(r"\w+|[^\w\s]")

# ------------------------------------------------------------------------------------------------- text measures


def words(text: str) -> list[str]:
  return [w.lower() for w in _WORD.findall(text)]


def _units(text: str, n: int) -> list:
  """Words and punctuation; the bytes when there are too few for one n-gram."""
  units = _UNIT.findall(text)
  return units if len(units) >= n + 1 else list(text.encode("utf-8"))


def _ngrams(units: list, n: int) -> list[tuple]:
  return [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]


def distinct_n(text: str, n: int = 2) -> float:
  """Unique / all n-grams of units (0 for a text with none)."""
  grams = _ngrams(_units(text, n), n)
  return len(set(grams)) / len(grams) if grams else 0.0


def repetition(text: str, n: int = 4) -> float:
  """Share of n-grams of units that repeat an earlier one (1 for a text with none: nothing was said)."""
  grams = _ngrams(_units(text, n), n)
  return 1.0 - len(set(grams)) / len(grams) if grams else 1.0


def lexical_validity(texts: Sequence[str], lexicon: set[str]) -> float:
  """Share of all words of ``texts`` found in ``lexicon`` (0 when there are no words)."""
  ws = [w for t in texts for w in words(t)]
  return sum(w in lexicon for w in ws) / len(ws) if ws else 0.0


_NUMBER_WORD = r"(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
_NUMBER_WORD += r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|"
_NUMBER_WORD += r"thousand|minus)"
_ANSWER = {
  "add": r"-?\d+",
  "sub": r"-?\d+",
  "mul": r"-?\d+",
  "count": r"\d+",
  "words2num": r"-?\d+",
  "copy": r"[a-z]+",
  "reverse": r"[a-z]+",
  "sort": r"[a-z]+",
  "num2words": rf"{_NUMBER_WORD}(?:[ -]{_NUMBER_WORD})*",
}


def well_formed(task: str | None, answer: str) -> bool:
  """Is ``answer`` in the answer language of ``task`` (any non-empty single line for an unknown task)?"""
  answer = answer.strip()
  pattern = _ANSWER.get(task or "")
  if pattern is None:
    return bool(answer) and "\n" not in answer
  return re.fullmatch(pattern, answer) is not None


def references(generated: Sequence[str], continuations: Sequence[str]) -> list[str]:
  """Each true continuation cut to its generation's length (at least MIN_REFERENCE_CHARS)."""
  return [c[: max(len(g), MIN_REFERENCE_CHARS)] for g, c in zip(generated, continuations, strict=True)]


# ------------------------------------------------------------------------------------------------- prose tables

# Additive per-text statistics, for a generation (first block) and for its reference (second block).
TEXT_COLUMNS = ("bits", "bytes", "hits", "words", "distinct", "novel", "texts", "pmi")
_K = len(TEXT_COLUMNS)
_C = {name: i for i, name in enumerate(TEXT_COLUMNS)}


def _text_stats(
  judge: ByteJudge, lexicon: set[str], prompts: Sequence[str], texts: Sequence[str], owner: np.ndarray
) -> np.ndarray:
  """``[len(texts), K]``: judge bits (static, after the prompt's last bytes), bytes, lexicon hits, words, distinct-2,
  1 − repetition, 1, and PMI with the text's own prompt (bits; mean over every other prompt minus its own)."""
  out = np.zeros((len(texts), _K))
  if not len(texts):
    return out
  raw = [t.encode("utf-8") for t in texts]
  lengths = np.array([len(b) for b in raw])
  logp = judge.log2_probs(raw, [prompts[o] for o in owner])
  out[:, _C["bits"]] = np.bincount(np.repeat(np.arange(len(raw)), lengths), weights=-logp, minlength=len(raw))
  out[:, _C["bytes"]] = lengths
  for i, t in enumerate(texts):
    ws = words(t)
    out[i, _C["hits"]] = sum(w in lexicon for w in ws)
    out[i, _C["words"]] = len(ws)
    out[i, _C["distinct"]] = distinct_n(t)
    out[i, _C["novel"]] = 1.0 - repetition(t)
  out[:, _C["texts"]] = 1.0
  if len(prompts) > 1:
    others = other_prompts(len(prompts))[owner]  # [texts, K]
    pairs = np.zeros((len(raw), len(prompts)), bool)
    pairs[np.arange(len(raw)), owner] = True
    pairs[np.arange(len(raw))[:, None], others] = True
    bits = judge.prompt_bits(raw, prompts, pairs)
    own = bits[np.arange(len(raw)), owner]
    out[:, _C["pmi"]] = np.take_along_axis(bits, others, axis=1).mean(1) - own
  else:
    out[:, _C["pmi"]] = np.nan
  return out


def other_prompts(n: int, k: int = OTHER_PROMPTS) -> np.ndarray:
  """``[n, min(k, n − 1)]``: for prompt i, the other prompts its texts are also read after — every other one when
  there are few, else ``k`` spread evenly around the corpus order (never i; neighbours, often of the same source,
  only by chance)."""
  k = min(k, n - 1)
  offsets = np.unique(np.round(np.arange(1, k + 1) * n / (k + 1)).astype(int)) if k < n - 1 else np.arange(1, n)
  return (np.arange(n)[:, None] + offsets[None, :]) % n


def prose_table(
  judge: ByteJudge,
  lexicon: set[str],
  prompts: Sequence[str],
  generations: Sequence[Sequence[str]],
  continuations: Sequence[str],
) -> np.ndarray:
  """Per prompt (row), the sums of every generation's statistics (``generations``: one list of texts per decoding,
  each aligned with ``prompts``) and of its reference: the true continuation cut to the generation's length."""
  gens = [g for texts in generations for g in texts]
  owner = np.tile(np.arange(len(prompts)), len(generations))
  refs = references(gens, [continuations[o] for o in owner])
  table = np.zeros((len(prompts), 2 * _K))
  np.add.at(table[:, :_K], owner, _text_stats(judge, lexicon, prompts, gens, owner))
  np.add.at(table[:, _K:], owner, _text_stats(judge, lexicon, prompts, refs, owner))
  return table


def _div(a, b):
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.asarray(a, np.float64) / np.where(np.asarray(b) == 0, np.nan, np.asarray(b, np.float64))


def _relative(gen, ref):
  """The generation's figure over the reference's, capped at 1 (0 when the generation has none)."""
  return np.minimum(1.0, np.nan_to_num(_div(gen, ref), nan=0.0, posinf=1.0))


def fit(relevance):
  """Relevance as a score in [0, 1]: r on [0, 1], 1/r above 1 (echo), 0 below 0."""
  r = np.asarray(relevance, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(r > 1.0, 1.0 / r, np.clip(r, 0.0, 1.0))


def prose_figures(sums: np.ndarray) -> dict[str, np.ndarray]:
  """Every prose figure from column sums of a ``prose_table`` (``[..., 2K]``, vectorised over leading axes)."""
  g = {name: sums[..., i] for name, i in _C.items()}
  r = {name: sums[..., _K + i] for name, i in _C.items()}
  bpb_g, bpb_r = _div(g["bits"], g["bytes"]), _div(r["bits"], r["bytes"])
  parts = {
    "plausibility": np.clip(np.nan_to_num(_div(UNIFORM_BITS - bpb_g, UNIFORM_BITS - bpb_r), nan=0.0), 0.0, 1.0),
    "lexical": _relative(_div(g["hits"], g["words"]), _div(r["hits"], r["words"])),
    "distinct": _relative(_div(g["distinct"], g["texts"]), _div(r["distinct"], r["texts"])),
    "novel": _relative(_div(g["novel"], g["texts"]), _div(r["novel"], r["texts"])),
  }
  fluency = np.min(np.stack(list(parts.values())), axis=0)
  # Nothing generated depends on nothing: an empty output has relevance 0 (and fluency 0), not "undefined".
  pmi_g, pmi_r = np.nan_to_num(_div(g["pmi"], g["bytes"]), nan=0.0), _div(r["pmi"], r["bytes"])
  relevance = np.where(pmi_r > 0, _div(pmi_g, pmi_r), np.nan)
  coherence = fluency * fit(np.nan_to_num(relevance, nan=0.0))
  return {
    "fluency": fluency,
    "relevance": relevance,
    "coherence": np.where(np.isnan(relevance), np.nan, coherence),
    "judge_bpb_generated": bpb_g,
    "judge_bpb_real": bpb_r,
    "lexical_validity": _div(g["hits"], g["words"]),
    "distinct_2": _div(g["distinct"], g["texts"]),
    "repetition": 1.0 - _div(g["novel"], g["texts"]),
    "pmi_per_byte": pmi_g,
    "pmi_per_byte_real": pmi_r,
    **{f"fluency_{k}": v for k, v in parts.items()},
  }


# ------------------------------------------------------------------------------------------------- programs tables

PROGRAM_COLUMNS = ("exact", "well_formed", "answers")


def program_table(answers: Sequence[str], targets: Sequence[str], tasks: Sequence[str | None]) -> np.ndarray:
  """Per prompt: exact match, well-formed, 1."""
  formed = [float(well_formed(task, a)) for a, task in zip(answers, tasks, strict=True)]
  columns = [text_metrics.exact_match_items(answers, targets), np.array(formed, np.float64), np.ones(len(formed))]
  return np.stack(columns, axis=1).reshape(-1, 3)


def program_figures(sums: np.ndarray) -> dict[str, np.ndarray]:
  exact = _div(sums[..., 0], sums[..., 2])
  return {"fluency": _div(sums[..., 1], sums[..., 2]), "relevance": exact, "coherence": exact, "exact_match": exact}


# ------------------------------------------------------------------------------------------------- assessment


def assess(
  table: np.ndarray,
  kind: str,
  *,
  seed: int = 0,
  keys: Sequence[str] = FIGURES,
  clusters: Sequence | None = None,
  margin: float | None = None,
) -> dict:
  """Point figures of a per-prompt table (every key of ``*_figures``) and, for ``keys``, 95% cluster-bootstrap
  intervals (``<key>_ci``, ``<key>_ci_info``: ``clusters`` gives each prompt's cluster; None = one per prompt).
  With an equivalence ``margin``, relevance also gets its TOST verdict (``intervals.tost``)."""
  figures = prose_figures if kind == "prose" else program_figures
  point = {k: _plain(v) for k, v in figures(table.sum(0)).items()}
  for k in keys:
    if point.get(k) is not None:
      m = margin if k == "relevance" else None
      intervals.store(point, k, table, lambda s, k=k: figures(s)[k], clusters=clusters, seed=seed, margin=m)
  return point


def _plain(v) -> float | None:
  v = float(v)
  return v if math.isfinite(v) else None


# ------------------------------------------------------------------------------------------------- calibration


def prose_references(continuations: Sequence[str], prompts: Sequence[str], length: int, seed: int = 0) -> dict:
  """Texts whose answer is known, one per prompt: the true continuation, another document's (far in corpus order,
  fluent and irrelevant), random bytes, a repeated piece, and the prompt itself (an echo)."""
  n = len(continuations)
  true = [c[:length] for c in continuations]
  rng = np.random.default_rng([seed, 11])
  noise = [bytes(rng.integers(0, 256, len(t.encode("utf-8")), dtype=np.uint8)).decode("utf-8", "replace") for t in true]
  repeated = []
  for t in true:
    piece = (words(t) or ["the"])[0]
    repeated.append(" ".join([piece] * max(1, len(t) // (len(piece) + 1))))
  return {
    "true continuation": true,
    "another document's continuation": [true[(i + n // 2) % n] for i in range(n)] if n > 1 else true,
    "random bytes": noise,
    "repeated piece": repeated,
    "prompt echoed": list(prompts),
  }


def program_references(targets: Sequence[str], tasks: Sequence[str | None], seed: int = 0) -> dict:
  """Known answers per program: the true one, another program's of the same task, random bytes, a repeated piece."""
  n = len(targets)
  by_task: dict = {}
  for i, task in enumerate(tasks):
    by_task.setdefault(task, []).append(i)
  other = list(range(n))
  for members in by_task.values():
    for k, i in enumerate(members):
      other[i] = members[(k + len(members) // 2) % len(members)] if len(members) > 1 else i
  rng = np.random.default_rng([seed, 13])
  noise = [bytes(rng.integers(0, 256, max(1, len(t)), dtype=np.uint8)).decode("utf-8", "replace") for t in targets]
  return {
    "true answer": list(targets),
    "another program's answer (same task)": [targets[j] for j in other],
    "random bytes": noise,
    "repeated piece": ["the " * max(1, len(t)) for t in targets],
  }
