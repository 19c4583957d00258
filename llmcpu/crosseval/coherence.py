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
* **relevance beyond the tail** — use of the prompt *before* its last words, measured by intervention: every
  prompt is also run with its head swapped for another document's (``head_swap``: the other document's text, then
  this prompt's tail, the last ``tail_bytes`` (8) bytes extended back to the start of their first word, the whole as
  long as the prompt). With ``g`` the output after the prompt ``P`` and ``g'`` the output after the swapped prompt
  ``P'``, the crossed difference ``D = [bits(g|P') − bits(g|P)] − [bits(g'|P') − bits(g'|P)]`` (does each output fit
  the head it was generated after better than the other does?), pooled per byte and divided by the same figure of
  the true continuations (``g`` = this document's, ``g'`` = the swapped head's document's). A generator that reads
  only the tail — the byte n-gram judge continuing greedily, "finish the last word, then babble" — produces the same
  output after both prompts and scores exactly 0 (sampled: 0 in expectation, ``g`` and ``g'`` are exchangeable); the
  judge's static bits of each output cancel in the difference. (The judge-side estimate kept as
  ``relevance_beyond_tail_judge`` — other heads + this tail as the "other prompts" — is not 0 for local generators:
  its other heads are not drawn given the tail, and the tail's topic predicts the head's.)
* **copy rate** — the share of output bytes inside byte n-grams (≥ 8 bytes) that occur in the prompt, and
  **relevance beyond copying**: relevance with those copied bytes deleted from every output and reference (``fit``
  penalises only r > 1, so copying a quarter of the prompt into babble would otherwise read as relevant).
* **coherence** = ``fluency · fit(relevance)``, ``fit(r) = r`` on [0, 1], ``1/r`` above 1 (depending on the prompt
  more than real text does is echoing, not continuing), 0 below 0: the share of the real continuation's prompt
  dependence the output shows, counted only as far as the output is fluent. A product, not a geometric mean, so
  that a fluent babbler (relevance ≈ 0.05) scores ≈ 0.05 and not √0.05 ≈ 0.2; a parrot scores low too.

On ``programs`` the answer is known: relevance is exact match of the greedy answer (the computation was executed),
fluency the share of answers well-formed for their task (an integer for add, lowercase letters for sort, number
words for num2words …), and coherence is exact match (an exact answer is both).

Prose outputs and references are judged on the same number of bytes (``new_bytes``, 96 by default, ``cut_bytes``): the
output's first N bytes, the true continuation's first N.

Every figure is a function of sums over prompts (documents): a cell keeps the per-prompt table and the intervals
are bootstrapped over its rows (``intervals.py``).
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from llmcpu.crosseval import intervals
from llmcpu.crosseval.judge import ByteJudge
from llmcpu.metrics import text as text_metrics

UNIFORM_BITS = 8.0  # bits per byte of the uniform distribution over bytes
NEW_BYTES = 96  # prose: bytes of output (and of reference) judged
TAIL_BYTES = 8  # relevance beyond the tail: the prompt's last bytes (at least) every head-swapped prompt keeps
TAIL_WORD_SLACK = 16  # ... extended back to the start of their first word, by at most this many bytes
COPY_NGRAM = 8  # copy rate: output bytes inside byte n-grams of at least this length found in the prompt
OTHER_PROMPTS = 16  # prompts each text is also read after, for bits(text | another prompt)
FIGURES = ("fluency", "relevance", "coherence")
# prose only, with intervals
PROSE_EXTRA = ("relevance_beyond_tail", "relevance_beyond_tail_judge", "relevance_beyond_copying", "copy_rate")
PROSE_FORMULA = (
  "fluency = the weakest of judge plausibility (8 − judge bpb), lexical validity, distinct-2 and 1 − repetition, "
  "each divided by the true continuation's (capped at 1); relevance = PMI per byte between prompt and output under "
  "the prompt-adapted byte judge (bits given every other prompt − bits given its own), over the same for the true "
  "continuation (1 = as prompt-dependent as real text, 0 = independent of its prompt); relevance beyond the tail = "
  "the same PMI under an intervention: each prompt also run with its head swapped for another document's (its last "
  "≥ 8 bytes kept, from a word start), D = how much better each output fits the head it followed than the other "
  "output does, over the same for the true continuations, so a generator that reads only the tail scores exactly 0; "
  "copy rate = share of output bytes in ≥ 8-byte n-grams of the prompt, relevance "
  "beyond copying = relevance with those bytes deleted; coherence = fluency · fit(relevance), fit(r) = r on [0, 1], "
  "1/r above 1 (echoing the prompt), 0 below 0. Outputs and references are judged on their first N bytes."
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


def cut_bytes(text: str, n: int) -> str:
  """The longest prefix of ``text`` with at most ``n`` UTF-8 bytes that ends at a character boundary."""
  return text.encode("utf-8")[:n].decode("utf-8", "ignore")


def copied_mask(text: bytes, prompt: bytes, n: int = COPY_NGRAM) -> np.ndarray:
  """bool per byte of ``text``: inside some n-byte window of ``text`` that also occurs in ``prompt``."""
  mask = np.zeros(len(text), bool)
  grams = {prompt[i : i + n] for i in range(len(prompt) - n + 1)}
  for i in range(len(text) - n + 1):
    if text[i : i + n] in grams:
      mask[i : i + n] = True
  return mask


# ------------------------------------------------------------------------------------------------- prose tables

# Additive per-text statistics, for a generation (first block) and for its reference (second block).
TEXT_COLUMNS = (
  "bits",
  "bytes",
  "hits",
  "words",
  "distinct",
  "novel",
  "texts",
  "pmi",
  "pmi_tail",
  "copied",
  "pmi_nocopy",
  "bytes_nocopy",
  "head_pmi",  # relevance beyond the tail: the crossed difference D (bits) against the head-swapped output
  "head_bytes",  # the mean of the two outputs' bytes
)
_K = len(TEXT_COLUMNS)
_C = {name: i for i, name in enumerate(TEXT_COLUMNS)}


def _text_stats(
  judge: ByteJudge,
  lexicon: set[str],
  prompts: Sequence[str],
  texts: Sequence[str],
  owner: np.ndarray,
  tail_bytes: int = TAIL_BYTES,
  swapped: Sequence[str] | None = None,
) -> np.ndarray:
  """``[len(texts), K]``: judge bits (static, after the prompt's last bytes), bytes, lexicon hits, words, distinct-2,
  1 − repetition, 1, PMI with the text's own prompt (bits; mean over every other prompt minus its own), the same
  with the prompt's tail held fixed (the judge-side estimate), copied bytes, PMI and bytes of the text with its
  copied bytes deleted, and — with ``swapped`` (each text's counterpart generated after its prompt's ``head_swap``)
  — the crossed difference D and the pair's mean bytes (NaN without)."""
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
  encoded = [p.encode("utf-8") for p in prompts]
  masks = [copied_mask(b, encoded[o]) for b, o in zip(raw, owner, strict=True)]
  stripped = [bytes(np.frombuffer(b, np.uint8)[~m]) for b, m in zip(raw, masks, strict=True)]
  out[:, _C["copied"]] = [m.sum() for m in masks]
  out[:, _C["bytes_nocopy"]] = [len(b) for b in stripped]
  if len(prompts) > 1:
    others = other_prompts(len(prompts))[owner]  # [texts, K]
    pmi, own = _pmi(judge, raw, encoded, owner, others)
    pmi_tail = _pmi_beyond_tail(judge, raw, encoded, owner, own, tail_bytes)
    out[:, _C["pmi"]], out[:, _C["pmi_tail"]] = pmi, pmi_tail
    changed = np.flatnonzero(out[:, _C["copied"]] > 0)
    out[:, _C["pmi_nocopy"]] = pmi
    if len(changed):
      out[changed, _C["pmi_nocopy"]] = _pmi(
        judge, [stripped[i] for i in changed], encoded, owner[changed], others[changed]
      )[0]
  else:
    out[:, [_C["pmi"], _C["pmi_tail"], _C["pmi_nocopy"]]] = np.nan
  out[:, [_C["head_pmi"], _C["head_bytes"]]] = np.nan
  if swapped is not None and len(prompts) > 1:
    out[:, _C["head_pmi"]], out[:, _C["head_bytes"]] = _head_swap_pmi(judge, prompts, texts, swapped, owner, tail_bytes)
  return out


def tail_start(prompt: bytes, tail_bytes: int = TAIL_BYTES) -> int:
  """Where a prompt's tail begins: at least its last ``tail_bytes`` bytes, extended back to the space before their
  first word (by at most ``TAIL_WORD_SLACK`` bytes; else at a UTF-8 character boundary), so that a head swap joins
  whole words."""
  end = max(len(prompt) - tail_bytes, 0)
  space = prompt.rfind(b" ", max(end - TAIL_WORD_SLACK, 0), end + 1)
  if space >= 0:
    return space
  while 0 < end < len(prompt) and prompt[end] & 0xC0 == 0x80:  # not inside a multi-byte character
    end -= 1
  return end


def swap_partners(n: int) -> np.ndarray:
  """For each of ``n`` prompts, the one whose head it borrows: half the split away in corpus order (never itself)."""
  return (np.arange(n) + n // 2) % n if n > 1 else np.zeros(n, np.int64)


def head_swap(prompts: Sequence[str], tail_bytes: int = TAIL_BYTES) -> tuple[list[str], np.ndarray]:
  """(each prompt with its head replaced by its partner's, the partners): the partner's text before its own tail,
  cut from the left so the swapped prompt is no longer than the original, then this prompt's tail (``tail_start``).
  A model that reads only the tail sees the same input after both."""
  encoded = [p.encode("utf-8") for p in prompts]
  partner = swap_partners(len(prompts))
  swapped = []
  for i, p in enumerate(encoded):
    tail = p[tail_start(p, tail_bytes) :]
    other = encoded[partner[i]]
    head = other[: tail_start(other, tail_bytes)]
    head = head[max(len(head) - (len(p) - len(tail)), 0) :]
    swapped.append((head + tail).decode("utf-8", "ignore"))  # a head cut mid-character loses that character
  return swapped, partner


def _head_swap_pmi(
  judge: ByteJudge,
  prompts: Sequence[str],
  texts: Sequence[str],
  swapped: Sequence[str],
  owner: np.ndarray,
  tail_bytes: int,
) -> tuple[np.ndarray, np.ndarray]:
  """(D per text, in bits; the mean bytes of text and counterpart): with P its prompt, P' the head-swapped prompt,
  g the text and g' its counterpart, D = [bits(g|P') − bits(g|P)] − [bits(g'|P') − bits(g'|P)]."""
  hybrids, _ = head_swap(prompts, tail_bytes)
  own = [t.encode("utf-8") for t in texts]
  other = [t.encode("utf-8") for t in swapped]
  n, m = len(prompts), len(texts)
  pairs = np.zeros((2 * m, 2 * n), bool)
  rows = np.arange(m)
  for block in (0, m):
    pairs[block + rows, owner] = True
    pairs[block + rows, n + owner] = True
  bits = judge.prompt_bits(
    [*own, *other], [*(p.encode("utf-8") for p in prompts), *(h.encode("utf-8") for h in hybrids)], pairs
  )
  g_p, g_s = bits[rows, owner], bits[rows, n + owner]
  o_p, o_s = bits[m + rows, owner], bits[m + rows, n + owner]
  return (g_s - g_p) - (o_s - o_p), (np.array([len(b) for b in own]) + np.array([len(b) for b in other])) / 2.0


def _pmi(
  judge: ByteJudge, raw: Sequence[bytes], prompts: Sequence[bytes], owner: np.ndarray, others: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """(PMI of each text with its own prompt: mean bits after the ``others`` − bits after its own; bits after its own)."""
  rows = np.arange(len(raw))
  pairs = np.zeros((len(raw), len(prompts)), bool)
  pairs[rows, owner] = True
  pairs[rows[:, None], others] = True
  bits = judge.prompt_bits(raw, prompts, pairs)
  own = bits[rows, owner]
  return np.take_along_axis(bits, others, axis=1).mean(1) - own, own


def _pmi_beyond_tail(
  judge: ByteJudge, raw: Sequence[bytes], prompts: Sequence[bytes], owner: np.ndarray, own: np.ndarray, tail: int
) -> np.ndarray:
  """PMI of each text with its prompt's head given its tail: mean bits after (another prompt's head + this prompt's
  last ``tail`` bytes) − bits after its own prompt (``own``). The other heads are those of ``other_prompts``."""
  n = len(prompts)
  others = other_prompts(n)  # [n, K]
  k = others.shape[1]
  heads = [p[: max(len(p) - tail, 0)] for p in prompts]
  hybrid = [heads[j] + prompts[i][-tail:] for i in range(n) for j in others[i]]  # prompt i's k hybrids, in order
  cols = owner[:, None] * k + np.arange(k)[None, :]
  pairs = np.zeros((len(raw), len(hybrid)), bool)
  pairs[np.arange(len(raw))[:, None], cols] = True
  bits = judge.prompt_bits(raw, hybrid, pairs)
  return np.take_along_axis(bits, cols, axis=1).mean(1) - own


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
  *,
  nbytes: int = NEW_BYTES,
  tail_bytes: int = TAIL_BYTES,
  swapped: Sequence[Sequence[str]] | None = None,
) -> np.ndarray:
  """Per prompt (row), the sums of every generation's statistics (``generations``: one list of texts per decoding,
  each aligned with ``prompts`` and already cut to ``nbytes``) and of its reference: the true continuation's first
  ``nbytes`` bytes, once per decoding. ``swapped``: the same decodings after each prompt's ``head_swap`` (relevance
  beyond the tail; without them it is undefined); the reference's counterpart is the swapped head's document's true
  continuation."""
  gens = [g for texts in generations for g in texts]
  others = None if swapped is None else [g for texts in swapped for g in texts]
  owner = np.tile(np.arange(len(prompts)), len(generations))
  refs = [cut_bytes(c, nbytes) for c in continuations]
  table = np.zeros((len(prompts), 2 * _K))
  np.add.at(table[:, :_K], owner, _text_stats(judge, lexicon, prompts, gens, owner, tail_bytes, others))
  table[:, _K:] = len(generations) * _reference_stats(judge, lexicon, prompts, refs, tail_bytes)
  return table


_REFERENCE_CACHE: dict[tuple, tuple] = {}  # every cell of a matrix judges the same references on the same prompts


def _reference_stats(
  judge: ByteJudge, lexicon: set[str], prompts: Sequence[str], refs: Sequence[str], tail_bytes: int
) -> np.ndarray:
  """``_text_stats`` of each prompt's reference, computed once per (judge, lexicon, prompts, references)."""
  key = (id(judge), id(lexicon), tuple(prompts), tuple(refs), tail_bytes)
  hit = _REFERENCE_CACHE.get(key)
  if hit is not None and hit[0] is judge and hit[1] is lexicon:  # the cache holds them: their ids are not reused
    return hit[2]
  partner_refs = [refs[j] for j in swap_partners(len(refs))]
  stats = _text_stats(judge, lexicon, prompts, refs, np.arange(len(prompts)), tail_bytes, partner_refs)
  if len(_REFERENCE_CACHE) >= 8:
    _REFERENCE_CACHE.pop(next(iter(_REFERENCE_CACHE)))
  _REFERENCE_CACHE[key] = (judge, lexicon, stats)
  return stats


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
  tail_g, tail_r = np.nan_to_num(_div(g["pmi_tail"], g["bytes"]), nan=0.0), _div(r["pmi_tail"], r["bytes"])
  # No nan_to_num here: without head-swapped outputs (a shuffled-prompt run) the figure is undefined, not 0.
  head_g, head_r = _div(g["head_pmi"], g["head_bytes"]), _div(r["head_pmi"], r["head_bytes"])
  nocopy_g = np.nan_to_num(_div(g["pmi_nocopy"], g["bytes_nocopy"]), nan=0.0)
  nocopy_r = _div(r["pmi_nocopy"], r["bytes_nocopy"])
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
    "relevance_beyond_tail": np.where(head_r > 0, _div(head_g, head_r), np.nan),
    "head_swap_pmi_per_byte": head_g,
    "head_swap_pmi_per_byte_real": head_r,
    "relevance_beyond_tail_judge": np.where(tail_r > 0, _div(tail_g, tail_r), np.nan),
    "pmi_beyond_tail_per_byte": tail_g,
    "pmi_beyond_tail_per_byte_real": tail_r,
    "copy_rate": _div(g["copied"], g["bytes"]),
    "copy_rate_real": _div(r["copied"], r["bytes"]),
    "relevance_beyond_copying": np.where(nocopy_r > 0, _div(nocopy_g, nocopy_r), np.nan),
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
  keys: Sequence[str] | None = None,
  clusters: Sequence | None = None,
  margin: float | None = None,
) -> dict:
  """Point figures of a per-prompt table (every key of ``*_figures``) and, for ``keys`` (default: FIGURES, and
  PROSE_EXTRA on prose), 95% cluster-bootstrap intervals (``<key>_ci``, ``<key>_ci_info``: ``clusters`` gives each
  prompt's cluster; None = one per prompt). With an equivalence ``margin``, relevance and relevance beyond the tail
  also get their TOST verdicts (``intervals.tost``)."""
  figures = prose_figures if kind == "prose" else program_figures
  if keys is None:
    keys = (*FIGURES, *PROSE_EXTRA) if kind == "prose" else FIGURES
  point = {k: _plain(v) for k, v in figures(table.sum(0)).items()}
  for k in keys:
    if point.get(k) is not None:
      m = margin if k in ("relevance", "relevance_beyond_tail") else None
      intervals.store(point, k, table, lambda s, k=k: figures(s)[k], clusters=clusters, seed=seed, margin=m)
  return point


def table_record(table: np.ndarray, docs: Sequence[int], clusters: Sequence, kind: str = "prose") -> dict:
  """A cell's per-prompt table as a row keeps it (``prompt_table``): which document each prompt was cut from (or
  which program), its cluster, the row of sums and the table's ``kind`` (prose or programs). Two cells of one matrix
  judge the same bytes of the same documents (one byte offset for every ISA; the same programs), so their tables
  pair prompt by prompt (``paired``)."""
  rows = np.asarray(table).tolist()
  return {"kind": kind, "docs": [int(d) for d in docs], "clusters": [str(c) for c in clusters], "rows": rows}


def paired(a: dict, b: dict, key: str, *, seed: int = 0) -> dict | None:
  """``key`` of cell a minus cell b on the prompts both were judged on (``table_record``s, matched by document), with
  the 95% cluster bootstrap interval of the difference: both cells are resampled with the same draws, so what the
  prompts share (an easy document, a topic the judge knows) cancels. None when fewer than two prompts pair up.

  ``{"difference", "ci", "ci90", "info", "prompts"}``."""
  where = {d: i for i, d in enumerate(b["docs"])}
  both = [(i, where[d]) for i, d in enumerate(a["docs"]) if d in where]
  if len(both) < 2:
    return None
  ia, ib = (np.array(x) for x in zip(*both, strict=True))
  ta, tb = np.asarray(a["rows"], np.float64)[ia], np.asarray(b["rows"], np.float64)[ib]
  width = ta.shape[1]
  figures = program_figures if a.get("kind") == "programs" else prose_figures  # records before "kind": prose

  def diff(sums: np.ndarray) -> np.ndarray:
    return figures(sums[..., :width])[key] - figures(sums[..., width:])[key]

  joint = np.concatenate([ta, tb], axis=1)
  clusters = [a["clusters"][i] for i in ia]
  out = intervals.bootstrap_info(joint, diff, clusters=clusters, seed=seed)
  return out | {"difference": _plain(diff(joint.sum(0))), "prompts": len(both)}


def _plain(v) -> float | None:
  v = float(v)
  return v if math.isfinite(v) else None


# ------------------------------------------------------------------------------------------------- calibration


def prose_references(continuations: Sequence[str], prompts: Sequence[str], nbytes: int, seed: int = 0) -> dict:
  """Texts whose answer is known, one per prompt, ``nbytes`` long: the true continuation, another document's (far in
  corpus order, fluent and irrelevant), random bytes, a repeated piece, and the prompt itself (an echo)."""
  n = len(continuations)
  true = [cut_bytes(c, nbytes) for c in continuations]
  rng = np.random.default_rng([seed, 11])
  noise = [bytes(rng.integers(0, 256, len(t.encode("utf-8")), dtype=np.uint8)).decode("utf-8", "replace") for t in true]
  repeated = []
  for t in true:
    piece = (words(t) or ["the"])[0]
    repeated.append(cut_bytes(" ".join([piece] * max(1, len(t) // (len(piece) + 1))), nbytes))
  return {
    "true continuation": true,
    "another document's continuation": [true[(i + n // 2) % n] for i in range(n)] if n > 1 else true,
    "random bytes": [cut_bytes(t, nbytes) for t in noise],
    "repeated piece": repeated,
    "prompt echoed": list(prompts),
  }


NGRAM_BASELINE = "baseline: n-gram judge, greedy"
WORD_BASELINE = "baseline: last word finished, then another document"
BASELINES = (NGRAM_BASELINE, WORD_BASELINE)


def finish_word(prompt: str, counts: Mapping[str, int]) -> str:
  """What completes the prompt's last word (its trailing ``\\w+`` run, lowercased) into the most frequent word of
  ``counts`` that starts with it (the alphabetically first on a tie); '' when the prompt does not end in a word or
  no word extends it."""
  m = re.search(r"\w+$", prompt)
  if not m:
    return ""
  stem = m.group().lower()
  best = min((w for w in counts if w.startswith(stem)), key=lambda w: (-counts[w], w), default=stem)
  return best[len(stem) :]


def prose_baselines(
  judge: ByteJudge, counts: Mapping[str, int], prompts: Sequence[str], continuations: Sequence[str], nbytes: int
) -> dict:
  """Purely local generators on the given prompts, ``nbytes`` each: the byte n-gram judge continuing each prompt
  greedily, and the prompt's last word finished from the train lexicon followed by another document's true
  continuation (far in corpus order, as in ``prose_references``; the same document whatever the prompt's head)."""
  n = len(prompts)
  greedy = [b.decode("utf-8", "replace") for b in judge.greedy_continuation(prompts, nbytes)]
  other = [continuations[(i + n // 2) % n] if n > 1 else "" for i in range(n)]
  return {
    NGRAM_BASELINE: [cut_bytes(g, nbytes) for g in greedy],
    WORD_BASELINE: [cut_bytes(finish_word(p, counts) + o, nbytes) for p, o in zip(prompts, other, strict=True)],
  }


def calibration_texts(
  judge: ByteJudge,
  counts: Mapping[str, int],
  prompts: Sequence[str],
  continuations: Sequence[str],
  nbytes: int,
  seed: int = 0,
  tail_bytes: int = TAIL_BYTES,
) -> dict[str, tuple[list[str], list[str]]]:
  """Every calibration reference and baseline as (its texts, its texts after the head-swapped prompts): what each
  known generator writes when only the head of its prompt changes. The true continuation's counterpart is the
  swapped head's document's continuation (by construction it scores relevance beyond the tail 1); texts that do
  not read the prompt (another document, random bytes, a repeated piece) are unchanged; the echo echoes the
  swapped prompt; the local baselines run again on it (they read only the tail, so they write the same)."""
  swapped_prompts, partner = head_swap(prompts, tail_bytes)
  refs = prose_references(continuations, prompts, nbytes, seed)
  counterpart = {
    "true continuation": [refs["true continuation"][j] for j in partner],
    "prompt echoed": list(swapped_prompts),
  }
  out = {name: (texts, counterpart.get(name, list(texts))) for name, texts in refs.items()}
  local = prose_baselines(judge, counts, prompts, continuations, nbytes)
  local_swapped = prose_baselines(judge, counts, swapped_prompts, continuations, nbytes)
  return out | {name: (texts, local_swapped[name]) for name, texts in local.items()}


PRIOR_BASELINE = "baseline: the task's most frequent answer"
OPERAND_BASELINE = "baseline: the prompt's last operand copied"
PROGRAM_BASELINES = (PRIOR_BASELINE, OPERAND_BASELINE)


def task_prior(targets: Sequence[str], tasks: Sequence[str | None]) -> list[str]:
  """Per program, the most frequent answer among the *other* programs of its task (the alphabetically first on a
  tie; nothing when it is alone): what a CPU that recognises the task and computes nothing writes."""
  by_task: dict = {}
  for t, task in zip(targets, tasks, strict=True):
    by_task.setdefault(task, collections.Counter())[t] += 1
  out = []
  for t, task in zip(targets, tasks, strict=True):
    counts = by_task[task].copy()
    counts[t] -= 1
    best = max((c for c in counts.values()), default=0)
    out.append(min(a for a, c in counts.items() if c == best) if best > 0 else "")
  return out


def last_operand(prompt: str) -> str:
  """The prompt's last word before its closing ``=`` ("copy qwerty =" → "qwerty"): a copy of the prompt's nearest
  operand, what a purely local model writes after ``=``."""
  found = prompt.rstrip().removesuffix("=").split()
  return found[-1] if found else ""


def program_references(
  targets: Sequence[str], tasks: Sequence[str | None], prompts: Sequence[str], seed: int = 0
) -> dict:
  """Known answers per program: the true one, another program's of the same task, random bytes, a repeated piece;
  and two local baselines every CPU is read against: the task's most frequent answer (``task_prior``) and the
  prompt's last operand copied (``last_operand``), which solves ``copy`` and nothing that computes."""
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
    PRIOR_BASELINE: task_prior(targets, tasks),
    OPERAND_BASELINE: [last_operand(p) for p in prompts],
  }


def exact_match_by_task(answers: Sequence[str], targets: Sequence[str], tasks: Sequence[str | None]) -> dict:
  """Exact match per task (``"all"`` for programs without one), tasks in alphabetical order."""
  by_task: dict[str, list[float]] = {}
  for task, hit in zip(tasks, text_metrics.exact_match_items(answers, targets), strict=True):
    by_task.setdefault(task or "all", []).append(hit)
  return {k: float(np.mean(v)) for k, v in sorted(by_task.items())}
