"""The Optuna side of a sweep: samplers, pruners, the study in its storage,
and the trials that a sweep which died left behind.

Optuna is an optional dependency (`pip install 'launchpad-rl[sweep]'`),
imported only when a sweep runs. Its samplers (GridSampler, RandomSampler,
TPESampler) choose each trial's parameters and its pruners (MedianPruner,
SuccessiveHalvingPruner, HyperbandPruner, and PatientPruner around any of
them) decide which trials to stop; its RDB storage (SQLite in the sweep's
directory unless another SQLAlchemy URL is given) keeps every trial, so a
sweep run again picks up where it was.

A trial left RUNNING by a sweep process that is gone (SIGKILL, a crash, a
lost host) is stale: when the sweep runs again it is marked failed, its
number kept in the study's `stale_trials`, and its parameters queued to run
again; stale trials do not count towards the sweep's trials.
"""

from __future__ import annotations

import inspect
import os
import socket
import warnings
from collections.abc import Mapping
from typing import Any

import psutil

from launchpad.sweep.errors import SweepError
from launchpad.sweep.space import SEED, Space

EXTRA = "launchpad-rl[sweep]"
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "asha", "hyperband")
# Options of any pruner: they wrap it in Optuna's PatientPruner (make_pruner).
PATIENCE_OPTIONS = ("patience", "min_delta")
# An option of asha: its promotions hold only while they still rank (reranking.py).
RERANK_OPTION = "rerank"
DIRECTIONS = ("maximize", "minimize")
# How long a call waits for an SQLite database another process holds locked.
SQLITE_LOCK_SECONDS = 60.0
# The study's user attributes kept by the sweep.
DEFINITION_ATTR = "launchpad_sweep"
STALE_ATTR = "stale_trials"


def import_optuna() -> Any:
  """The optuna module, or SweepError saying how to install it."""
  try:
    import optuna
  except ImportError as e:
    raise SweepError(
      f"sweeps use Optuna, which cannot be imported here ({e}); install it with "
      f"pip install '{EXTRA}'."
    ) from None
  return optuna


def make_sampler(choice: Any, space: Space, seed: int, options: Mapping[str, Any]) -> Any:
  """An Optuna sampler: one of SAMPLERS by name (built with `seed` and
  `options`), or a sampler object given as is."""
  optuna = import_optuna()
  if not isinstance(choice, str):
    if not isinstance(choice, optuna.samplers.BaseSampler):
      raise SweepError(
        f"sampler={choice!r}: give one of {', '.join(SAMPLERS)} or an Optuna sampler."
      )
    return choice
  if choice == "grid":
    return _construct(
      _grid_sampler_class(optuna), "sampler grid", search_space=space.grid(), seed=seed, **options
    )
  classes = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler}
  if choice not in classes:
    raise SweepError(f"unknown sampler {choice!r}; use one of {', '.join(SAMPLERS)}.")
  return _construct(classes[choice], f"sampler {choice}", seed=seed, **options)


def make_pruner(choice: Any, options: Mapping[str, Any]) -> Any:
  """An Optuna pruner: one of PRUNERS by name (built with `options`), or a
  pruner object given as is.

  `patience` (and `min_delta`) among the options wrap it in Optuna's
  PatientPruner: the pruner is asked about a trial only once its best value
  of its last patience + 1 reports is worse than its best before them (by
  more than min_delta), so a trial that is still improving goes on.
  `rerank=true` with asha ranks a trial again at every report
  (reranking.py).
  """
  optuna = import_optuna()
  options = dict(options)
  patience = {k: options.pop(k) for k in PATIENCE_OPTIONS if k in options}
  if patience and "patience" not in patience:
    raise SweepError("min_delta applies to patience: give patience=N (reports) with it.")
  rerank = options.pop(RERANK_OPTION, None)
  pruner = _named_pruner(optuna, choice, options)
  if rerank is not None:
    pruner = _reranking(choice, rerank, pruner, options)
  if not patience:
    return pruner
  with warnings.catch_warnings():  # Optuna calls it experimental; the options here stay
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    try:
      return optuna.pruners.PatientPruner(pruner, **patience)
    except (TypeError, ValueError) as e:
      raise SweepError(
        f"pruner options {patience} refused: {e} Give patience as a whole number of reports "
        ">= 0 and min_delta >= 0."
      ) from None


def _reranking(choice: Any, rerank: Any, pruner: Any, options: Mapping[str, Any]) -> Any:
  """`pruner` (asha's) ranking trials again at every report; SweepError for
  any other pruner or a value of rerank other than true or false."""
  if choice != "asha" or not isinstance(rerank, bool):
    raise SweepError(
      f"rerank={rerank!r}: rerank is an option of the pruner asha, true or false "
      f"(--pruner asha --pruner-arg rerank=true), not of {choice!r}."
    )
  if not rerank:
    return pruner
  from launchpad.sweep.reranking import ReRankingPruner  # imports Optuna

  # The rungs as `pruner` was built: its options, else SuccessiveHalvingPruner's defaults.
  defaults = inspect.signature(type(pruner)).parameters
  rung = {
    name: options.get(name, defaults[name].default)
    for name in ("min_resource", "reduction_factor", "min_early_stopping_rate")
  }
  return ReRankingPruner(pruner, **rung)


def _named_pruner(optuna: Any, choice: Any, options: Mapping[str, Any]) -> Any:
  if not isinstance(choice, str):
    if not isinstance(choice, optuna.pruners.BasePruner):
      raise SweepError(f"pruner={choice!r}: give one of {', '.join(PRUNERS)} or an Optuna pruner.")
    if options:
      raise SweepError(
        f"pruner options {sorted(options)} apply to a pruner given by name; an Optuna pruner "
        "object comes built."
      )
    return choice
  classes = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "asha": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
  }
  if choice not in classes:
    raise SweepError(f"unknown pruner {choice!r}; use one of {', '.join(PRUNERS)}.")
  return _construct(classes[choice], f"pruner {choice}", **options)


def _construct(cls: type, what: str, **kwargs: Any) -> Any:
  try:
    return cls(**kwargs)
  except (TypeError, ValueError) as e:
    names = [n for n in inspect.signature(cls).parameters if n not in ("self", "search_space")]
    raise SweepError(
      f"{what} ({cls.__name__}) refuses its options {sorted(kwargs)}: {e}; it takes "
      f"{', '.join(names) or 'none'}."
    ) from None


def _grid_sampler_class(optuna: Any) -> type:
  """GridSampler, minus its call of study.stop() once the grid is covered:
  that call is only allowed inside study.optimize, and a sweep asks for each
  trial itself (Study.ask), counting them against the grid."""

  class GridSampler(optuna.samplers.GridSampler):
    def after_trial(self, study, trial, state, values) -> None:
      pass

  return GridSampler


def distributions(space: Space) -> dict[str, Any]:
  """The Optuna distribution of each parameter."""
  optuna = import_optuna()
  made = {}
  for name, p in space.parameters.items():
    if p.kind == "choice":
      made[name] = optuna.distributions.CategoricalDistribution(list(p.values))
    elif p.kind == "int":
      made[name] = optuna.distributions.IntDistribution(p.low, p.high, log=p.log, step=p.step or 1)
    else:
      made[name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
  return made


def owner() -> dict[str, Any]:
  """Who runs a trial: this process, on this host, started then (a pid can be reused)."""
  return {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "started": psutil.Process().create_time(),
  }


def owner_is_gone(who: Any) -> bool:
  """True if the process `who` (an `owner()`) has ended; False while it runs,
  and for a process on another host, which this one cannot see."""
  if not isinstance(who, dict) or who.get("host") != socket.gethostname():
    return not isinstance(who, dict)
  try:
    process = psutil.Process(who["pid"])
    return abs(process.create_time() - who["started"]) > 1.0
  except (psutil.Error, KeyError, TypeError):
    return True


class Study:
  """The sweep's Optuna study, opened by `open_study`."""

  def __init__(self, study: Any, space: Space):
    self.optuna = import_optuna()
    self.study = study
    self._space = space
    self._distributions = distributions(space)

  @property
  def stale(self) -> set[int]:
    """The numbers of the trials that ended with a sweep process, not by themselves."""
    return set(self.study.user_attrs.get(STALE_ATTR, []))

  def requeue_stale(self) -> list[int]:
    """Marks the RUNNING trials of sweep processes that are gone as failed and
    stale, and queues their parameters again; their numbers."""
    gone = [
      trial
      for trial in self.study.get_trials(
        deepcopy=False, states=(self.optuna.trial.TrialState.RUNNING,)
      )
      if owner_is_gone(trial.user_attrs.get("owner"))
    ]
    for trial in gone:
      self.requeue(trial.number, trial.params)
    return [trial.number for trial in gone]

  def requeue(self, number: int, params: dict[str, Any]) -> None:
    """Ends trial `number` as stale (it did not run to its end) and queues its
    parameters to run again."""
    states = {trial.number: trial.state for trial in self.study.get_trials(deepcopy=False)}
    if states[number] == self.optuna.trial.TrialState.RUNNING:
      self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
    self.study.set_user_attr(STALE_ATTR, sorted(self.stale | {number}))
    self.study.enqueue_trial(params, user_attrs={"rerun_of": number}, skip_if_exists=False)

  def counted(self) -> int:
    """How many trials ran to an end of their own (complete, pruned or failed)."""
    stale = self.stale
    return sum(
      1
      for trial in self.study.get_trials(deepcopy=False)
      if trial.state.is_finished() and trial.number not in stale
    )

  def ask(self) -> tuple[Any, int]:
    """A new trial (a queued one first) with its parameters chosen, and its seed."""
    trial = self.study.ask(self._distributions)
    trial.set_user_attr("owner", owner())
    seed = trial.params.get(SEED, trial.number)
    trial.set_user_attr("seed", seed)
    return trial, seed

  def trials(self) -> list[Any]:
    return self.study.get_trials(deepcopy=False)


def open_study(
  name: str,
  url: str,
  space: Space,
  sampler: Any,
  pruner: Any,
  direction: str,
  definition: dict[str, Any],
) -> Study:
  """Creates the study `name` in the storage at `url`, or loads it if it is
  there; a study made for another definition (space, objective, direction,
  sampler, pruner) is refused, naming what differs."""
  optuna = import_optuna()
  if direction not in DIRECTIONS:
    raise SweepError(f"direction={direction!r}: use 'maximize' or 'minimize'.")
  storage = _storage(optuna, url)
  try:
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
  except KeyError:
    study = optuna.create_study(
      study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction=direction
    )
    study.set_user_attr(DEFINITION_ATTR, definition)
  recorded = study.user_attrs.get(DEFINITION_ATTR)
  if recorded is None:
    raise SweepError(
      f"the storage {url} holds a study {name!r} that no lp sweep made; give the sweep another "
      "name (--name) or another storage (--storage)."
    )
  differences = [
    key
    for key in sorted(set(recorded) | set(definition))
    if recorded.get(key) != definition.get(key)
  ]
  if differences:
    said = "; ".join(
      f"{key}: {recorded.get(key)!r} then, {definition.get(key)!r} now" for key in differences
    )
    raise SweepError(
      f"sweep {name} was started with another {', '.join(differences)} ({said}); run it again "
      "with the same ones to resume it, or give another --name to start a new sweep."
    )
  return Study(study, space)


def _storage(optuna: Any, url: str) -> Any:
  sqlite = url.startswith("sqlite")
  engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_SECONDS}} if sqlite else {}
  try:
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    if sqlite:
      _quick_commits(storage.engine)
    return storage
  except Exception as e:  # noqa: BLE001 - SQLAlchemy and every database driver raise their own
    raise SweepError(
      f"cannot open the storage {url} ({type(e).__name__}: {e}); give --storage a SQLAlchemy URL "
      "such as sqlite:////path/to/study.db, or leave it out to keep the study in the sweep's "
      "directory."
    ) from None


def _quick_commits(engine: Any) -> None:
  """SQLite in write-ahead-log mode with synchronous=NORMAL: a commit appends
  to the log without waiting for the disk (a trial's start and end take a
  dozen commits). A process killed, even with SIGKILL, loses nothing it
  committed; only a power cut may lose the last commits."""
  import sqlalchemy

  def configure(connection: Any, record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()

  sqlalchemy.event.listen(engine, "connect", configure)
  engine.dispose()  # connections made already reconnect, configured
