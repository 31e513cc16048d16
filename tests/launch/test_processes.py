"""Tests of the multiprocess launcher (`local_mp`, `test_mp`), with real processes.

Node classes live in tests/launch/programs/nodes.py: node processes import
them by reference. Every run directory goes under a temporary
$LAUNCHPAD_HOME.
"""

from __future__ import annotations

import gc
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import psutil
import pytest

import launchpad as lp
from launchpad import runs
from launchpad.control.client import ControlClient
from tests.launching import STOP_SECONDS, launching

from .programs import nodes

TIMEOUT = 10.0
TESTS_DIR = pathlib.Path(__file__).resolve().parents[1]
PROGRAMS_DIR = pathlib.Path(__file__).resolve().parent / "programs"


launched = launching(launch_type="local_mp", terminal="output_to_files", grace_period=2.0)


def client(handle):
  return handle.dereference().with_timeout(TIMEOUT)


def node_statuses(controller) -> dict:
  """The coordinator's view of every node, read as `lp status` reads it."""
  run = runs.Run(controller.run_dir)
  control = ControlClient(run.info()["coordinator"], token=run.token())
  try:
    return {node.node: node for node in control.status().nodes}
  finally:
    control.close()


def node_pids(controller) -> dict[str, int]:
  """Name -> pid of every node process the launcher started (its own record)."""
  return controller._workers.pids()


def alive(pid: int) -> bool:
  """True while `pid` runs (a zombie has ended: only its exit status is left)."""
  try:
    return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
  except psutil.NoSuchProcess:
    return False


def wait_until(predicate, timeout: float = TIMEOUT, what: str = "the condition") -> None:
  """Polls `predicate` until it holds; for states that no event announces."""
  deadline = time.monotonic() + timeout
  while not predicate():
    if time.monotonic() > deadline:
      pytest.fail(f"{what} did not happen within {timeout} s")
    time.sleep(0.02)


def own_descendants() -> set[int]:
  return {p.pid for p in psutil.Process().children(recursive=True)}


def log_lines(controller, name: str) -> list[str]:
  return (controller.run_dir / f"{name}.log").read_text().splitlines()


def producers_program(name="mp", num_producers=2):
  program = lp.Program(name)
  with program.group("producer"):
    producers = [
      program.add_node(lp.CourierNode(nodes.Producer, factor))
      for factor in range(1, num_producers + 1)
    ]
  consumer = program.add_node(lp.CourierNode(nodes.Consumer, producers), label="consumer")
  return program, producers, consumer


# Running.


def test_courier_nodes_run_in_processes_of_their_own_and_reach_each_other(launched, capsys):
  before = own_descendants()
  sigint_before = signal.getsignal(signal.SIGINT)
  program, producers, consumer = producers_program()
  controller = launched(program, terminal="current_terminal")
  assert isinstance(controller, lp.Controller)
  # local_mp from the main thread handles Ctrl-C itself.
  assert signal.getsignal(signal.SIGINT) is not sigint_before

  producer_pids = [client(p).pid() for p in producers]
  consumer_pid = client(consumer).pid()
  pids = [*producer_pids, consumer_pid]
  assert len(set(pids)) == 3, pids
  assert os.getpid() not in pids
  # The consumer reaches the producers through the handles it was given.
  assert client(consumer).gather(5) == [5, 10]
  assert client(consumer).producer_pids() == producer_pids
  assert node_pids(controller) == {
    "producer[0]": producer_pids[0],
    "producer[1]": producer_pids[1],
    "consumer[0]": consumer_pid,
  }
  started = own_descendants() - before
  assert set(pids) < started  # the nodes, and the fork server that forked them
  assert controller.wait(0.2) is False
  assert not controller.done

  controller.stop(timeout=TIMEOUT)
  assert controller.done
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []
  # Teardown: every node ran its stop handler and ended; no process is left.
  for pid in started:
    assert not psutil.pid_exists(pid), f"process {pid} outlived the program"
  out = capsys.readouterr().out.splitlines()
  for k in (1, 2):
    assert f"producer[{k - 1}] | producer {k} ready" in out
    assert f"producer[{k - 1}] | producer {k} stop handler" in out
    assert log_lines(controller, f"producer[{k - 1}]") == [
      f"producer {k} ready",
      f"producer {k} stop handler",
    ]
  # The run directory went under $LAUNCHPAD_HOME.
  assert controller.run_dir.parent == runs.home() / "runs"
  assert controller.run_dir.name.startswith("mp-")


def test_wait_returns_true_when_the_program_stops_itself(launched):
  program = lp.Program("self_stopping")
  server = program.add_node(lp.CourierNode(nodes.Stoppable, "server"), label="server")
  program.add_node(lp.PyNode(nodes.stop_once_served, server), label="stopper")
  # The server's process may still be starting when a stop comes: its
  # grace period must not depend on how fast a loaded machine starts one.
  controller = launched(program, grace_period=STOP_SECONDS)
  assert controller.wait(STOP_SECONDS) is True
  assert controller.failures() == []
  # The stop may come before the server's run() starts; it ends either way.
  lines = log_lines(controller, "server[0]")
  assert sorted(lines) == ["server ends", "server ready", "server stop handler"], lines
  assert lines[-1] == "server ends"


def test_test_mp_leaves_signal_handlers_alone(launched):
  before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  program, producers, consumer = producers_program("plain_test_mp")
  controller = launched(program, launch_type="test_mp")
  assert client(consumer).gather(3) == [3, 6]
  assert client(producers[0]).pid() != os.getpid()
  assert {sig: signal.getsignal(sig) for sig in before} == before
  controller.stop(timeout=TIMEOUT)
  assert controller.wait(0) is True


def test_test_mp_with_a_test_case_stops_the_program_at_cleanup():
  program, producers, consumer = producers_program("with_test_case")
  seen = {}

  class Case(unittest.TestCase):
    def runTest(self):
      controller = lp.launch(
        program, launch_type="test_mp", test_case=self, terminal="output_to_files"
      )
      seen["controller"] = controller
      seen["pids"] = [client(p).pid() for p in producers]
      self.assertEqual(client(consumer).gather(2), [2, 4])
      self.assertFalse(controller.done)

  result = unittest.TestResult()
  Case().run(result)
  assert result.wasSuccessful(), result.errors + result.failures
  controller = seen["controller"]
  assert controller.done  # the cleanup stopped it
  for pid in seen["pids"]:
    assert not psutil.pid_exists(pid)


def test_test_mp_with_a_test_case_raises_a_node_failure_at_cleanup():
  program = lp.Program("failing_test_case")
  program.add_node(lp.PyNode(nodes.raise_value_error), label="failer")
  program.add_node(lp.CourierNode(nodes.Stoppable, "server"), label="server")
  seen = {}

  class Case(unittest.TestCase):
    def runTest(self):
      seen["controller"] = lp.launch(
        program, launch_type="test_mp", test_case=self, terminal="output_to_files"
      )
      self.assertTrue(lp.wait_for_stop(TIMEOUT))  # the failure stops the program

  result = unittest.TestResult()
  Case().run(result)
  assert seen["controller"].done
  assert result.failures == []
  assert len(result.errors) == 1, result.errors
  text = result.errors[0][1]
  assert "NodeFailedError" in text
  assert "failer[0]" in text
  assert "ValueError: bad value 1234" in text


def test_python_process_env_is_set_in_its_groups_processes_only(launched, monkeypatch):
  monkeypatch.delenv("LP_TEST_GROUP_ENV", raising=False)
  program = lp.Program("env")
  with_env = program.add_node(lp.CourierNode(nodes.Producer, 1), label="with_env")
  without = program.add_node(lp.CourierNode(nodes.Producer, 2), label="without")
  controller = launched(
    program,
    local_resources={"with_env": lp.PythonProcess(env={"LP_TEST_GROUP_ENV": "1"})},
  )
  assert client(with_env).env("LP_TEST_GROUP_ENV") == "1"
  assert client(without).env("LP_TEST_GROUP_ENV") is None
  assert "LP_TEST_GROUP_ENV" not in os.environ
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []


def test_a_node_process_freezes_what_it_loaded_before_its_node_ran(launched):
  ours = gc.get_freeze_count()
  program = lp.Program("frozen")
  producer = program.add_node(lp.CourierNode(nodes.Producer, 1), label="producer")
  controller = launched(program)
  # Its imports (launchpad, numpy, absl) and its unpickled node: tens of thousands.
  assert client(producer).frozen() > 10_000
  controller.stop(timeout=TIMEOUT)
  assert gc.get_freeze_count() == ours  # the launching process is left alone


def fresh_interpreter_node_facts(launched, resource):
  """Runs a Producer in group 'fresh' with `resource`; returns what it reports."""
  program = lp.Program("fresh")
  fresh = program.add_node(lp.CourierNode(nodes.Producer, 3), label="fresh")
  forked = program.add_node(lp.CourierNode(nodes.Producer, 4), label="forked")
  controller = launched(program, local_resources={"fresh": resource})
  try:
    facts = {
      "argv": client(fresh).argv(),
      "pid": client(fresh).pid(),
      "ppid": client(fresh).ppid(),
      "executable": client(fresh).executable(),
      "work": client(fresh).work(2),
      "forked_ppid": client(forked).ppid(),
    }
    keepers = [psutil.Process(facts[k]) for k in ("ppid", "forked_ppid")]
    facts["keepers_parents"] = [keeper.ppid() for keeper in keepers]
    facts["fork_server_parent"] = psutil.Process(keepers[0].ppid()).ppid()
  except lp.LaunchpadError as e:
    controller.stop(timeout=TIMEOUT)
    failures = [f"{r.name}: {r.description}\n{r.traceback}" for r in controller.failures()]
    pytest.fail(f"the node in a fresh interpreter did not serve ({e}); failures: {failures}")
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []
  return facts


def test_python_process_interpreter_and_args_start_a_fresh_interpreter(launched):
  resource = lp.PythonProcess(
    interpreter=sys.executable, args=("--foo",), env={"PYTHONPATH": str(TESTS_DIR)}
  )
  facts = fresh_interpreter_node_facts(launched, resource)
  assert facts["argv"][1:] == ["--foo"]
  assert facts["work"] == 6
  assert facts["pid"] != os.getpid()
  # Like a forked node, it runs under a keeper of the fork server (which
  # ends what the node leaves behind), a child of this process.
  assert facts["ppid"] != facts["forked_ppid"]
  [fork_server, same] = facts["keepers_parents"]
  assert fork_server == same
  assert facts["fork_server_parent"] == os.getpid()
  assert os.path.realpath(facts["executable"]) == os.path.realpath(sys.executable)


def test_fresh_interpreter_group_imports_what_forked_groups_import(launched):
  # Node code importable in the launcher is importable in forked nodes (the
  # fork server gets the launcher's sys.path); a group that only adds `args`
  # runs the same interpreter and must find the same modules.
  facts = fresh_interpreter_node_facts(launched, lp.PythonProcess(args=("--bar",)))
  assert facts["argv"][1:] == ["--bar"]
  assert facts["work"] == 6


def test_multiprocessing_colocation_gives_each_node_a_process(launched):
  first = lp.CourierNode(nodes.Producer, 1)
  second = lp.CourierNode(nodes.Producer, 2)
  handles = [first.create_handle(), second.create_handle()]
  program = lp.Program("mp_colocation")
  program.add_node(lp.MultiProcessingColocation([first, second]), label="pair")
  controller = launched(program)
  pids = [client(h).pid() for h in handles]
  assert pids[0] != pids[1]
  assert os.getpid() not in pids
  assert [client(h).work(10) for h in handles] == [10, 20]
  assert node_pids(controller) == {"pair[0].0": pids[0], "pair[0].1": pids[1]}
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []
  assert not any(psutil.pid_exists(pid) for pid in pids)


def test_multithreading_colocation_runs_its_nodes_in_one_process(launched):
  first = lp.CourierNode(nodes.Producer, 1)
  second = lp.CourierNode(nodes.Producer, 2)
  handles = [first.create_handle(), second.create_handle()]
  program = lp.Program("mt_colocation")
  program.add_node(lp.MultiThreadingColocation([first, second]), label="pair")
  controller = launched(program)
  pids = [client(h).pid() for h in handles]
  assert pids[0] == pids[1] != os.getpid()
  assert [client(h).work(10) for h in handles] == [10, 20]
  threads = client(handles[0]).thread_names()
  assert "pair[0].0" in threads and "pair[0].1" in threads
  assert node_pids(controller) == {"pair[0]": pids[0]}
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []
  assert not psutil.pid_exists(pids[0])


# Failures.


def failing_program(name, failing_node):
  program = lp.Program(name)
  program.add_node(failing_node, label="failer")
  bystander = program.add_node(lp.CourierNode(nodes.Stoppable, "bystander"), label="bystander")
  producer = program.add_node(lp.CourierNode(nodes.Producer, 1), label="producer")
  return program, bystander, producer


def assert_everything_ended(controller, before):
  pids = node_pids(controller)
  assert set(pids) == {"failer[0]", "bystander[0]", "producer[0]"}
  for name, pid in pids.items():
    assert not psutil.pid_exists(pid), f"{name} (pid {pid}) outlived the failure"
  leftovers = [pid for pid in own_descendants() - before if alive(pid)]
  assert leftovers == [], "processes left behind"


def test_node_raising_fails_the_program_with_its_traceback(launched):
  before = own_descendants()
  program, _, _ = failing_program("raising", lp.PyNode(nodes.raise_value_error))
  controller = launched(program)
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  error = info.value
  assert error.node == "failer[0]"
  message = str(error)
  assert "node failer[0] failed: ValueError: bad value 1234" in message
  assert "Traceback (most recent call last)" in message
  assert "raise_value_error" in message  # the frame that raised
  assert isinstance(error.__cause__, ValueError)
  assert [r.name for r in controller.failures()] == ["failer[0]"]
  assert_everything_ended(controller, before)
  # The bystander was stopped, not killed: its stop handler ran.
  assert "bystander stop handler" in log_lines(controller, "bystander[0]")


def test_node_exiting_with_status_3_fails_the_program(launched):
  before = own_descendants()
  program, _, _ = failing_program("exiting", lp.PyNode(nodes.exit_with_status, 3))
  controller = launched(program)
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  error = info.value
  assert error.node == "failer[0]"
  assert error.description == "the process exited with status 3"
  assert "node failer[0] failed: the process exited with status 3" in str(error)
  # The exit reason comes with the last lines the node printed.
  assert "exiting with status 3" in error.remote_traceback
  assert_everything_ended(controller, before)


def test_node_killed_with_sigkill_fails_the_program(launched):
  before = own_descendants()
  program, _, producer = failing_program("killed", lp.CourierNode(nodes.Producer, 7))
  controller = launched(program)
  victim = program.groups["failer"][0].create_handle()
  pid = client(victim).pid()
  assert client(producer).pid() != pid
  os.kill(pid, signal.SIGKILL)
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  error = info.value
  assert error.node == "failer[0]"
  assert error.description == "the process was killed by SIGKILL"  # no out-of-memory guess
  assert "killed by SIGKILL" in str(error)
  assert_everything_ended(controller, before)


# Restarts.


def test_restarted_node_keeps_serving_the_clients_that_others_hold(launched, tmp_path):
  marker = tmp_path / "flaky.starts"
  program = lp.Program("restarting")
  flaky = program.add_node(
    lp.CourierNode(nodes.Flaky, str(marker)),
    label="flaky",
    restart="on-failure",
    max_restarts=2,
    restart_backoff=0.05,
  )
  caller = program.add_node(lp.CourierNode(nodes.Caller, flaky), label="caller")
  controller = launched(program)

  first_pid = client(caller).target_pid()  # the caller's client is connected
  assert client(flaky).starts() == 1
  before = node_statuses(controller)["flaky[0]"]
  assert before.restarts == 0
  assert before.pid == first_pid
  first_addresses = list(before.addresses)

  # A call in flight when the node dies raises ConnectionLostError.
  with pytest.raises(lp.ConnectionLostError):
    client(flaky).crash(3)
  # The caller's client, made before the crash, reaches the new process.
  second_pid = client(caller).target_pid()
  assert second_pid != first_pid
  assert client(flaky).starts() == 2
  assert client(flaky).pid() == second_pid  # the test's own client too
  assert marker.read_text().split() == [str(first_pid), str(second_pid)]
  assert not alive(first_pid)

  after = node_statuses(controller)
  assert after["flaky[0]"].state == "running"
  assert after["flaky[0]"].restarts == 1
  assert after["flaky[0]"].pid == second_pid
  assert after["caller[0]"].restarts == 0
  assert controller.wait(0.1) is False  # a restarted failure does not stop the program
  assert controller.failures() == []
  # The restarted node bound the addresses it had (they were free).
  assert list(after["flaky[0]"].addresses) == first_addresses

  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []


def test_failing_more_than_max_restarts_stops_the_program(launched, tmp_path):
  marker = tmp_path / "crash.starts"
  program = lp.Program("crash_loop")
  program.add_node(
    lp.PyNode(nodes.crash_every_time, str(marker)),
    label="crasher",
    restart="on-failure",
    max_restarts=2,
    restart_backoff=0.05,
  )
  program.add_node(lp.CourierNode(nodes.Stoppable, "bystander"), label="bystander")
  controller = launched(program)
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  assert info.value.node == "crasher[0]"
  assert info.value.description == "the process exited with status 3"
  # The first start and two restarts; the third failure stopped the program.
  assert len(marker.read_text().split()) == 3
  [record] = controller.failures()
  assert record.restarts == 2
  assert "bystander stop handler" in log_lines(controller, "bystander[0]")
  # Each start's output is appended to the node's log.
  assert [line for line in log_lines(controller, "crasher[0]") if "crash start" in line] == [
    "crash start 1",
    "crash start 2",
    "crash start 3",
  ]


def test_restarted_node_in_a_fresh_interpreter_group_keeps_running(launched, tmp_path):
  marker = tmp_path / "flaky.starts"
  program = lp.Program("restarting_fresh")
  flaky = program.add_node(
    lp.CourierNode(nodes.Flaky, str(marker)),
    label="flaky",
    restart="on-failure",
    max_restarts=1,
    restart_backoff=0.05,
  )
  resource = lp.PythonProcess(args=("--x",), env={"PYTHONPATH": str(TESTS_DIR)})
  controller = launched(program, local_resources={"flaky": resource})
  try:
    first_pid = client(flaky).pid()
    with pytest.raises(lp.ConnectionLostError):
      client(flaky).crash(3)
    second_pid = client(flaky).pid()
  except lp.LaunchpadError as e:
    controller.stop(timeout=TIMEOUT)
    failures = [f"{r.name}: {r.description}\n{r.traceback}" for r in controller.failures()]
    pytest.fail(f"the node did not serve ({e}); failures: {failures}")
  assert second_pid != first_pid
  # The restarted process stays up (its parent-death signal must not fire
  # when the thread that started it ends).
  assert client(flaky).starts() == 2
  assert controller.wait(0.5) is False
  assert client(flaky).pid() == second_pid
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []


# Ending.


def test_node_returning_ends_alone_and_the_last_node_ends_the_program(launched):
  program = lp.Program("ending")
  program.add_node(lp.PyNode(nodes.print_and_return, "early bird"), label="early")
  gate = program.add_node(lp.CourierNode(nodes.Gate), label="gate")
  controller = launched(program)
  gate_pid = client(gate).pid()

  def early_finished():
    return node_statuses(controller)["early[0]"].state == "finished"

  wait_until(early_finished, what="early[0] finishing")
  assert node_statuses(controller)["gate[0]"].state == "running"
  assert alive(gate_pid)
  assert controller.wait(0.2) is False
  assert log_lines(controller, "early[0]") == ["early bird"]

  try:
    client(gate).release()
  except lp.ConnectionLostError:
    pass  # the gate may stop serving before its reply leaves: it has returned
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []
  assert not psutil.pid_exists(gate_pid)
  assert "gate released" in log_lines(controller, "gate[0]")


def test_program_of_many_short_lived_nodes_starts_and_ends(tmp_path):
  # Nodes that end while others are still being started: the launcher must
  # take their exit reports while it starts the rest.
  env = {**os.environ, "LAUNCHPAD_HOME": str(tmp_path / "lphome")}
  script = PROGRAMS_DIR / "many_short_nodes.py"
  process = subprocess.Popen(
    [sys.executable, str(script), "20"],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    stdout, stderr = process.communicate(timeout=15.0)
  except subprocess.TimeoutExpired:
    process.kill()  # its fork server and nodes end with it
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    stage = "the program never ended" if "LAUNCHED" in stdout else "lp.launch never returned"
    pytest.fail(
      f"a program of 20 short-lived nodes did not start and end within 15 s ({stage})"
      f"\nstdout:\n{stdout}\nstderr:\n{stderr[-3000:]}"
    )
  assert process.returncode == 0, stdout + stderr
  assert stdout.splitlines() == ["LAUNCHED", "ENDED True"]


# Output.


def test_output_to_files_prints_nothing_but_writes_the_logs(launched, capfd):
  program = lp.Program("quiet")
  for k in range(2):
    program.add_node(lp.PyNode(nodes.print_and_return, f"quiet line {k}"), label="talker")
  controller = launched(program, terminal="output_to_files")
  assert controller.wait(TIMEOUT) is True
  captured = capfd.readouterr()
  assert "quiet line" not in captured.out
  assert "talker[" not in captured.out
  assert log_lines(controller, "talker[0]") == ["quiet line 0"]
  assert log_lines(controller, "talker[1]") == ["quiet line 1"]


def test_log_dir_is_the_run_directory(launched, tmp_path):
  log_dir = tmp_path / "my_logs"
  program = lp.Program("logged")
  program.add_node(lp.PyNode(nodes.print_and_return, "into my logs"), label="talker")
  controller = launched(program, log_dir=log_dir)
  assert controller.wait(TIMEOUT) is True
  assert controller.run_dir == log_dir
  assert (log_dir / "talker[0].log").read_text() == "into my logs\n"


@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed")
def test_tmux_session_has_a_window_per_node(launched, monkeypatch):
  # A tmux server of our own: its socket in a fresh short directory.
  tmux_dir = tempfile.mkdtemp(prefix="lptmux")
  monkeypatch.setenv("TMUX_TMPDIR", tmux_dir)
  try:
    program = lp.Program("tmuxed")
    handle = program.add_node(lp.CourierNode(nodes.Producer, 1), label="producer")
    program.add_node(lp.CourierNode(nodes.Stoppable, "other"), label="other")
    controller = launched(program, terminal="tmux_session")
    assert client(handle).work(1) == 1
    session = controller.run_dir.name.replace(".", "_").replace(":", "_")
    windows = subprocess.run(
      ["tmux", "list-windows", "-t", session, "-F", "#{window_name}"],
      capture_output=True,
      text=True,
      timeout=TIMEOUT,
    )
    assert windows.returncode == 0, windows.stderr
    assert windows.stdout.split() == ["producer[0]", "other[0]"]
    controller.stop(timeout=TIMEOUT)

    def session_closed():
      probe = ["tmux", "has-session", "-t", session]
      return subprocess.run(probe, capture_output=True, timeout=TIMEOUT).returncode != 0

    wait_until(session_closed, what="the tmux session closing")
  finally:
    subprocess.run(["tmux", "kill-server"], capture_output=True, timeout=TIMEOUT)
    shutil.rmtree(tmux_dir, ignore_errors=True)


def test_bad_terminal_and_resources_are_rejected_before_anything_runs(launchpad_home):
  program, _, _ = producers_program("rejected")
  with pytest.raises(ValueError, match="terminal='screen'"):
    lp.launch(program, launch_type="local_mp", terminal="screen")
  with pytest.raises(TypeError, match=r"local_resources\['producer'\].*lp.PythonProcess"):
    lp.launch(program, launch_type="local_mp", local_resources={"producer": {"env": {}}})
  assert not (launchpad_home / "runs").exists() or not any((launchpad_home / "runs").iterdir())


def test_unpicklable_node_argument_is_rejected_naming_the_node_and_path():
  program = lp.Program("unpicklable")
  program.add_node(lp.CourierNode(nodes.Producer, threading.Lock()), label="holder")
  with pytest.raises(lp.SerializationError) as info:
    lp.launch(program, launch_type="local_mp")
  message = str(info.value)
  assert "node holder[0]" in message
  assert "['args'][0]" in message


def test_an_interpreter_that_does_not_exist_is_an_error_naming_its_group(launchpad_home):
  program = lp.Program("no_python")
  program.add_node(lp.PyNode(print, "never runs"), label="learner")
  resource = lp.PythonProcess(interpreter="python-that-is-not-there")
  with pytest.raises(lp.ProgramError) as info:
    lp.launch(program, launch_type="local_mp", local_resources={"learner": resource})
  message = str(info.value)
  assert "group 'learner'" in message
  assert "interpreter='python-that-is-not-there'" in message
  assert "give the path of a Python" in message
  assert not (launchpad_home / "runs").exists() or not any((launchpad_home / "runs").iterdir())


def test_local_resources_for_a_group_the_program_lacks_is_an_error(tmp_path, monkeypatch):
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path))
  program = lp.Program("typo")
  program.add_node(lp.PyNode(print, "never runs"), label="learner")
  with pytest.raises(lp.ProgramError, match=r"'lerner'.*groups are: learner"):
    lp.launch(
      program, launch_type="local_mp", local_resources={"lerner": lp.PythonProcess(env={"A": "1"})}
    )
