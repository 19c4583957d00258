"""What every experiment shares: one protocol (plan → stages → report), the registry keyed by ``config.kind``, the
stage runner (train unless finished, else raise Stopped; progress and ETA) and the report writer.

Adding an experiment = one module here (a subclass of ``Experiment`` under ``@register("kind")``, imported by
``llmcpu/experiments/__init__.py``) and one config in configs/experiments/ that sets ``kind``.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import time
from collections.abc import Callable, Sequence

import ml_collections

from llmcpu import fs
from llmcpu.data import objectives as obj
from llmcpu.errors import Stopped, UserError
from llmcpu.training import checkpoints

REGISTRY: dict[str, type[Experiment]] = {}


def register(*kinds: str) -> Callable[[type[Experiment]], type[Experiment]]:
  """Class decorator: ``config.kind`` values that run this experiment."""

  def add(cls: type[Experiment]) -> type[Experiment]:
    for kind in kinds:
      if kind in REGISTRY:
        raise ValueError(f"experiment kind {kind!r} is registered twice ({REGISTRY[kind].__name__}, {cls.__name__})")
      REGISTRY[kind] = cls
    return cls

  return add


def lookup(config: ml_collections.ConfigDict) -> type[Experiment]:
  """The experiment class that ``config.kind`` names."""
  kinds = ", ".join(sorted(REGISTRY))
  kind = config.get("kind")
  if not kind:
    raise UserError(f"the experiment config sets no kind; set c.kind in its get_config() to one of {kinds}")
  if kind not in REGISTRY:
    raise UserError(f"unknown experiment kind {kind!r} (--config.kind); choose one of {kinds}")
  return REGISTRY[kind]


class Experiment(abc.ABC):
  """One experiment run on one workdir. ``run`` = ``plan`` (check every value of the config before anything is
  computed) → ``stages`` (compile, train, derive: resumable, each skipping what is done) → ``report`` (write it;
  returns {name: report directory}). ``stages`` returns False on a process that leaves the report to process 0."""

  kind: str = ""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, log: Callable[[str], None] = print):
    self.config, self.workdir, self.log = config, fs.abspath(workdir), log
    self.t0 = time.time()

  @abc.abstractmethod
  def plan(self) -> None: ...

  @abc.abstractmethod
  def stages(self) -> bool: ...

  @abc.abstractmethod
  def report(self) -> dict[str, str]: ...

  @abc.abstractmethod
  def printout(self, reports: dict[str, str]) -> str:
    """What scripts/experiment.py prints once the reports are written."""

  def run(self) -> dict[str, str]:
    self.plan()
    if not self.stages():
      return {}
    return self.report()


def run(config: ml_collections.ConfigDict, workdir: str, *, log: Callable[[str], None] = print) -> dict[str, str]:
  """Runs (or continues) the experiment ``config.kind`` names; returns {name: report directory}."""
  return lookup(config)(config, workdir, log=log).run()


# ------------------------------------------------------------------------------------------------- config values


def split_list(value: str, what: str) -> list[str]:
  items = [x.strip() for x in value.split(",") if x.strip()]
  if not items:
    raise UserError(f"experiment {what} is empty; give a comma-separated list")
  return items


def seed_list(value) -> list[int]:
  try:
    seeds = [int(x) for x in split_list(str(value), "seeds")]
  except ValueError as e:
    raise UserError(f"experiment seeds {value!r} must be comma-separated integers, e.g. --config.seeds=0,1,2") from e
  if any(x < 0 for x in seeds) or len(set(seeds)) != len(seeds):
    raise UserError(f"experiment seeds {value!r} must be distinct non-negative integers")
  return seeds


def step_list(value, what: str = "budgets") -> list[int]:
  """Sorted distinct step counts ≥ 0 (the budgets at which derived runs are saved and scored)."""
  try:
    steps = sorted({int(x) for x in split_list(str(value), what)})
  except ValueError:
    raise UserError(f"--config.{what}={value!r} must be comma-separated step counts, e.g. 0,10,30,100") from None
  if steps[0] < 0:
    raise UserError(f"--config.{what}={value!r} must be steps ≥ 0")
  return steps


# ------------------------------------------------------------------------------------------------- stages


def finished(path: str, steps: int) -> bool:
  """Whether the run at ``path`` has a checkpoint at ``steps`` or later."""
  try:
    return checkpoints.find(path)[1] >= steps
  except UserError:
    return False


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run of an experiment: ``train()`` (a ``trainer.TrainResult``) writes ``path`` up to ``steps``."""

  path: str
  steps: int
  tag: str  # what the progress lines and a Stopped message call it
  train: Callable[[], object]
  members: tuple[str, ...] = ()  # a group's other CPUs (training.group), trained with ``path`` by the same call
  config: ml_collections.ConfigDict | None = None  # the training config: a finished run is checked against it
  objective: str = ""  # the objective ``config`` trains (its options are compared as the trainer reads them)

  @property
  def paths(self) -> tuple[str, ...]:
    return (self.path, *self.members)


# Keys that say where a run lives or how it reports, not what it learns: a finished run may differ in them.
_NOT_DESIGN = {"data.compile_dir", "data.eval_split"} | {
  f"train.{k}" for k in ("log_every", "eval_every", "eval_batches", "peak_tflops", "memory_limit_gb", "memory_target")
}


def _plain(value):
  """A config value as its JSON round trip gives it back (a saved run's config is JSON)."""
  return json.loads(json.dumps(value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value))


def config_drift(saved: dict, wanted: ml_collections.ConfigDict, objective: str = "") -> list[str]:
  """What a finished run was trained with that ``wanted`` (the config the experiment would train it with today)
  changes, one 'key: run X, config Y' each: ``data``/``model``/``train`` keys both configs hold, and ``objective``'s
  training options (``data.pack_pairs``, ``data.pairs_per_row``, ...) as the trainer reads them, so that a key the
  run's config predates counts with the meaning it had then."""
  out = []
  for block in ("data", "model", "train"):
    have, want = saved.get(block, {}), wanted.get(block, {}) or {}
    for key in sorted(set(have) & set(want)):
      name = f"{block}.{key}"
      if name in _NOT_DESIGN or key.startswith("profile_") or have[key] == _plain(want[key]):
        continue
      out.append(f"{name}: run {have[key]!r}, config {want[key]!r}")
  pooled = bool(wanted.model.get("pool"))
  was, now = (
    obj.training_options(saved["data"], objective, pooled),
    obj.training_options(wanted.data, objective, pooled),
  )
  out += [f"{objective} {k}: run {was[k]!r}, config {now[k]!r}" for k in sorted(now) if was[k] != now[k]]
  return out


def run_stages(what: str, stages: Sequence[Stage], log: Callable[[str], None]) -> None:
  """Trains every stage not already at its final step, in order, with progress and an ETA (the mean wall time of the
  runs trained so far). A run that stops early (preempted, a signal) raises Stopped: rerunning continues it."""
  t0, trained = time.time(), 0
  for i, stage in enumerate(stages, 1):
    tag = f"[{i}/{len(stages)}] {stage.tag}"
    if all(finished(p, stage.steps) for p in stage.paths):  # a group is done when every member is
      drift = []
      if stage.config is not None:
        drift = config_drift(checkpoints.load_meta(stage.path)["config"], stage.config, stage.objective)
      say = f", but trained otherwise than this config says ({'; '.join(drift)}): kept as is; a new --workdir (or "
      log(f"== {what} {tag}: done" + (say + f"deleting {stage.path}) trains it as configured" if drift else ""))
      continue
    elapsed = time.time() - t0
    eta = f", ~{elapsed / trained * (len(stages) - i + 1):.0f}s left" if trained else ""
    log(f"== {what} {tag} (elapsed {elapsed:.0f}s{eta})")
    for path in stage.paths:
      fs.makedirs(path)
    result = stage.train()
    if result.stopped != "done":
      raise Stopped(f"stopped at step {result.step} of {tag} ({result.stopped}); rerun the same command to continue")
    trained += 1


# ------------------------------------------------------------------------------------------------- report


def write_report(
  out: str,
  rows: Sequence[dict],
  config: ml_collections.ConfigDict,
  seconds: float,
  *,
  texts: dict[str, str],
  figures: Callable[[], None] = lambda: None,
  default: Callable | None = str,
) -> None:
  """A report directory: ``texts`` (file name → text), ``figures()``, experiment.json (the config and the wall time)
  and results.jsonl, written last: a directory holding it is a finished report (the marker is removed first, so an
  interrupted rewrite never leaves the old one behind)."""
  fs.makedirs(out)
  fs.remove(fs.join(out, "results.jsonl"))
  for name, text in texts.items():
    fs.write_text(fs.join(out, name), text)
  figures()
  fs.write_text(fs.join(out, "experiment.json"), json.dumps({"config": config.to_dict(), "seconds": round(seconds)}))
  fs.write_text(fs.join(out, "results.jsonl"), "".join(json.dumps(r, default=default) + "\n" for r in rows))
