"""Coherence: what a CPU does with foreign machine code, judged without any tokenizer.

Prompts come from held-out documents *as compiled by the evaluation ISA* (no re-tokenization): a prose prompt is
the shortest token prefix of a document covering ``prompt_bytes`` bytes (so every ISA gets the same text), a
program prompt is the program's input. The CPU generates greedily and by sampling with a fixed seed; its output is
read with its *own* compiler (what the CPU means) and, for the record, with the evaluation compiler.

Prose, per generation, against the true continuation truncated to the generation's length (at least 32 chars):
  * judge plausibility  J = clip((8 − bpb_gen) / (8 − bpb_real), 0, 1), the byte judge's bits per byte on the
    generated vs the real text (8 bits = uniform over bytes);
  * lexical validity    L = share of generated words (``\\w+``, lowercased) found in the train split's lexicon;
  * diversity           D = distinct-2 (unique / all unit bigrams), R = repetition (1 − unique/all unit 4-grams),
    where units are words and punctuation, or bytes when a text has too few of them;
  * chrF                C = sacrebleu chrF / 100 against the true continuation.
L, D and 1 − R are divided by the same figure on the real continuation (capped at 1), so held-out text itself
scores 1 on every component. ``coherence = (J · L' · D' · (1 − R)' · C) ** (1/5)``, the geometric mean: one failed
component (gibberish, a loop, no lexical words, nothing in common with the continuation) pulls it to 0. Greedy and
sampled generations are pooled.

Programs: ``coherence`` = exact match of the greedy answer (decoded by the CPU's compiler, stripped) with the true
answer; the sampled exact match and per-task figures are reported too.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np
from sacrebleu.metrics import CHRF

from llmcpu import models, specials
from llmcpu.compilers import Compiler
from llmcpu.crosseval.judge import ByteJudge
from llmcpu.data.compiled import CompiledSplit

UNIFORM_BITS = 8.0  # bits per byte of the uniform distribution over bytes
MIN_REFERENCE_CHARS = 32
_WORD = re.compile(r"\w+")
PROSE_FORMULA = (
  "geometric mean of judge plausibility clip((8 − judge bpb on generated) / (8 − judge bpb on the real continuation), "
  "0, 1), lexical validity, distinct-2 and 1 − repetition (each divided by the real continuation's value, capped at "
  "1) and chrF/100 against the true continuation; greedy and sampled generations pooled. Held-out text scores 1."
)
PROGRAMS_FORMULA = "exact match of the greedy answer, decoded by the CPU's own compiler, with the true answer."
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


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """Corpus chrF (sacrebleu, 0–100)."""
  if not hypotheses:
    return 0.0
  return float(CHRF().corpus_score(list(hypotheses), [list(references)]).score)


def exact_match(answers: Sequence[str], targets: Sequence[str]) -> float:
  if not answers:
    return 0.0
  return sum(a.strip() == t.strip() for a, t in zip(answers, targets, strict=True)) / len(answers)


def geometric_mean(values: Sequence[float]) -> float:
  if any(v <= 0 for v in values):
    return 0.0
  return float(math.exp(sum(math.log(v) for v in values) / len(values)))


def _ratio(value: float, real: float) -> float:
  return float(min(1.0, value / real)) if real > 0 else float(value > 0)


def prose_components(
  judge: ByteJudge, lexicon: set[str], contexts: Sequence[str], generated: Sequence[str], continuations: Sequence[str]
) -> dict:
  """Every prose measure of ``generated`` (each conditioned on its context) and the combined ``coherence``."""
  refs = references(generated, continuations)
  nonempty = [i for i, g in enumerate(generated) if g.encode("utf-8")]
  bpb_gen = judge.bits_per_byte([generated[i] for i in nonempty], [contexts[i] for i in nonempty])
  bpb_real = judge.bits_per_byte(refs, contexts)
  real = {
    "lexical": lexical_validity(refs, lexicon),
    "distinct": float(np.mean([distinct_n(r) for r in refs])),
    "novel": 1.0 - float(np.mean([repetition(r) for r in refs])),
  }
  out = {
    "judge_bpb_generated": None if math.isnan(bpb_gen) else bpb_gen,
    "judge_bpb_real": bpb_real,
    "lexical_validity": lexical_validity(generated, lexicon),
    "distinct_2": float(np.mean([distinct_n(g) for g in generated])),
    "repetition": float(np.mean([repetition(g) for g in generated])),
    "chrf": chrf(generated, refs),
    "empty_generations": len(generated) - len(nonempty),
  }
  plausibility = 0.0
  if out["judge_bpb_generated"] is not None and UNIFORM_BITS - bpb_real > 0:
    plausibility = float(np.clip((UNIFORM_BITS - bpb_gen) / (UNIFORM_BITS - bpb_real), 0.0, 1.0))
  parts = {
    "plausibility": plausibility,
    "lexical": _ratio(out["lexical_validity"], real["lexical"]),
    "distinct": _ratio(out["distinct_2"], real["distinct"]),
    "novel": _ratio(1.0 - out["repetition"], real["novel"]),
    "chrf": out["chrf"] / 100.0,
  }
  out["coherence_parts"] = parts
  out["coherence"] = geometric_mean(list(parts.values()))
  return out


def references(generated: Sequence[str], continuations: Sequence[str]) -> list[str]:
  """Each true continuation cut to its generation's length (at least MIN_REFERENCE_CHARS)."""
  return [c[: max(len(g), MIN_REFERENCE_CHARS)] for g, c in zip(generated, continuations, strict=True)]


def prose_report(
  judge: ByteJudge,
  lexicon: set[str],
  prompts: Prompts,
  greedy: Sequence[str],
  sampled: Sequence[str],
  greedy_eval_reading: Sequence[str],
) -> dict:
  """The pooled prose figures, the coherence of each decoding mode, and two diagnostics: chrF of the evaluation
  compiler's reading, and ``chrf_mismatched`` — chrF against *other* prompts' continuations (a cyclic shift), so
  ``chrf − chrf_mismatched`` says how much the output depends on its own input."""
  ctx, cont = prompts.texts, prompts.references
  out = prose_components(judge, lexicon, ctx * 2, [*greedy, *sampled], cont * 2)
  out["coherence_greedy"] = prose_components(judge, lexicon, ctx, greedy, cont)["coherence"]
  out["coherence_sampled"] = prose_components(judge, lexicon, ctx, sampled, cont)["coherence"]
  out["chrf_eval_reading"] = chrf(greedy_eval_reading, references(greedy, cont))
  gens = [*greedy, *sampled]
  shifted = cont[1:] + cont[:1] if len(cont) > 1 else cont
  out["chrf_mismatched"] = chrf(gens, references(gens, shifted * 2))
  return out


# ------------------------------------------------------------------------------------------------- prompts


@dataclasses.dataclass
class Prompts:
  """Held-out prompts compiled by one ISA: ids (ragged), their raw text, the true continuation/answer."""

  docs: list[int]
  ids: list[np.ndarray]
  texts: list[str]
  references: list[str]
  tasks: list[str | None]
  kind: str  # 'prose' | 'programs'


def token_prefix(compiler: Compiler, ids: np.ndarray, raw: str, min_bytes: int, max_tokens: int) -> int:
  """The fewest leading ids whose decoding covers ≥ ``min_bytes`` bytes and is a prefix of ``raw`` (≤ max_tokens)."""

  def nbytes(k: int) -> int:
    return len(compiler.decode(ids[:k]).encode("utf-8"))

  lo, hi = 0, min(len(ids), max_tokens)
  while lo < hi:  # decoded length grows with k (a cut multi-byte character may wobble it by a byte)
    mid = (lo + hi) // 2
    if nbytes(mid) >= min_bytes:
      hi = mid
    else:
      lo = mid + 1
  k = lo
  # A prefix that cuts a multi-byte character decodes to U+FFFD: extend to finish it, else back off.
  for cand in [*range(k, min(k + 4, len(ids), max_tokens) + 1), *range(k - 1, 0, -1)]:
    if raw.startswith(compiler.decode(ids[:cand])):
      return cand
  return 0


def select_docs(raw_lengths: Sequence[int], n: int, min_bytes: int) -> list[int]:
  """The first ``n`` documents (corpus order, so the same for every ISA) with at least ``min_bytes`` bytes."""
  return [i for i, b in enumerate(raw_lengths) if b >= min_bytes][:n]


def prose_prompts(
  split: CompiledSplit, compiler: Compiler, raw: Sequence[str], docs: Sequence[int], prompt_bytes: int, width: int
) -> Prompts:
  field = split.fields["text"]
  ids, texts, refs = [], [], []
  for d in docs:
    doc_ids = np.asarray(field.doc(d))
    k = token_prefix(compiler, doc_ids, raw[d], prompt_bytes, width)
    prefix = compiler.decode(doc_ids[:k])
    ids.append(doc_ids[:k])
    texts.append(prefix)
    refs.append(raw[d][len(prefix) :])
  return Prompts(list(docs), ids, texts, refs, [None] * len(docs), "prose")


def program_prompts(split: CompiledSplit, raw_inputs: Sequence[str], raw_targets: Sequence[str], docs) -> Prompts:
  tasks = split.labels.get("task") or [None] * split.num_docs
  field = split.fields["input"]
  return Prompts(
    list(docs),
    [np.asarray(field.doc(d)) for d in docs],
    [raw_inputs[d] for d in docs],
    [raw_targets[d] for d in docs],
    [tasks[d] for d in docs],
    "programs",
  )


def prompt_batch(prompts: Prompts, arch: str, width: int) -> tuple[np.ndarray, np.ndarray, int]:
  """(ids [B, W] right-padded, lengths [B], prompts truncated) in the layout ``models.generate`` expects.

  Decoder: ``[BOS] + ids``. Encoder-decoder: ``ids + [EOS]`` for programs (the seq2seq source), ``ids +
  [<extra_id_0>, EOS]`` for prose (T5: the model fills in the span after the prompt). ``W`` is fixed per model
  so that one XLA compile serves every ISA.
  """
  if arch == "decoder":
    head, tail = [specials.BOS_ID], []
  elif prompts.kind == "programs":
    head, tail = [], [specials.EOS_ID]
  else:
    head, tail = [], [specials.sentinel_id(0), specials.EOS_ID]
  room = width - len(head) - len(tail)
  out = np.full((len(prompts.ids), width), specials.PAD_ID, np.int32)
  lengths = np.zeros(len(prompts.ids), np.int32)
  truncated = 0
  for i, ids in enumerate(prompts.ids):
    truncated += int(len(ids) > room)
    row = [*head, *np.asarray(ids[:room]).tolist(), *tail]
    out[i, : len(row)] = row
    lengths[i] = len(row)
  return out, lengths, truncated


def output_ids(row: np.ndarray, arch: str, kind: str) -> list[int]:
  """The generated ids that carry text: up to EOS; for a prose encoder-decoder, the first sentinel's span."""
  ids = []
  seen_sentinel = False
  for t in np.asarray(row).tolist():
    if t in (specials.EOS_ID, specials.PAD_ID):
      break
    is_sentinel = specials.FIRST_SENTINEL_ID <= t < specials.FIRST_REGULAR_ID
    if arch == "encoder_decoder" and kind == "prose" and is_sentinel:
      if seen_sentinel or ids:  # the next span begins: the filled-in span is complete
        break
      seen_sentinel = True
      continue
    ids.append(t)
  return ids


def generate_texts(
  model, prompts: Prompts, arch: str, width: int, new_tokens: int, own: Compiler, foreign: Compiler, **decoding
) -> tuple[list[str], list[str], int]:
  """(texts read by the CPU's compiler, texts read by the evaluation compiler, prompts truncated)."""
  batch, lengths, truncated = prompt_batch(prompts, arch, width)
  out = np.asarray(models.generate(model, batch, new_tokens, prompt_lengths=lengths, **decoding))
  own_texts, foreign_texts = [], []
  for row in out:
    ids = output_ids(row, arch, prompts.kind)
    own_texts.append(own.decode(ids))
    foreign_texts.append(foreign.decode_foreign(ids)[0])
  return own_texts, foreign_texts, truncated


def program_components(prompts: Prompts, greedy: Sequence[str], sampled: Sequence[str]) -> dict:
  by_task: dict[str, list[bool]] = {}
  for task, a, t in zip(prompts.tasks, greedy, prompts.references, strict=True):
    by_task.setdefault(task or "all", []).append(a.strip() == t.strip())
  em = exact_match(greedy, prompts.references)
  return {
    "exact_match": em,
    "exact_match_sampled": exact_match(sampled, prompts.references),
    "exact_match_by_task": {k: float(np.mean(v)) for k, v in sorted(by_task.items())},
    "chrf": chrf(greedy, prompts.references),
    "coherence": em,
  }
