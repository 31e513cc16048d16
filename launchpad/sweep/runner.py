"""`lp.sweep`: many variants of a program at once, the losers stopped early.

A trial is a whole program (actors, learner, replay, ...), built by a
factory from the trial's parameters and launched with any launcher. Its
nodes report with `lp.report(step=..., **metrics)`; the sweep hands the
objective to the Optuna pruner, which may stop the trial's program early
(gracefully, `controller.stop()`), and to the sampler, which picks the next
trials' parameters. At most `parallel` trials run at once.

The sweep's process owns the study: trials run in threads that only run
their programs and pass events (reports, ends) to the sweep's thread, which
alone reports to Optuna, decides, and writes the sweep's files
(directory.py). `lp stop NAME` from another process asks it to stop
(directory.request_stop), as Ctrl-C or SIGTERM do. Everything is kept in the study's storage as it happens, so
a sweep killed with SIGKILL resumes when run again: finished trials are
kept, those it left running run again (study.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

from launchpad import context
from launchpad.program import Program
from launchpad.sweep import directory as directory_lib
from launchpad.sweep import plot, results
from launchpad.sweep import study as study_lib
from launchpad.sweep import trials as trials_lib
from launchpad.sweep.errors import SweepError, TrialFailedError
from launchpad.sweep.space import SEED, Space, load

# Why the sweep stops a trial's program.
PRUNED = "pruned"
INTERRUPTED = "interrupted"
# How often status.json is rewritten at most while only reports come in.
STATUS_SECONDS = 1.0
# How much of a failed trial's traceback the study keeps (its error.txt has it all).
MAX_ERROR_CHARS = 8000


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """How a sweep went.

  Attributes:
    name: the sweep's name.
    directory: the sweep's directory (results.csv, curves.png, trials/).
    trials: a row per trial (results.row): number, state, value, step,
      seed, params, seconds, directory, error.
    best: the row of the best complete trial, or None.
    stopped_by: the signal that interrupted the sweep, if one did (the
      trials it stopped run again when the sweep runs again).
    stop_request: what `lp stop NAME` said when it stopped the sweep, if it
      did (the trials it stopped run again as well).
  """

  name: str
  directory: pathlib.Path
  trials: list[dict[str, Any]]
  best: dict[str, Any] | None
  stopped_by: int | None = None
  stop_request: str | None = None

  @property
  def results_csv(self) -> pathlib.Path:
    return self.directory / directory_lib.RESULTS_FILE

  @property
  def curves_png(self) -> pathlib.Path:
    return self.directory / directory_lib.CURVES_FILE


def sweep(
  make_program: Callable[..., Program],
  space: Mapping[str, Any] | str | pathlib.Path | Space,
  *,
  trials: int | None = None,
  parallel: int = 1,
  launch_type: str | None = None,
  sampler: Any = None,
  pruner: Any = "none",
  storage: str | None = None,
  name: str | None = None,
  objective: str = "return",
  direction: str = "maximize",
  fail_fast: bool = False,
  sampler_seed: int = 0,
  sampler_options: Mapping[str, Any] | None = None,
  pruner_options: Mapping[str, Any] | None = None,
  trial_timeout: float | None = None,
  launch_options: Mapping[str, Any] | None = None,
  out: TextIO | None = None,
) -> SweepResult:
  """Runs trials of `make_program` over `space` until `trials` have ended.

  Args:
    make_program: the program factory: takes the trial's parameters as
      keyword arguments (and `seed`, if it has a parameter of that name and
      the space gives none: each trial's number) and returns a lp.Program.
    space: the search space: a TOML file's path or its contents as a
      mapping (launchpad.sweep.space says what it may hold).
    trials: how many trials to run to an end (complete, pruned or failed),
      counting those of earlier runs of the sweep; default: the grid's size
      with the grid sampler, else required.
    parallel: how many trials run at once.
    launch_type: the launcher of every trial (lp.launch's launch_type).
    sampler: 'grid' (default when every parameter has finitely many values),
      'random', 'tpe' (default otherwise), or an Optuna sampler.
    pruner: 'none', 'median', 'asha' (successive halving), 'hyperband', or an
      Optuna pruner.
    storage: a SQLAlchemy URL of the study's database; default: SQLite in
      the sweep's directory.
    name: the sweep's name, its directory's and its study's; running a sweep
      of the same name again resumes it. Default: the factory's module and
      the space file's name (or the factory's).
    objective: the metric (a keyword of lp.report) the sweep optimizes; a
      trial's value is the last one it reported.
    direction: 'maximize' or 'minimize' the objective.
    fail_fast: stop the sweep at the first trial that fails (raise
      TrialFailedError), instead of recording it and going on.
    sampler_seed: seeds the sampler (the grid's order, random and TPE draws).
    sampler_options, pruner_options: keyword arguments of the sampler's and
      the pruner's Optuna class, with a name; `patience` (and `min_delta`)
      among pruner_options wrap any pruner in Optuna's PatientPruner.
    trial_timeout: seconds a trial may run; then it is stopped and failed.
    launch_options: other keyword arguments of every trial's lp.launch
      (grace_period, hosts, ray_address, tls, local_resources, ...).
    out: where progress lines go (default stdout).

  Returns a SweepResult. Raises SweepError when the sweep cannot run as asked
  (nothing ran), and TrialFailedError (a SweepError) under `fail_fast`.
  """
  definition = _Definition.make(
    make_program,
    space,
    trials=trials,
    parallel=parallel,
    sampler=sampler,
    pruner=pruner,
    objective=objective,
    direction=direction,
    sampler_seed=sampler_seed,
    sampler_options=dict(sampler_options or {}),
    pruner_options=dict(pruner_options or {}),
    trial_timeout=trial_timeout,
  )
  name = directory_lib.check_name(name or default_name(make_program, space))
  runner = _Sweep(
    definition,
    directory_lib.create(name),
    storage,
    launch_type,
    dict(launch_options or {}),
    fail_fast,
    out or sys.stdout,
  )
  return runner.run()


def default_name(make_program: Callable[..., Any], space: Any) -> str:
  """`<module>-<space file>`, or `<module>-<function>` for a space given as a mapping."""
  module = getattr(make_program, "__module__", None) or "sweep"
  if module == "__main__":
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    module = pathlib.Path(main).stem if main else "main"
  module = module.rsplit(".", 1)[-1]
  if isinstance(space, str | pathlib.Path):
    second = pathlib.Path(space).stem
  else:
    second = getattr(make_program, "__name__", "sweep")
  return module if second == module else f"{module}-{second}"


@dataclasses.dataclass(frozen=True)
class _Definition:
  """What a sweep runs, checked; `record()` is what a resumed sweep must match."""

  factory: Callable[..., Program]
  space: Space
  trials: int
  parallel: int
  sampler: Any
  sampler_name: str
  pruner: Any
  pruner_name: str
  objective: str
  direction: str
  trial_timeout: float | None

  @classmethod
  def make(
    cls,
    factory: Callable[..., Program],
    space: Any,
    *,
    trials: int | None,
    parallel: int,
    sampler: Any,
    pruner: Any,
    objective: str,
    direction: str,
    sampler_seed: int,
    sampler_options: dict[str, Any],
    pruner_options: dict[str, Any],
    trial_timeout: float | None,
  ) -> _Definition:
    if not callable(factory):
      raise SweepError(f"make_program={factory!r} is not callable; give the program factory.")
    space = load(space)
    space.check_factory(factory)
    _check_count("parallel", parallel)
    if not isinstance(objective, str) or not objective.isidentifier():
      raise SweepError(
        f"objective={objective!r}: name the metric to optimize, a keyword of lp.report."
      )
    if direction not in study_lib.DIRECTIONS:
      raise SweepError(f"direction={direction!r}: use 'maximize' or 'minimize'.")
    if trial_timeout is not None and not trial_timeout > 0:
      raise SweepError(f"trial_timeout={trial_timeout!r}: give seconds above 0, or None.")
    if sampler is None:
      sampler = "grid" if all(p.grid() is not None for p in space.parameters.values()) else "tpe"
    made_sampler = study_lib.make_sampler(sampler, space, sampler_seed, sampler_options)
    sampler_name = sampler if isinstance(sampler, str) else type(sampler).__name__
    if trials is None:
      if sampler != "grid":
        raise SweepError(
          f"a {sampler_name} sweep has no natural end: give trials= (--trials N), how many to run."
        )
      trials = space.grid_size()
    _check_count("trials", trials)
    if sampler == "grid" and trials > space.grid_size():
      raise SweepError(
        f"trials={trials} is more than the grid's {space.grid_size()} points; leave it out to "
        "run every point once, or add values (more seeds, say) to the space."
      )
    return cls(
      factory,
      space,
      trials,
      parallel,
      made_sampler,
      sampler_name,
      study_lib.make_pruner(pruner, pruner_options),
      pruner if isinstance(pruner, str) else type(pruner).__name__,
      objective,
      direction,
      trial_timeout,
    )

  def record(self) -> dict[str, Any]:
    return {
      "space": self.space.describe(),
      "objective": self.objective,
      "direction": self.direction,
      "sampler": self.sampler_name,
      "pruner": self.pruner_name,
    }


def _check_count(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise SweepError(f"{name}={value!r}: give a whole number, 1 or more.")


@dataclasses.dataclass
class _Live:
  """A trial being run by this process, as the sweep's thread sees it."""

  trial: Any  # optuna.Trial
  run: trials_lib.TrialRun
  steps: set[int] = dataclasses.field(default_factory=set)  # objective steps told to Optuna
  value: float | None = None  # the last objective reported
  step: int | None = None  # the last step of any report
  metrics: set[str] = dataclasses.field(default_factory=set)  # every metric name reported


class _Sweep:
  """Runs one sweep, in the calling thread."""

  def __init__(
    self,
    definition: _Definition,
    directory: directory_lib.SweepDirectory,
    storage: str | None,
    launch_type: str | None,
    launch_options: dict[str, Any],
    fail_fast: bool,
    out: TextIO,
  ):
    self._definition = definition
    self._directory = directory
    self._storage = storage or directory.default_storage()
    self._launch_type = launch_type
    self._launch_options = launch_options
    self._fail_fast = fail_fast
    self._out = out
    self._events: queue.Queue = queue.Queue()
    self._live: dict[int, _Live] = {}
    self._ending: list[trials_lib.TrialRun] = []  # ended trials whose processes may be exiting
    self._launch_lock = threading.Lock()  # one lp.launch at a time (launchers share state)
    self._failed: tuple[int, str] | None = None  # the trial that ended a fail-fast sweep
    self._stopped_by: int | None = None
    self._stop_request: str | None = None
    self._stopping = False
    self._status_written = 0.0
    self._status_due = False
    self._started = time.time()
    self._study: study_lib.Study | None = None

  @property
  def name(self) -> str:
    return self._directory.name

  def run(self) -> SweepResult:
    definition = self._definition
    with self._directory.lock():
      self._directory.clear_stop_request()
      self._study = study_lib.open_study(
        self.name,
        self._storage,
        definition.space,
        definition.sampler,
        definition.pruner,
        definition.direction,
        definition.record(),
      )
      rerun = self._study.requeue_stale()
      if rerun:
        self._say(
          f"trials {', '.join(map(str, rerun))} were left running by a sweep process that is "
          "gone; their parameters run again"
        )
      self._say(
        f"{definition.trials} trials, {definition.parallel} at once, "
        f"{self._study.counted()} done before; directory {self._directory.path}"
      )
      self._write_status("running")
      with self._signals():
        self._loop()
      self._wait_for_exits()
      return self._finish()

  def _loop(self) -> None:
    while True:
      self._fill()
      if not self._live:
        return
      try:
        event = self._events.get(timeout=context.MAIN_THREAD_SLICE_SECONDS)
      except queue.Empty:
        event = None
      if event is not None:
        self._handle(event)
      if not self._stopping:
        self._stop_if_asked()
      if self._status_due and time.monotonic() - self._status_written >= STATUS_SECONDS:
        self._write_status("running")

  def _stop_if_asked(self) -> None:
    """Stops the running trials after a signal or `lp stop NAME`."""
    if self._stopped_by is not None:
      self._say(f"{signal.Signals(self._stopped_by).name}: stopping the running trials")
      self._stop_all()
      return
    self._stop_request = self._directory.stop_requested()
    if self._stop_request is not None:
      self._say(f"{self._stop_request}: stopping the running trials")
      self._stop_all()

  def _fill(self) -> None:
    """Starts trials until `parallel` run, unless enough have ended or the sweep stops."""
    definition = self._definition
    while (
      not self._stopping
      and len(self._live) < definition.parallel
      and self._study.counted() + len(self._live) < definition.trials
    ):
      self._start_trial()

  def _start_trial(self) -> None:
    trial, seed = self._study.ask()
    kwargs = dict(trial.params)
    if SEED not in kwargs and self._definition.space.passes_seed(self._definition.factory):
      kwargs[SEED] = seed
    where = self._directory.trial_directory(trial.number)
    trial.set_user_attr("directory", str(where))
    run = trials_lib.TrialRun(
      trial.number,
      kwargs,
      self._definition.factory,
      where,
      lambda program: self._launch(program, where),
      self._events,
      self._definition.trial_timeout,
    )
    self._live[trial.number] = _Live(trial, run)
    run.start()
    self._say(f"trial {trial.number} started: {results.params_text(kwargs)}")
    self._write_status("running")

  def _launch(self, program: Program, where: pathlib.Path) -> Any:
    from launchpad.launch import launch  # launchers load with the first trial, not with lp.sweep

    options = {"terminal": "output_to_files", **self._launch_options}
    with self._launch_lock:
      return launch(program, launch_type=self._launch_type, log_dir=where, **options)

  def _handle(self, event: trials_lib.Reported | trials_lib.Ended) -> None:
    if isinstance(event, trials_lib.Reported):
      self._reported(self._live[event.run.number], event.metrics)
    else:
      self._ending.append(event.run)
      self._ended(self._live.pop(event.run.number), event)

  def _reported(self, live: _Live, reports: list) -> None:
    objective = self._definition.objective
    told = False
    for report in reports:
      live.step = report.step
      live.metrics.update(report.values)
      value = report.values.get(objective)
      if value is None or not math.isfinite(value) or report.step in live.steps:
        continue
      live.trial.report(value, report.step)
      live.steps.add(report.step)
      live.value = value
      told = True
    self._status_due = True
    if told and live.run.stop_reason is None and live.trial.should_prune():
      self._say(
        f"trial {live.trial.number} pruned at step {live.step}: {objective} "
        f"{results.format_value(live.value)}; stopping its program"
      )
      live.run.stop(PRUNED)

  def _ended(self, live: _Live, event: trials_lib.Ended) -> None:
    trial, run = live.trial, live.run
    states = self._study.optuna.trial.TrialState
    trial.set_user_attr("times", run.times)
    if run.run_dir is not None:
      trial.set_user_attr("run_dir", str(run.run_dir))
    seconds = run.times["ended"] - run.times["launched"]
    error = event.error
    if run.stop_reason == PRUNED:
      self._study.study.tell(trial, state=states.PRUNED)
      return self._told(trial.number, "pruned", f"after {seconds:.1f} s")
    if run.stop_reason == INTERRUPTED:
      self._study.requeue(trial.number, trial.params)
      return self._told(trial.number, "interrupted", "it runs again when the sweep does")
    if event.how == trials_lib.STOPPED:  # the trial's timeout
      error = f"trial {trial.number} was stopped: {run.stop_reason}."
    elif event.how == trials_lib.ENDED and live.value is None:
      said = ", ".join(sorted(live.metrics)) or "nothing (no lp.report call reached the sweep)"
      error = (
        f"trial {trial.number}'s nodes reported no {self._definition.objective!r} (they "
        f"reported: {said}); call lp.report(step=..., {self._definition.objective}=...) in a "
        "node, or give the sweep the objective they report."
      )
    if error:
      trial.set_user_attr("error", error[-MAX_ERROR_CHARS:])
      self._study.study.tell(trial, state=states.FAIL)
      first = error.strip().splitlines()[0]
      self._told(
        trial.number, "failed", f"{first} (all of it in {run.directory / trials_lib.ERROR_FILE})"
      )
      if self._fail_fast and self._failed is None:
        self._failed = (trial.number, error)
        self._say("--fail-fast: stopping the sweep")
        self._stop_all()
      return None
    self._study.study.tell(trial, live.value)
    return self._told(
      trial.number,
      "complete",
      f"{self._definition.objective} {results.format_value(live.value)} at step {live.step} "
      f"({seconds:.1f} s)",
    )

  def _told(self, number: int, state: str, detail: str) -> None:
    self._say(f"trial {number} {state}: {detail}")
    table = self._table()
    results.write_csv(self._directory.results_path, table, self._definition.objective)
    self._write_status("running", table)

  def _wait_for_exits(self) -> None:
    """Waits for the processes of ended trials to exit: none outlives the sweep."""
    deadline = time.monotonic() + trials_lib.TEARDOWN_SECONDS + 10.0
    for run in self._ending:
      if not run.join(max(0.0, deadline - time.monotonic())):
        self._say(f"trial {run.number}: its program has not ended; leaving it")

  def _stop_all(self) -> None:
    self._stopping = True
    for live in self._live.values():
      live.run.stop(INTERRUPTED)

  @contextlib.contextmanager
  def _signals(self) -> Iterator[None]:
    """The first SIGINT or SIGTERM stops the running trials gracefully (they run
    again when the sweep runs again); a second one ends the process at once."""
    if threading.current_thread() is not threading.main_thread():
      yield
      return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
      if self._stopped_by is not None:
        os._exit(128 + signum)
      self._stopped_by = signum

    for sig in previous:
      signal.signal(sig, handler)
    try:
      yield
    finally:
      for sig, before in previous.items():
        signal.signal(sig, before)

  def _table(self) -> list[dict[str, Any]]:
    return results.rows(self._study.trials(), self._study.stale)

  def _write_status(self, state: str, table: list[dict[str, Any]] | None = None) -> None:
    table = self._table() if table is None else table
    definition = self._definition
    self._directory.write_status(
      {
        "name": self.name,
        "state": state,
        "owner": study_lib.owner(),
        "started": self._started,
        "updated": time.time(),
        "objective": definition.objective,
        "direction": definition.direction,
        "trials": definition.trials,
        "parallel": definition.parallel,
        "mode": self._launch_type or "",
        "sampler": definition.sampler_name,
        "pruner": definition.pruner_name,
        "counts": results.counts(table),
        "best": results.best(table, definition.direction),
        "rows": table,
      }
    )
    self._status_written = time.monotonic()
    self._status_due = False

  def _finish(self) -> SweepResult:
    definition = self._definition
    table = self._table()
    best = results.best(table, definition.direction)
    results.write_csv(self._directory.results_path, table, definition.objective)
    if self._stopped_by is not None or self._stop_request is not None:
      state = "interrupted"
    elif self._failed is not None:
      state = "failed"
    else:
      state = "finished"
    self._write_status(state, table)
    drawn = plot.save_curves(
      self._directory.curves_path,
      self._study.trials(),
      table,
      definition.objective,
      f"sweep {self.name}: {definition.objective} of every trial",
      best,
      [n for n, p in definition.space.parameters.items() if p.grid() is None or len(p.grid()) > 1],
    )
    counts = results.counts(table)
    summary = ", ".join(f"{counts[s]} {s}" for s in sorted(counts))
    self._say(f"{state} after {time.time() - self._started:.1f} s: {summary}")
    if best is not None:
      self._say(
        f"best: trial {best['number']}, {definition.objective} "
        f"{results.format_value(best['value'])}: {results.params_text(best['params'])}"
      )
    self._say(f"results: {self._directory.results_path}")
    if drawn:
      self._say(f"curves: {self._directory.curves_path}")
    else:
      self._say("no curves.png: matplotlib is not installed (pip install matplotlib)")
    if self._failed is not None:
      number, error = self._failed
      raise TrialFailedError(number, error)
    return SweepResult(
      self.name, self._directory.path, table, best, self._stopped_by, self._stop_request
    )

  def _say(self, line: str) -> None:
    self._out.write(f"lp sweep {self.name}: {line}\n")
    self._out.flush()
