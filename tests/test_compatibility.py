"""DeepMind Launchpad programs run unchanged: its public names, their
signatures, and programs written the way its examples are.

`LAUNCHPAD_NAMES` is every public name of `import launchpad as lp` in
Launchpad's release (0.6.0); docs/compatibility.md says how each one
behaves here.
"""

from __future__ import annotations

import inspect
import os
import pathlib
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import warnings

import pytest

import launchpad as lp
from launchpad import errors
from tests.launch.programs import lp_batching
from tests.launching import launching

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCHING = ROOT / "tests" / "launch" / "programs" / "lp_batching.py"
TIMEOUT = 30.0
# A script run takes a few seconds; this bounds a hang.
SCRIPT_TIMEOUT = 60.0

# Every name `launchpad/__init__.py` of Launchpad 0.6.0 exports (its lazy
# imports included), with the parameters its callables take, in order.
LAUNCHPAD_NAMES = {
  "flags": None,
  "LaunchType": None,
  "is_local_launch": ["launch_type"],
  "is_local_launch_or_test": ["launch_type"],
  "LAUNCH_TYPE": None,
  "Program": ["name"],
  "launch": [
    "programs",
    "launch_type",
    "xm_resources",
    "local_resources",
    "test_case",
    "terminal",
    "serialize_py_nodes",
    "controller_xm_requirements",
  ],
  "CourierHandle": None,
  "CourierNode": None,
  "CourierClient": None,
  "MultiThreadingColocation": ["nodes", "return_on_first_completed"],
  "PyClassNode": None,
  "PyNode": None,
  "Address": ["name"],
  "AbstractAddressBuilder": None,
  "get_port_from_address": ["address"],
  "SimpleLocalAddressBuilder": [],
  "register_stop_handler": ["handler"],
  "stop_event": [],
  "unregister_stop_handler": ["handler"],
  "wait_for_stop": ["timeout_secs"],
  "make_program_stopper": ["launch_type"],
  "stop": [],
  "ReverbNode": ["priority_tables_fn", "checkpoint_ctor", "checkpoint_time_delta_minutes"],
  "DockerConfig": ["code_directory", "docker_requirements", "hw_requirements", "python_path"],
  "batched_handler": ["batch_size", "max_parallelism", "timeout", "pad_batch"],
}
LAUNCHPAD_LAUNCH_TYPES = {
  "LOCAL_MULTI_THREADING": "local_mt",
  "LOCAL_MULTI_PROCESSING": "local_mp",
  "TEST_MULTI_PROCESSING": "test_mp",
  "TEST_MULTI_THREADING": "test_mt",
  "LOCAL_DOCKER": "local_docker",
  "VERTEX_AI": "vertex_ai",
}

launched = launching(launch_type="test_mt", grace_period=5.0)


# Names and signatures.


@pytest.mark.parametrize("name", sorted(LAUNCHPAD_NAMES))
def test_every_launchpad_name_is_exported(name):
  assert hasattr(lp, name), f"lp.{name} is missing"
  assert name in lp.__all__


@pytest.mark.parametrize("name", sorted(n for n, p in LAUNCHPAD_NAMES.items() if p is not None))
def test_launchpad_signatures_start_with_launchpads_parameters(name):
  parameters = list(inspect.signature(getattr(lp, name)).parameters)
  expected = LAUNCHPAD_NAMES[name]
  assert parameters[: len(expected)] == expected


def test_launch_takes_launchpads_arguments_positionally_and_ours_by_keyword_only():
  parameters = inspect.signature(lp.launch).parameters
  positional = [p.name for p in parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
  assert positional == LAUNCHPAD_NAMES["launch"][:6]
  for name in ("serialize_py_nodes", "grace_period", "log_dir", "hosts", "tls"):
    assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_courier_node_takes_courier_kwargs_by_keyword():
  parameters = inspect.signature(lp.CourierNode).parameters
  for name in ("courier_kwargs", "courier_client_kwargs"):
    assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_launch_types_have_launchpads_names_and_values():
  for name, value in LAUNCHPAD_LAUNCH_TYPES.items():
    assert lp.LaunchType[name].value == value
  assert lp.LAUNCH_TYPE.name == "lp_launch_type"


def test_the_documentation_lists_every_launchpad_name():
  table = (ROOT / "docs" / "compatibility.md").read_text()
  for name in LAUNCHPAD_NAMES:
    assert re.search(rf"^\| `lp\.{name}", table, re.M), f"docs/compatibility.md lacks lp.{name}"


def test_node_failed_error_is_a_runtime_error():
  # Launchpad's tests catch a node's failure with assertRaises(RuntimeError).
  assert issubclass(lp.NodeFailedError, RuntimeError)


def test_launch_type_helpers():
  assert lp.is_local_launch("local_mt") and lp.is_local_launch(lp.LaunchType.LOCAL_MULTI_PROCESSING)
  assert not lp.is_local_launch("test_mt")
  assert lp.is_local_launch_or_test("test_mp") and lp.is_local_launch_or_test("local_mp")
  assert not lp.is_local_launch_or_test("vertex_ai")
  with pytest.raises(ValueError, match=r"'warp'.*local_mt"):
    lp.is_local_launch("warp")


def test_make_program_stopper_is_lp_stop():
  assert lp.make_program_stopper("local_mt") is lp.stop
  with pytest.raises(errors.LaunchpadError, match="xmanager"):
    lp.make_program_stopper("vertex_ai")


def test_get_port_from_address(monkeypatch):
  assert lp.get_port_from_address("localhost:1234") == 1234
  monkeypatch.setenv("LP_PORT_courier", "4321")
  assert lp.get_port_from_address("localhost:courier") == 4321
  with pytest.raises(ValueError, match=r"'nothing'.*host:port"):
    lp.get_port_from_address("nothing")
  with pytest.raises(ValueError, match=r"LP_PORT_missing is not set"):
    lp.get_port_from_address("localhost:missing")


def test_docker_config_is_accepted_with_a_warning_saying_what_to_use():
  with pytest.warns(UserWarning, match=r"xmanager.*PythonProcess\(interpreter="):
    config = lp.DockerConfig("/code", "requirements.txt", python_path=["x"])
  assert config.docker_requirements == "requirements.txt"


# lp.launch


def idle():
  lp.wait_for_stop(TIMEOUT)


def idle_program(name="idle"):
  program = lp.Program(name)
  program.add_node(lp.PyNode(idle), label="idle")
  return program


def launch_and_stop(*args, **kwargs):
  controller = lp.launch(*args, **kwargs)
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []
  return controller


def test_launch_takes_xm_resources_positionally_and_warns_that_they_are_ignored():
  with pytest.warns(UserWarning, match=r"xm_resources is ignored.*local_resources"):
    launch_and_stop(idle_program(), "test_mt", {"idle": object()})


def test_launch_with_no_xm_resources_does_not_warn():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    launch_and_stop(idle_program(), "test_mt", None, None, None, None)


def test_launch_takes_a_list_of_programs_and_runs_the_first_as_launchpad_does():
  with pytest.warns(UserWarning, match=r"launching the first, 'first', not 'second'"):
    controller = launch_and_stop(
      programs=[idle_program("first"), idle_program("second")], launch_type="test_mt"
    )
  assert controller.program == "first"
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    controller = launch_and_stop(programs=[idle_program("only")], launch_type="test_mt")
  assert controller.program == "only"


@pytest.mark.parametrize(
  ("programs", "error", "message"),
  [
    ([], ValueError, "empty list of programs"),
    ([idle_program(), "x"], TypeError, r"programs\[1\] is 'x'"),
    ("program", TypeError, "takes a lp.Program"),
  ],
)
def test_launch_refuses_what_is_not_programs(programs, error, message):
  with pytest.raises(error, match=message):
    lp.launch(programs, "test_mt")


@pytest.mark.parametrize("launch_type", ["vertex_ai", lp.LaunchType.LOCAL_DOCKER])
def test_xmanager_launch_types_are_refused_with_what_to_use(launch_type):
  with pytest.raises(errors.LaunchpadError, match=r"xmanager.*use launch_type="):
    lp.launch(idle_program(), launch_type)


# Programs.


def test_add_node_inside_a_group_takes_the_groups_own_label():
  program = lp.Program("labels")
  with program.group("actor"):
    assert program.current_group == "actor"
    program.add_node(lp.PyNode(idle), label="actor")
    with pytest.raises(errors.ProgramError, match=r"label='learner'.*inside group 'actor'"):
      program.add_node(lp.PyNode(idle), label="learner")
  assert [n.name for n in program.groups["actor"]] == ["actor[0]"]
  with pytest.raises(ValueError, match="only set inside"):
    program.current_group  # noqa: B018 - the property raises


def test_calling_a_method_on_a_handle_says_to_dereference_it_inside_a_node():
  program = lp.Program("handles")
  handle = program.add_node(lp.CourierNode(Counter), label="counter")
  with pytest.raises(AttributeError) as info:
    handle.increment()
  message = str(info.value)
  assert "counter[0]" in message and "'increment'" in message
  assert "dereferenced inside a node at run time" in message


def test_python_process_takes_launchpads_args_dict_and_numeric_env():
  process = lp.PythonProcess({"flag": 1, "on": True, "off": False, "name": "x"}, {"X": 1, "Y": "y"})
  assert process.args == ("--flag=1", "--on", "--nooff", "--name=x")
  assert process.env == {"X": "1", "Y": "y"}
  assert lp.PythonProcess(args=["--a"]).args == ("--a",)
  with pytest.raises(TypeError, match=r"env maps variable names.*None"):
    lp.PythonProcess(env={"X": None})
  with pytest.raises(TypeError, match="args must be a list of strings or a dict"):
    lp.PythonProcess(args="--flag")


def test_python_process_dict_args_reach_the_node_process(tmp_path, monkeypatch):
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path))
  program = lp.Program("argv")
  out = program.add_node(lp.CourierNode(Argv), label="argv")
  process = lp.PythonProcess(args={"learning_rate": 0.5, "verbose": True}, env={"SEED": 7})
  controller = lp.launch(
    program, "test_mp", local_resources={"argv": process}, terminal="output_to_files"
  )
  try:
    argv, seed = out.dereference().with_timeout(TIMEOUT).facts()
  finally:
    controller.stop(timeout=TIMEOUT)
  assert argv[1:] == ["--learning_rate=0.5", "--verbose"]
  assert seed == "7"


@pytest.mark.parametrize("terminal", ["xterm", "gnome-terminal", "gnome-terminal-tabs"])
def test_window_terminals_fall_back_to_the_current_terminal_where_there_is_none(
  terminal, tmp_path, monkeypatch
):
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path))
  monkeypatch.delenv("DISPLAY", raising=False)
  monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
  with pytest.warns(UserWarning, match=rf"terminal='{terminal}'.*'current_terminal'.*tmux"):
    controller = lp.launch(idle_program(), "test_mp", terminal=terminal)
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []


def test_xterm_opens_a_window_per_node_following_its_log(tmp_path, monkeypatch):
  # A stand-in xterm on PATH: it records its arguments, as a real one would
  # receive them, and runs the command it is given.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  record = tmp_path / "windows"
  xterm = bin_dir / "xterm"
  xterm.write_text(
    f'#!/bin/sh\necho "$@" >> {record}\nwhile [ "$1" != "-e" ]; do shift; done\nshift\nexec "$@"\n'
  )
  xterm.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("DISPLAY", ":99")
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path / "home"))
  program = lp.Program("windows")
  program.add_node(lp.PyNode(idle), label="idle")
  program.add_node(lp.PyNode(idle), label="idle")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    controller = lp.launch(program, "test_mp", terminal="xterm")
  controller.stop(timeout=TIMEOUT)
  lines = _wait_for_lines(record, 2)
  assert sorted(line.split()[1] for line in lines) == ["idle[0]", "idle[1]"]
  for line in lines:
    assert "tail -n +1 -F" in line and str(controller.run_dir) in line


def _wait_for_lines(path: pathlib.Path, count: int) -> list[str]:
  """The lines of `path` once it has `count` (the windows start in the background)."""
  event = threading.Event()
  for _ in range(int(TIMEOUT / 0.05)):
    lines = path.read_text().splitlines() if path.exists() else []
    if len(lines) >= count:
      return lines
    event.wait(0.05)
  pytest.fail(f"{path} did not get {count} lines within {TIMEOUT} s")


class Counter:
  def __init__(self):
    self.value = 0

  def increment(self):
    self.value += 1
    return self.value


class Argv:
  def facts(self):
    return sys.argv, os.environ.get("SEED")


# Controller.wait as Launchpad's takes it.


def quick():
  pass


def test_controller_wait_takes_labels_and_return_on_first_completed(launched):
  program = lp.Program("labels")
  program.add_node(lp.PyNode(quick), label="quick")
  program.add_node(lp.PyNode(idle), label="idle")
  controller = launched(program)
  assert controller.wait(["quick"]) is True  # only the quick group
  assert not controller.done
  assert controller.wait(["idle"], timeout=0.05) is False
  assert controller.wait(return_on_first_completed=True) is True
  with pytest.raises(ValueError, match=r"no group 'nope'.*idle, quick"):
    controller.wait(["nope"])
  controller.stop(timeout=TIMEOUT)
  assert controller.wait(["idle"]) is True


def failer():
  raise KeyError("failed in node")


def test_controller_wait_raise_error(launched):
  program = lp.Program("raising")
  program.add_node(lp.PyNode(failer), label="failer")
  controller = launched(program)
  assert controller.wait(["failer"], raise_error=False) is True
  with pytest.raises(RuntimeError, match="failed in node"):
    controller.wait()


# MultiThreadingColocation.


def wait_for(event):
  assert event.wait(TIMEOUT)


def test_colocation_return_on_first_completed(launched):
  release = threading.Event()
  colocation = lp.MultiThreadingColocation(
    [lp.PyNode(quick), lp.PyNode(wait_for, release)], return_on_first_completed=True
  )
  program = lp.Program("first")
  program.add_node(colocation, label="coloc")
  controller = launched(program, serialize_py_nodes=False)
  assert controller.wait(["coloc"], timeout=0.0) is False
  states = {}
  for _ in range(int(TIMEOUT / 0.05)):
    states = {n.node: n.state for n in controller.status().nodes}
    if states["coloc[0]"] == "finished":
      break
    release.wait(0.05)
  assert states == {"coloc[0]": "finished", "coloc[0].0": "finished", "coloc[0].1": "running"}
  release.set()
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_colocation_refuses_a_return_on_first_completed_that_is_not_a_bool(value):
  with pytest.raises(TypeError, match=r"return_on_first_completed must be True or False, got"):
    lp.MultiThreadingColocation([lp.PyNode(quick)], return_on_first_completed=value)


def test_colocation_add_node_returns_a_handle():
  colocation = lp.MultiThreadingColocation([lp.PyNode(quick)])
  handle = colocation.add_node(lp.CourierNode(Counter))
  program = lp.Program("coloc")
  program.add_node(colocation, label="coloc")
  assert handle.node_name == "coloc[0].1"
  with pytest.raises(errors.ProgramError, match="already in program"):
    colocation.add_node(lp.PyNode(quick))


# lp.Address: a node's own server, on a port fixed at launch.


def raw_server(address):
  with socket.create_server(("127.0.0.1", lp.get_port_from_address(address.resolve()))) as server:
    server.settimeout(TIMEOUT)
    connection, _ = server.accept()
    with connection:
      connection.sendall(connection.recv(16).upper())
    lp.wait_for_stop(TIMEOUT)


def connect(port: int) -> socket.socket:
  """Connects once the server node listens (it starts beside this one)."""
  deadline = time.monotonic() + TIMEOUT
  while True:
    try:
      return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    except ConnectionRefusedError:
      if time.monotonic() > deadline:
        raise
      threading.Event().wait(0.02)


def raw_client(address):
  _, port = address.resolve().rsplit(":", 1)
  with connect(int(port)) as connection:
    connection.sendall(b"hello")
    reply = connection.recv(16)
  assert reply == b"HELLO", reply
  lp.stop()


def address_program():
  program = lp.Program("addressed")
  address = lp.Address("raw")
  server = lp.PyNode(raw_server, address)
  server.allocate_address(address)
  program.add_node(server, label="server")
  program.add_node(lp.PyNode(raw_client, address), label="client")
  return program


@pytest.mark.parametrize("launch_type", ["test_mt", "test_mp"])
def test_address_of_a_nodes_own_server(launch_type, tmp_path, monkeypatch):
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path))
  controller = lp.launch(address_program(), launch_type, terminal="output_to_files")
  try:
    assert controller.wait(TIMEOUT) is True
  finally:
    controller.stop(timeout=TIMEOUT)


def test_address_errors_name_the_address_and_say_what_to_do():
  address = lp.Address("raw")
  with pytest.raises(errors.ProgramError, match=r"'raw' belongs to no node.*assign"):
    address.resolve()
  node = lp.PyNode(idle)
  address.assign(node)
  with pytest.raises(errors.ProgramError, match=r"no port yet: lp.launch gives it one"):
    address.resolve()
  with pytest.raises(errors.ProgramError, match="already belongs"):
    address.assign(lp.PyNode(idle))
  with pytest.raises(ValueError, match="lowercase letters and digits"):
    lp.Address("Bad-Name")
  program = lp.Program("remote")
  program.add_node(node, label="server")
  with pytest.raises(
    errors.ProgramError, match=r"node server\[0\] owns an lp.Address.*CourierNode"
  ):
    lp.launch(program, "ssh", hosts={})


# courier_kwargs and courier_client_kwargs.


class Gate:
  """Its `hold` records how many calls run at once, until `release` is set."""

  def __init__(self, entered, release):
    self._entered = entered
    self._release = release
    self._lock = threading.Lock()
    self._running = 0
    self.most = 0

  def hold(self, i):
    with self._lock:
      self._running += 1
      self.most = max(self.most, self._running)
    self._entered.put(i)
    try:
      assert self._release.wait(TIMEOUT)
    finally:
      with self._lock:
        self._running -= 1
    return i

  def most_at_once(self):
    return self.most


def test_thread_pool_size_bounds_the_calls_running_at_once(launched):
  entered, release = queue.Queue(), threading.Event()
  program = lp.Program("pool")
  gate = program.add_node(
    lp.CourierNode(Gate, entered, release, courier_kwargs={"thread_pool_size": 2}), label="gate"
  )
  launched(program, serialize_py_nodes=False)
  client = gate.dereference().with_timeout(TIMEOUT)
  calls = [client.futures.hold(i) for i in range(5)]
  running = {entered.get(timeout=TIMEOUT), entered.get(timeout=TIMEOUT)}
  with pytest.raises(queue.Empty):
    entered.get(timeout=0.5)  # a third would run beside the two: the bound holds
  release.set()
  assert sorted(f.result(timeout=TIMEOUT) for f in calls) == [0, 1, 2, 3, 4]
  assert len(running) == 2
  assert client.most_at_once() == 2


def test_call_timeout_of_courier_client_kwargs_limits_calls(launched):
  entered, release = queue.Queue(), threading.Event()
  program = lp.Program("timeouts")
  gate = program.add_node(
    lp.CourierNode(Gate, entered, release, courier_client_kwargs={"call_timeout": 0.2}),
    label="gate",
  )
  launched(program, serialize_py_nodes=False)
  try:
    with pytest.raises(errors.CallTimeoutError):
      gate.dereference().hold(1)
  finally:
    release.set()
  gate.set_client_kwargs(call_timeout=None)
  assert gate.dereference().with_timeout(TIMEOUT).most_at_once() == 1


def test_courier_port_option_is_the_port_served(launched):
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  program = lp.Program("port")
  counter = program.add_node(lp.CourierNode(Counter, courier_kwargs={"port": port}), label="c")
  controller = launched(program)
  assert counter.dereference().with_timeout(TIMEOUT).increment() == 1
  addresses = {n.node: list(n.addresses) for n in controller.status().nodes}["c[0]"]
  assert f"127.0.0.1:{port}" in addresses


@pytest.mark.parametrize(
  ("kwargs", "error", "message"),
  [
    (
      {"courier_kwargs": {"threads": 2}},
      TypeError,
      r"lp.CourierNode\('Counter'\).*'threads'.*thread_pool_size",
    ),
    ({"courier_kwargs": {"thread_pool_size": 0}}, ValueError, "thread_pool_size.*>= 1"),
    ({"courier_kwargs": [1]}, TypeError, "courier_kwargs must be a dict"),
    ({"courier_client_kwargs": {"timeout": 1}}, TypeError, "'timeout'.*call_timeout"),
    ({"courier_client_kwargs": {"call_timeout": "soon"}}, TypeError, "call_timeout.*seconds"),
    ({"courier_client_kwargs": {"call_timeout": -1}}, ValueError, "call_timeout.*>= 0"),
  ],
)
def test_bad_courier_options_name_the_node_and_the_option(kwargs, error, message):
  with pytest.raises(error, match=message):
    lp.CourierNode(Counter, **kwargs)


# DeepMind's batching example, in every mode.


def batching_results(lines: list[str], num_clients: int) -> None:
  """Checks the RESULT lines of lp_batching: every call answered, sums right."""
  results = [line.split("RESULT ", 1)[1].split() for line in lines if "RESULT " in line]
  results = [tuple(int(v) for v in r) for r in results]
  calls = lp_batching.NUM_CALLS
  assert sorted((c, x) for c, x, _, _ in results) == sorted(
    (c, x) for c in range(num_clients) for x in range(c, c + calls)
  )
  total = sum(x for c in range(num_clients) for x in range(c, c + calls))
  count = num_clients * calls
  assert max(results, key=lambda r: r[2])[2:] == (total, total + count)
  for c in range(num_clients):
    seen = [s1 - s0 for cc, _, s0, s1 in results if cc == c]
    assert seen == sorted(seen) and all(1 <= n <= count for n in seen)


def test_batching_example_as_a_script_whose_main_returns_after_launch():
  stdout = _run([sys.executable, str(BATCHING), "--num_batching_clients=3"])
  batching_results(stdout.splitlines(), 3)


def test_batching_example_as_a_script_in_processes(tmp_path):
  stdout = _run(
    [sys.executable, str(BATCHING), "--num_batching_clients=3", "--lp_launch_type=local_mp"],
    tmp_path,
  )
  batching_results(stdout.splitlines(), 3)


def test_batching_example_under_lp_launch_multiprocess(tmp_path):
  command = [sys.executable, "-m", "launchpad.cli", "launch", "--mode=multiprocess", str(BATCHING)]
  stdout = _run([*command, "--", "--num_batching_clients=3"], tmp_path)
  batching_results(stdout.splitlines(), 3)


@pytest.mark.parametrize("launch_type", ["test_mt", "local_mt", "test_mp", "local_mp"])
def test_batching_program_in_process(launch_type, tmp_path, monkeypatch, capfd):
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path))
  controller = lp.launch(lp_batching.make_program(3), launch_type, terminal="output_to_files")
  try:
    assert controller.wait(TIMEOUT) is True
  finally:
    controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []
  if controller.run_dir is None:
    lines = capfd.readouterr().out.splitlines()
  else:
    lines = [
      line
      for path in controller.run_dir.glob("clients*.log")
      for line in path.read_text().splitlines()
    ]
  batching_results(lines, 3)


def _run(command: list[str], home: pathlib.Path | None = None) -> str:
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  if home is not None:
    env["LAUNCHPAD_HOME"] = str(home)
  try:
    result = subprocess.run(
      command, cwd=ROOT, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, env=env
    )
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"{' '.join(command)} did not end within {SCRIPT_TIMEOUT} s: {e}")
  assert result.returncode == 0, (
    f"{' '.join(command)} exited with {result.returncode}\n"
    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
  )
  return result.stdout


# Launchpad's own test idiom: unittest, assertRaises(RuntimeError).


def test_a_launchpad_style_unittest_sees_a_node_failure_as_runtime_error():
  import unittest

  class NodeTest(unittest.TestCase):
    def test_failure(self):
      program = lp.Program("failing")
      program.add_node(lp.PyNode(failer), label="failer")
      with self.assertRaises(RuntimeError):
        lp.launch(program, launch_type="test_mt", test_case=self).wait(TIMEOUT)

  result = unittest.TextTestRunner(stream=open(os.devnull, "w"), verbosity=0).run(
    unittest.defaultTestLoader.loadTestsFromTestCase(NodeTest)
  )
  assert result.wasSuccessful(), result.failures + result.errors
