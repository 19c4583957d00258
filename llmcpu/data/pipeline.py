"""Input pipeline: batches of compiled ids by step, with random access instead of replay.

``Pipeline.batch(step)`` builds exactly the rows of that step: global row ``g = step * global_batch + i`` lives in
epoch ``g // rows_per_epoch`` at row ``g % rows_per_epoch``, and an epoch's document order is a permutation
seeded by ``(seed, epoch)``. Resuming at step s therefore costs one epoch permutation and one batch, and the
same seed gives the same bits on any number of processes: process p of P gets rows ``[p*B/P, (p+1)*B/P)`` of
each global batch.

Batch keys (all int32 except ``weights``/``decoder_weights``/``target_bytes``/``content``, float32):

- ``lm``, ``lm_targets``, ``mlm``: ``inputs targets weights segment_ids positions target_bytes``, ``[B, length]``;
  ``lm`` and ``lm_targets`` also ``content`` (1.0 on the targets bits per byte counts, by the ISA's own roles:
  an ISA from a tokenizer file has its specials where the file puts them, so the loss cannot tell them by id).
- ``seq2seq``, ``span_corruption``, ``prefix_lm``: ``encoder_inputs encoder_segment_ids encoder_positions``
  ``[B, input_length]`` and ``decoder_inputs decoder_targets decoder_weights decoder_segment_ids
  decoder_positions target_bytes`` ``[B, target_length]``.
- with ``document_ids=True`` also ``target_docs`` (shaped like ``target_bytes``), for evaluation only.

``target_bytes`` is the UTF-8 bytes of each *content* target's piece (a document's own id that is scored: not EOS,
PAD, BOS, MASK or a sentinel; UNK counts 0) and 0 elsewhere, taken from the split's ``piece_bytes``. Bits per byte
of any window is therefore exact: Σ NLL over content targets / (ln 2 · Σ target_bytes), and never more than the
bits per content token divided by the fewest bytes of a content token in the window. ``target_docs`` holds the
index in the split of each content target's document and −1 elsewhere (per-document statistics).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from llmcpu.data import compiled
from llmcpu.data import objectives as obj
from llmcpu.data.compiled import CompiledSplit
from llmcpu.errors import UserError

_ORDER_TAG = 0  # epoch orders are seeded by (seed, _ORDER_TAG, epoch); in-row randomness by (seed, 1, global row).


def bytes_per_token(split: CompiledSplit, field: str = "text") -> float:
  """Raw UTF-8 bytes per token of one field (how much text one id of this ISA carries)."""
  f = split.fields[field]
  return float(f.nbytes.sum() / max(1, len(f.tokens)))


def split_summary(split: CompiledSplit) -> dict:
  """Documents, tokens and bytes of each field of a split."""
  fields = {
    name: {"tokens": int(len(f.tokens)), "bytes": int(f.nbytes.sum()), "bytes_per_token": bytes_per_token(split, name)}
    for name, f in split.fields.items()
  }
  return {"docs": split.num_docs, "kind": split.kind, "fields": fields}


def _document_fields(split: CompiledSplit) -> list[str]:
  """What a packed document is made of: prose ``text``, or a program's ``input`` then ``target``."""
  return ["text"] if split.kind == "text" else ["input", "target"]


def _make_objective(
  split: CompiledSplit, objective: str, seed: int, length: int, input_length: int, target_length: int, options: dict
) -> obj.Objective:
  if objective not in obj.NAMES:
    raise UserError(f"unknown objective {objective!r}; choose one of {', '.join(obj.NAMES)}")
  if objective in obj.TEXT_ONLY and split.kind != "text":
    raise UserError(f"objective {objective!r} needs a prose split (field 'text'); for input/target pairs use seq2seq")
  if objective in obj.PAIRS_ONLY and split.kind != "seq2seq":
    raise UserError(f"objective {objective!r} needs an input/target split (e.g. programs); for prose use lm or mlm")
  if not split.roles.own and objective == "span_corruption":
    raise UserError(
      f"objective span_corruption needs the project's sentinel ids; ISA {split.manifest.get('compiler', '?')} comes "
      "from an existing tokenizer file: train its encoder-decoder with prefix_lm (prose) or seq2seq (pairs)"
    )
  fields = _document_fields(split)
  builders = {
    "lm": lambda **o: obj.CausalLM(split, fields, length, **o),
    "lm_targets": lambda **o: obj.CausalLM(split, fields, length, weight_fields=["target"], **o),
    "mlm": lambda **o: obj.MaskedLM(split, fields, length, seed, **o),
    "seq2seq": lambda **o: obj.Seq2Seq(split, input_length, target_length, seed=seed, **o),
    "reconstruct": lambda **o: obj.Seq2Seq(compiled.reconstruction(split), input_length, target_length, seed=seed, **o),
    "span_corruption": lambda **o: obj.SpanCorruption(split, input_length, target_length, seed, **o),
    "prefix_lm": lambda **o: obj.PrefixLM(split, input_length, target_length, seed, **o),
  }
  allowed = {
    "lm": set(),
    "lm_targets": set(),
    "mlm": {"mask_rate", "mask_token_rate", "random_token_rate"},
    "seq2seq": {"truncate", "pack_tokens"},
    "reconstruct": {"truncate", "pack_tokens"},
    "span_corruption": {"noise_density", "mean_noise_span_length"},
    "prefix_lm": {
      "pairs_per_row",
      "head_weight",
      "head_bytes",
      "curriculum_rows",
      "curriculum_bytes",
      "context_bytes",
      "tail_weight",
      "tail_dropout",
      "pack_windows",
    },
  }[objective]
  unknown = sorted(set(options) - allowed)
  if unknown:
    raise UserError(f"objective {objective!r} takes no option {', '.join(unknown)} (options: {sorted(allowed)})")
  return builders[objective](**options)


class Pipeline:
  """Batches of one split for one objective; ``batch(step)`` is a pure function of (split, config, step).

  The split must carry ``piece_bytes`` (``llmcpu.toolchain.load_split`` fills them). ``document_ids=True`` adds
  ``target_docs`` to every batch, for evaluation; training pipelines leave it off.
  """

  def __init__(
    self,
    split: CompiledSplit,
    *,
    objective: str,
    global_batch: int,
    seed: int,
    length: int = 0,
    input_length: int = 0,
    target_length: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
    document_ids: bool = False,
    **objective_options,
  ):
    if global_batch < 1 or process_count < 1 or global_batch % process_count:
      raise UserError(f"global_batch={global_batch} must be a positive multiple of process_count={process_count}")
    if not 0 <= process_index < process_count:
      raise UserError(f"process_index={process_index} is outside [0, {process_count})")
    if seed < 0:
      raise UserError(f"seed must be non-negative (got {seed})")
    if split.num_docs == 0:
      raise UserError("the split has no documents; check the corpus and recompile it")
    self.split, self.objective_name, self.seed, self.shuffle = split, objective, seed, shuffle
    self.document_ids = document_ids
    self.global_batch, self.process_index, self.process_count = global_batch, process_index, process_count
    if "curriculum_steps" in objective_options:  # in steps for the user, in global rows for the objective
      objective_options["curriculum_rows"] = int(objective_options.pop("curriculum_steps")) * global_batch
    self.objective = _make_objective(split, objective, seed, length, input_length, target_length, objective_options)
    self.rows_per_epoch = self.objective.rows_per_epoch
    if self.rows_per_epoch < 1:
      raise UserError(f"the split has no tokens to build {objective!r} rows from; check the corpus")
    self.local_batch = global_batch // process_count
    self.steps_per_epoch = -(-self.rows_per_epoch // global_batch)  # the last step of an epoch may reach the next
    self._states: dict[int | None, object] = {}

  def _epoch_state(self, epoch: int | None) -> object:
    """The objective's state for an epoch's document order (``None``: corpus order); keeps the last two."""
    if epoch not in self._states:
      n = self.objective.num_docs
      order = np.arange(n) if epoch is None else np.random.default_rng([self.seed, _ORDER_TAG, epoch]).permutation(n)
      if len(self._states) >= 2:
        self._states.pop(next(iter(self._states)))
      self._states[epoch] = self.objective.epoch_state(order)
    return self._states[epoch]

  def _local_rows(self, step: int) -> np.ndarray:
    if step < 0:
      raise UserError(f"step must be non-negative (got {step})")
    first = step * self.global_batch + self.process_index * self.local_batch
    return first + np.arange(self.local_batch, dtype=np.int64)

  def _rows(self, g_R: np.ndarray, *, shuffle: bool, one_pass: bool = False) -> dict[str, np.ndarray]:
    """Rows at global indices ``g`` (ascending); with ``one_pass`` rows past the first epoch are all padding."""
    epoch_R, r_R = np.divmod(g_R, self.rows_per_epoch)
    parts = []
    for e in np.unique(epoch_R):
      sel = epoch_R == e
      state = self._epoch_state(int(e) if shuffle else None)
      parts.append(self.objective.rows(state, r_R[sel], g_R[sel]))
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if not self.document_ids:
      del batch["target_docs"]
    if one_pass:
      past_R = epoch_R > 0
      for k, v in batch.items():
        v[past_R] = -1 if k == "target_docs" else 0
    return batch

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the global batch at ``step``: ``[global_batch // process_count, …]``."""
    return self._rows(self._local_rows(step), shuffle=self.shuffle)

  def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """``batch(start_step)``, ``batch(start_step + 1)``, … forever."""
    for step in itertools.count(start_step):
      yield self.batch(step)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self.iterate(0)

  @property
  def eval_steps(self) -> int:
    return self.steps_per_epoch

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the split in corpus order (no shuffle); rows past its end are padding with zero weights.

    Every process yields ``eval_steps`` batches, so collective ops stay in step across processes.
    """
    for step in range(self.eval_steps):
      yield self._rows(self._local_rows(step), shuffle=False, one_pass=True)

  def summary(self) -> dict:
    """The split's documents/tokens/bytes and the objective's rows, steps and fill (real tokens per slot)."""
    return dict(
      split_summary(self.split),
      objective=self.objective_name,
      rows_per_epoch=self.rows_per_epoch,
      steps_per_epoch=self.steps_per_epoch,
      **self.objective.stats(),
    )
