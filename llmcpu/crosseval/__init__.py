"""Cross-ISA evaluation: run machine code compiled for one ISA on CPUs trained on another.

``evaluate(checkpoints, isas, compile_dir)`` scores every checkpoint on every evaluation ISA's compiled test split,
fed as is, and returns one row per cell; ``calibrate(compile_dir, corpus, isas)`` scores the coherence axes on
references whose answer is known; ``write_report(rows, out_dir, calibration)`` writes results.jsonl,
calibration.jsonl, the matrices (Markdown, CSV, LaTeX, heatmaps) and summary.md.

Row keys (``status == "ok"``): ``arch model_isa eval_isa corpus split native`` and provenance (``checkpoint step
model_fingerprint eval_fingerprint model_isa_spec eval_isa_spec model_vocab eval_vocab documents ids bytes
scored_tokens scored_bytes bytes_per_token byte_context unk_rate objective seconds xla_compiles seed``); metrics
``bits_per_byte bpb_uniform bpb_unigram bpb_matched normalized_score token_accuracy illegal_rate illegal_ids
illegal_targets illegal_inputs illegal_policy misread_rate isa_overlap``; decoders and encoder-decoders
``fluency relevance coherence`` with their parts (prose: ``judge_bpb_generated judge_bpb_real lexical_validity
distinct_2 repetition pmi_per_byte pmi_per_byte_real fluency_plausibility fluency_lexical fluency_distinct
fluency_novel chrf chrf_eval_reading empty_generations relevance_beyond_tail head_swap_pmi_per_byte
head_swap_pmi_per_byte_real relevance_beyond_tail_judge relevance_beyond_copying copy_rate copy_rate_real
pmi_beyond_tail_per_byte pmi_beyond_tail_per_byte_real new_tokens prompt_bytes_mean
outputs_short``; programs: ``exact_match exact_match_sampled exact_match_by_task exact_match_eval_reading``),
``prompts`` and ``samples``, and on native cells
``shuffled_prompt`` (the same figures with the prompt's ids shuffled); encoders ``representation_agreement``.
Intervals: ``<metric>_ci`` = [lo, hi], 95% bootstrap over documents resampled by cluster (``intervals.py``), for bits
per byte, normalized score, fluency, relevance, coherence, exact match and (prose) relevance beyond the tail, relevance
beyond copying and copy rate, with ``<metric>_ci_info`` (``clusters``, ``undefined`` resamples of ``resamples``;
``clusters`` alone: the cell's documents' clusters); relevance and relevance beyond the tail also have ``_ci90`` and
their equivalence-test verdicts (``relevance_verdict``) at ``equivalence_margin``. Failed cells:
``status == "failed"`` and a one-line ``error``.
"""

from llmcpu.crosseval.evaluate import CrossEvalOptions, LoadedModel, ModelEvaluator, calibrate, evaluate
from llmcpu.crosseval.report import load_rows, markdown_table, matrix, write_report

__all__ = [
  "CrossEvalOptions",
  "LoadedModel",
  "ModelEvaluator",
  "calibrate",
  "evaluate",
  "load_rows",
  "markdown_table",
  "matrix",
  "write_report",
]
