"""`lp sweep` and lp.sweep as real processes over a real SQLite store: trials
in processes of their own, K at once, pruning that stops a whole program,
a SIGKILLed sweep that resumes, failing trials, and refusals of bad input."""

from __future__ import annotations

import csv
import os
import pathlib
import re
import signal
import subprocess
import sys

import cloudpickle
import optuna
import pytest

import launchpad as lp
from launchpad.sweep import SweepError
from tests.sweep import programs
from tests.sweep.conftest import (
  PROGRAMS,
  TIMEOUT,
  assert_gone,
  processes_with,
  runs_of,
  status_of,
  wait_until,
  write_space,
)

cloudpickle.register_pickle_by_value(programs)  # node processes need not import the tests

STARTED = re.compile(r"^lp sweep \S+: trial (\d+) started: (.*)$")


def results(home: pathlib.Path, name: str) -> list[dict[str, str]]:
  with (home / "sweeps" / name / "results.csv").open() as f:
    return list(csv.DictReader(f))


def study(home: pathlib.Path, name: str) -> optuna.Study:
  """The sweep's study, read from its SQLite file as any Optuna user would."""
  return optuna.load_study(study_name=name, storage=f"sqlite:///{home}/sweeps/{name}/study.db")


def test_grid_sweep_of_processes_two_at_a_time(lp, tmp_path, runs_dir, launchpad_home):
  space = write_space(
    tmp_path / "space.toml", f'x = [1.0, 2.0, 3.0, 4.0]\nruns_dir = "{runs_dir}"\n'
  )
  sweep = lp("sweep", PROGRAMS, "--space", space, "--parallel", "2", "--objective", "score")
  assert sweep.finish() == 0, sweep.output()
  out = sweep.out()
  assert runs_of(runs_dir) == {"x=1": 1, "x=2": 1, "x=3": 1, "x=4": 1}
  # Trials ran two at a time: the third started only after one had ended.
  events = re.findall(r"trial \d+ (started|complete)", out)
  assert events[:2] == ["started", "started"], out
  assert events.index("complete") < events.index("started", 2), out
  rows = results(launchpad_home, "programs-space")
  assert sorted(float(r["x"]) for r in rows) == [1.0, 2.0, 3.0, 4.0]
  assert all(r["state"] == "complete" for r in rows)
  # The value is the last score reported: x * 3 at step 2.
  assert {float(r["x"]): float(r["score"]) for r in rows} == {1: 3, 2: 6, 3: 9, 4: 12}
  assert all(r["step"] == "2" for r in rows)
  trials = study(launchpad_home, "programs-space").trials
  assert [t.intermediate_values for t in trials if t.params["x"] == 2.0] == [{0: 2, 1: 4, 2: 6}]
  assert sorted(t.user_attrs["seed"] for t in trials) == [0, 1, 2, 3]
  assert "best: trial" in out and "score 12: runs_dir=" in out and "x=4" in out
  directory = launchpad_home / "sweeps" / "programs-space"
  assert (directory / "curves.png").read_bytes()[:4] == b"\x89PNG"
  for trial in trials:  # each trial's own run directory: node log, metrics, parameters
    run = pathlib.Path(trial.user_attrs["directory"])
    assert (run / "worker[0].log").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert '"x": ' in (run / "params.json").read_text()


def test_a_pruned_trial_is_stopped_and_leaves_no_process(lp, tmp_path, runs_dir, marker):
  space = write_space(tmp_path / "space.toml", f'x = [1.0, 2.0, 3.0]\nruns_dir = "{runs_dir}"\n')
  sweep = lp(
    "sweep",
    f"{PROGRAMS}:make_pruned",
    *("--space", space, "--objective", "score", "--pruner", "median"),
    *("--pruner-arg", "n_startup_trials=1", "--pruner-arg", "n_warmup_steps=0"),
  )
  assert sweep.finish() == 0, sweep.output()
  out = sweep.out()
  # Trial 0 scores 1; trials 1 and 2 score below the median of the complete ones.
  assert "trial 0 complete: score 1 at step 1" in out, out
  for seed in (1, 2):
    assert f"trial {seed} pruned at step" in out, out
    assert f"trial {seed} pruned: after" in out, out
    assert not (runs_dir / f"not-stopped-{seed}").exists(), "the pruned node was not stopped"
    node, child = map(int, (runs_dir / f"pids-{seed}").read_text().split())
    assert_gone([node, child])
  assert_gone([p.pid for p in processes_with(marker)])
  states = [r["state"] for r in results(pathlib.Path(tmp_path / "lphome"), "programs-space")]
  assert sorted(states) == ["complete", "pruned", "pruned"]


def test_sigkill_then_the_same_command_resumes(lp, tmp_path, runs_dir, launchpad_home, marker):
  gate = tmp_path / "gate"
  space = write_space(
    tmp_path / "space.toml",
    f'x = [1.0, 2.0, 3.0, 4.0]\nruns_dir = "{runs_dir}"\ngate_x = 4.0\ngate = "{gate}"\n',
  )
  command = ("sweep", PROGRAMS, "--space", space, "--parallel", "2", "--objective", "score")
  first = lp(*command)

  def waiting_on_the_gate() -> bool:
    counts = status_of(launchpad_home, "programs-space").get("counts", {})
    return counts.get("complete") == 3 and runs_of(runs_dir).get("x=4") == 1

  wait_until(waiting_on_the_gate, "three trials complete and the fourth waiting")
  # While it runs, the same sweep cannot run twice, and lp status shows it.
  second = lp(*command)
  assert second.finish() == 2, second.output()
  assert f"sweep programs-space is running already, in process {first.pid}" in second.err()
  status = lp("status")
  assert status.finish() == 0, status.output()
  table = status.out()
  assert "sweep programs-space  running  3/4 trials ended" in table, table
  assert re.search(r"(?m)^  TRIAL +STATE +STEP +SCORE +GATE +GATE_X +RUNS_DIR +X$", table), table
  assert re.search(r"(?m)^  \d +complete +2 +12 ", table) is None  # x=4 has not scored
  assert re.search(r"(?m)^  \d +complete +2 +9 +.* 3$", table), table
  assert re.search(r"(?m)^  \d +running +- +- +.* 4$", table), table
  top = lp("top", "programs-space", "--iterations", "1")
  assert top.finish() == 0, top.output()
  assert "sweep programs-space  running  3/4 trials ended" in top.out(), top.out()

  waiting_pid = int(next(runs_dir.glob("x=4-*")).read_text())
  first.process.send_signal(signal.SIGKILL)
  first.finish()
  assert_gone([waiting_pid])  # its node died with the sweep's process
  gone = lp("status", "programs-space")
  assert gone.finish() == 0
  assert "programs-space  gone" in gone.out() and "run the same `lp sweep` command" in gone.out()

  gate.write_text("")
  again = lp(*command)
  assert again.finish() == 0, again.output()
  assert "were left running by a sweep process that is gone" in again.out()
  # Finished trials did not run again; the one the kill cut short did.
  assert runs_of(runs_dir) == {"x=1": 1, "x=2": 1, "x=3": 1, "x=4": 2}
  rows = results(launchpad_home, "programs-space")
  assert sorted(r["state"] for r in rows) == ["complete"] * 4 + ["stale"]
  rerun = next(r for r in rows if r["rerun_of"])
  assert float(rerun["x"]) == 4.0 and float(rerun["score"]) == 12.0
  assert_gone([p.pid for p in processes_with(marker)])


def test_a_failing_trial_is_recorded_with_its_traceback_and_the_sweep_goes_on(
  lp, tmp_path, runs_dir, launchpad_home
):
  space = write_space(
    tmp_path / "space.toml", f'x = [1.0, 2.0, 3.0]\nruns_dir = "{runs_dir}"\nfail_x = 2.0\n'
  )
  sweep = lp("sweep", PROGRAMS, "--space", space, "--objective", "score")
  assert sweep.finish() == 0, sweep.output()
  assert runs_of(runs_dir) == {"x=1": 1, "x=2": 1, "x=3": 1}
  failed = re.search(
    r"trial (\d+) failed: node worker\[0\] failed: ValueError: boom at x=2", sweep.out()
  )
  assert failed, sweep.out()
  rows = {float(r["x"]): r for r in results(launchpad_home, "programs-space")}
  assert [rows[x]["state"] for x in (1.0, 2.0, 3.0)] == ["complete", "failed", "complete"]
  error = (pathlib.Path(rows[2.0]["directory"]) / "error.txt").read_text()
  assert "ValueError: boom at x=2" in error
  assert re.search(r'File ".*tests/sweep/programs.py", line \d+, in scores', error), error
  trial = study(launchpad_home, "programs-space").trials[int(failed.group(1))]
  assert "ValueError: boom at x=2" in trial.user_attrs["error"]


def test_fail_fast_stops_the_sweep_at_the_first_failure(lp, tmp_path, runs_dir, launchpad_home):
  space = write_space(
    tmp_path / "space.toml", f'x = [1.0, 2.0, 3.0]\nruns_dir = "{runs_dir}"\nfail_x = 2.0\n'
  )
  sweep = lp("sweep", PROGRAMS, "--space", space, "--objective", "score", "--fail-fast")
  assert sweep.finish() == 1, sweep.output()
  out = sweep.out()
  assert "ValueError: boom at x=2" in sweep.err()
  assert re.search(r"lp sweep: trial \d+ failed, so the sweep stopped", sweep.err())
  # One at a time: nothing started after the failure.
  assert "--fail-fast: stopping the sweep" in out
  assert "started" not in out.split("--fail-fast: stopping the sweep")[1]
  assert status_of(launchpad_home, "programs-space")["state"] == "failed"
  assert runs_of(runs_dir)["x=2"] == 1


@pytest.mark.parametrize(
  ("space_text", "args", "message"),
  [
    (
      "x = [1.0]\ny = [2]\nruns_dir = '/tmp'\n",
      (),
      r"names y, which make_program\(\) does not take",
    ),
    ("", (), r"space.toml defines no parameter"),
    ('x = {type = "float", low = 1}\nruns_dir = "/tmp"\n', (), r'x: type = "float" needs high'),
    ("x = [1.0]\nruns_dir = '/tmp'\n", ("--trials", "5"), r"trials=5 is more than the grid's 1"),
    (
      "x = [1.0]\nruns_dir = '/tmp'\n",
      ("--pruner", "median", "--pruner-arg", "bogus=1"),
      r"pruner median \(MedianPruner\) refuses its options \['bogus'\].*n_startup_trials",
    ),
    (
      'x = {type = "float", low = 1, high = 2}\nruns_dir = "/tmp"\n',
      ("--sampler", "random"),
      r"a random sweep has no natural end: give trials=",
    ),
    ("x = [1.0]\nruns_dir = '/tmp'\n", ("--storage", "nosuchdb://x"), r"cannot open the storage"),
    (
      "x = [1.0]\nruns_dir = '/tmp'\n",
      ("--pruner", "asha", "--pruner-arg", "min_delta=0.5"),
      r"min_delta applies to patience: give patience=N",
    ),
    (
      "x = [1.0]\nruns_dir = '/tmp'\n",
      ("--pruner", "asha", "--pruner-arg", "patience=-1"),
      r"pruner options \{'patience': -1\} refused: .*Give patience as a whole number",
    ),
    (
      "x = [1.0]\nruns_dir = '/tmp'\n",
      ("--pruner", "median", "--pruner-arg", "rerank=true"),
      r"rerank=True: rerank is an option of the pruner asha",
    ),
  ],
)
def test_bad_input_is_refused_before_any_trial_runs(lp, tmp_path, space_text, args, message):
  space = write_space(tmp_path / "space.toml", space_text)
  sweep = lp("sweep", PROGRAMS, "--space", space, *args)
  assert sweep.finish() == 2, sweep.output()
  assert re.search(message, sweep.err()), sweep.err()
  assert "Traceback" not in sweep.err()
  assert "started" not in sweep.out()


def test_patience_keeps_a_trial_the_pruner_would_stop_while_it_improves():
  median = {"n_startup_trials": 1, "n_warmup_steps": 0}
  space = {"x": [1.0, 2.0, 3.0]}

  def states(name: str, **options: float) -> list[str]:
    result = lp.sweep(
      programs.make_rising,
      space,
      pruner="median",
      pruner_options={**median, **options},
      objective="score",
      launch_type="threads",
      name=name,
    )
    return [t["state"] for t in sorted(result.trials, key=lambda t: t["number"])]

  # The median pruner alone stops both later trials, below the first at every step.
  assert states("impatient") == ["complete", "pruned", "pruned"]
  # With patience 1 it stops only one whose last two reports are worse than
  # its best before them: trial 2 (3, then 2 and 1), not the rising trial 1.
  assert states("patient", patience=1) == ["complete", "complete", "pruned"]
  # Worse by no more than min_delta counts as no worse.
  assert states("tolerant", patience=1, min_delta=1.5) == ["complete", "complete", "complete"]


def test_options_for_a_pruner_given_as_an_object_are_refused():
  with pytest.raises(SweepError, match=r"pruner options \['n_startup_trials'\] apply to a pruner"):
    lp.sweep(
      programs.make_rising,
      {"x": [1.0]},
      pruner=optuna.pruners.MedianPruner(),
      pruner_options={"n_startup_trials": 1},
      launch_type="threads",
      name="built",
    )


def test_a_factory_that_returns_no_program_fails_its_trials():
  result = lp.sweep(programs.make_nothing, {"x": [1, 2]}, launch_type="threads", name="nothing")
  assert [t["state"] for t in result.trials] == ["failed", "failed"]
  error = result.trials[0]["error"]
  assert (
    "could not start: TypeError: the factory returned 'x=" in error and "not a lp.Program" in error
  ), error
  assert result.best is None


def test_an_objective_no_node_reports_fails_the_trial_naming_what_they_report(runs_dir):
  result = lp.sweep(
    programs.make_program,
    {"x": [1.0], "runs_dir": str(runs_dir)},
    launch_type="threads",
    objective="accuracy",
    name="wrong-objective",
  )
  error = result.trials[0]["error"]
  assert "reported no 'accuracy' (they reported: other, score)" in error, error


def test_python_api_runs_trials_in_threads_and_resumes_nothing_twice(runs_dir, launchpad_home):
  space = {"x": [1.0, 2.0], "runs_dir": str(runs_dir), "steps": 2}
  kwargs = dict(launch_type="threads", objective="score", name="api", parallel=2)
  result = lp.sweep(programs.make_program, space, **kwargs)
  assert result.best["params"]["x"] == 2.0 and result.best["value"] == 4.0
  assert result.results_csv.exists() and result.curves_png.exists()
  again = lp.sweep(programs.make_program, space, **kwargs)
  assert len(again.trials) == 2
  assert runs_of(runs_dir) == {"x=1": 1, "x=2": 1}
  with pytest.raises(SweepError, match=r"sweep api was started with another space"):
    lp.sweep(programs.make_program, {**space, "x": [1.0, 3.0]}, **kwargs)


def test_without_optuna_the_error_names_the_extra(tmp_path, launchpad_home):
  space = write_space(tmp_path / "space.toml", "x = [1.0]\nruns_dir = '/tmp'\n")
  code = (
    "import sys\n"
    "sys.modules['optuna'] = None  # as if it were not installed\n"
    "from launchpad.cli import main\n"
    f"sys.exit(main(['sweep', {str(PROGRAMS)!r}, '--space', {str(space)!r}]))\n"
  )
  done = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    env={**os.environ, "LAUNCHPAD_HOME": str(launchpad_home)},
  )
  assert done.returncode == 2, done.stderr
  assert "sweeps use Optuna, which cannot be imported here" in done.stderr
  assert "pip install 'launchpad-rl[sweep]'" in done.stderr


def test_sigterm_stops_the_running_trials_which_run_again_next_time(
  lp, tmp_path, runs_dir, launchpad_home, marker
):
  gate = tmp_path / "gate"
  space = write_space(
    tmp_path / "space.toml", f'x = [1.0]\nruns_dir = "{runs_dir}"\ngate_x = 1.0\ngate = "{gate}"\n'
  )
  command = ("sweep", PROGRAMS, "--space", space, "--objective", "score")
  first = lp(*command)
  wait_until(lambda: runs_of(runs_dir).get("x=1") == 1, "the trial waiting on the gate")
  first.process.send_signal(signal.SIGTERM)
  assert first.finish() == 128 + signal.SIGTERM, first.output()
  assert "SIGTERM: stopping the running trials" in first.out()
  assert "trial 0 interrupted: it runs again when the sweep does" in first.out()
  assert status_of(launchpad_home, "programs-space")["state"] == "interrupted"
  assert_gone([p.pid for p in processes_with(marker)])
  gate.write_text("")
  again = lp(*command)
  assert again.finish() == 0, again.output()
  assert runs_of(runs_dir) == {"x=1": 2}
  rows = results(launchpad_home, "programs-space")
  assert sorted(r["state"] for r in rows) == ["complete", "stale"]


def test_lp_stop_from_another_process_stops_the_sweep_which_resumes_when_run_again(
  lp, tmp_path, runs_dir, launchpad_home, marker
):
  gate = tmp_path / "gate"
  space = write_space(
    tmp_path / "space.toml",
    f'x = [1.0, 2.0]\nruns_dir = "{runs_dir}"\ngate_x = 2.0\ngate = "{gate}"\n',
  )
  # Two at once: x=1 completes while x=2 waits, whichever the grid starts first.
  command = ("sweep", PROGRAMS, "--space", space, "--objective", "score", "--parallel", "2")
  first = lp(*command)

  def waiting_on_the_gate() -> bool:
    counts = status_of(launchpad_home, "programs-space").get("counts", {})
    return counts.get("complete") == 1 and runs_of(runs_dir).get("x=2") == 1

  wait_until(waiting_on_the_gate, "one trial complete and the second waiting")
  unknown = lp("stop", "nothing-of-that-name")
  assert unknown.finish() == 2, unknown.output()
  assert unknown.err().startswith(
    "lp stop: no running program matches 'nothing-of-that-name'; running: none. "
    "Running sweeps: programs-space."
  ), unknown.err()
  waiting_pid = int(next(runs_dir.glob("x=2-*")).read_text())

  stop = lp("stop", "programs-space")
  assert stop.finish() == 0, stop.output()
  assert stop.out().startswith("stopping sweep programs-space: its running trials stop"), stop.out()
  assert first.finish() == 0, first.output()
  said = f"`lp stop programs-space` from pid {stop.pid}: stopping the running trials"
  assert said in first.out(), first.out()
  assert re.search(r"(?m)trial \d interrupted: it runs again when the sweep does$", first.out())
  assert status_of(launchpad_home, "programs-space")["state"] == "interrupted"
  assert_gone([waiting_pid])
  assert_gone([p.pid for p in processes_with(marker)])
  again_stop = lp("stop", "programs-space")
  assert again_stop.finish() == 2, again_stop.output()
  assert "sweep programs-space is not running (interrupted): there is nothing to stop" in (
    again_stop.err()
  )

  gate.write_text("")
  again = lp(*command)
  assert again.finish() == 0, again.output()
  assert runs_of(runs_dir) == {"x=1": 1, "x=2": 2}  # the finished trial did not run again
  rows = results(launchpad_home, "programs-space")
  assert sorted(r["state"] for r in rows) == ["complete", "complete", "stale"]


@pytest.mark.parametrize("terminal", [None, "current_terminal"])
def test_launch_options_reach_every_trial_as_lp_launch_takes_them(lp, tmp_path, runs_dir, terminal):
  """--terminal (as lp launch has it; a sweep's default is output_to_files)."""
  space = write_space(tmp_path / "space.toml", f'x = [1.0, 2.0]\nruns_dir = "{runs_dir}"\n')
  options = () if terminal is None else ("--terminal", terminal)
  sweep = lp("sweep", PROGRAMS, "--space", space, "--objective", "score", *options)
  assert sweep.finish() == 0, sweep.output()
  shown = re.findall(r"(?m)^worker\[0\] +\| x=(\d) scores$", sweep.out())
  if terminal is None:
    assert not shown, sweep.out()
  else:
    assert sorted(shown) == ["1", "2"], sweep.out()
