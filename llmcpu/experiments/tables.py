"""The Markdown every experiment report writes: a figure with its spread, table rows and rules."""

from __future__ import annotations

from collections.abc import Sequence

from llmcpu.crosseval.intervals import describe


def fmt(
  value: float | None,
  *,
  std: float | None = None,
  ci: Sequence[float] | None = None,
  info: dict | None = None,
  digits: int = 3,
  missing: str = "—",
) -> str:
  """``value ± std`` (a spread over seeds), else ``value (lo–hi, K clusters)`` (an interval, with what
  ``intervals.describe`` reads from its ``info``), else ``value``; ``missing`` for None."""
  if value is None:
    return missing
  if std is not None:
    return f"{value:.{digits}f} ± {std:.{digits}f}"
  if ci:
    return f"{value:.{digits}f}{describe(ci, info, digits)}"
  return f"{value:.{digits}f}"


def fmt_key(row: dict | None, key: str, digits: int = 3) -> str:
  """A row's figure ``key`` with its interval ``key_ci`` when it has one; — when the row or the figure is missing."""
  if row is None:
    return "—"
  return fmt(row.get(key), ci=row.get(f"{key}_ci"), info=row.get(f"{key}_ci_info"), digits=digits)


def row(cells: Sequence[str]) -> str:
  """``| a | b | c |``."""
  return "| " + " | ".join(cells) + " |"


def rule(text_columns: int, number_columns: int) -> str:
  """The header rule: left-aligned text columns, then right-aligned number columns."""
  return "|---" * text_columns + "|" + "---:|" * number_columns
