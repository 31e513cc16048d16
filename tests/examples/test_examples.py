"""The examples: each one run as a script, and each program run in test mode.

The script runs check what a user sees (`python examples/NAME.py`); the test
mode runs check what the programs do, through their nodes' real RPC.
"""

import importlib.util
import pathlib
import re
import subprocess
import sys
import types

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# A script run takes a second or two; this only bounds a hang.
SCRIPT_TIMEOUT_SECONDS = 30.0
# Bound on every wait for a program or a call in test mode.
WAIT_SECONDS = 30.0


def _load_example(name: str) -> types.ModuleType:
  """Imports examples/NAME.py once (its absl flags may be defined only once)."""
  module_name = f"launchpad_examples_{name}"
  if module_name in sys.modules:
    return sys.modules[module_name]
  spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  spec.loader.exec_module(module)
  return module


hello_world = _load_example("hello_world")
consumer_producers = _load_example("consumer_producers")
batching = _load_example("batching")
program_wait = _load_example("program_wait")


def _run_script(name: str, *flags: str) -> list[str]:
  """Runs examples/NAME.py in a new interpreter; returns its stdout lines."""
  command = [sys.executable, str(EXAMPLES / f"{name}.py"), *flags]
  try:
    result = subprocess.run(
      command, cwd=ROOT, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_SECONDS
    )
  except subprocess.TimeoutExpired as e:
    pytest.fail(
      f"{' '.join(command[1:])} did not end within {SCRIPT_TIMEOUT_SECONDS} s.\n"
      f"stdout:\n{_text(e.stdout)}\nstderr:\n{_text(e.stderr)}"
    )
  assert result.returncode == 0, (
    f"{' '.join(command[1:])} exited with {result.returncode}.\n"
    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
  )
  return result.stdout.splitlines()


def _text(output: bytes | str | None) -> str:
  if isinstance(output, bytes):
    return output.decode(errors="replace")
  return output or ""


# hello_world


def test_hello_world_script_greets_and_exits():
  assert _run_script("hello_world") == ["Hello World!"]


def test_hello_world_program_ends_after_its_node_returns(lp_launch, capsys):
  controller = lp_launch(hello_world.make_program(greeting="Hi there"))
  assert controller.wait(timeout=WAIT_SECONDS)
  assert capsys.readouterr().out.splitlines() == ["Hi there"]


# consumer_producers


def test_consumer_producers_script_gathers_every_producer():
  lines = _run_script("consumer_producers", "--num_producers=3", "--num_steps=4")
  assert lines == [f"Step {step}: results [0, 1, 2]" for step in range(4)]


def test_consumer_steps_call_every_producer(lp_launch):
  # As a test of a larger program would: keep the consumer's loop from
  # running and drive its steps from the test.
  program = consumer_producers.make_program(num_producers=3)
  (consumer_node,) = program.groups["consumer"]
  consumer_node.disable_run()
  lp_launch(program)
  consumer = consumer_node.create_handle().dereference().with_timeout(WAIT_SECONDS)
  for _ in range(10):
    assert consumer.step() == [0, 1, 2]


def test_consumer_producers_program_stops_itself(lp_launch, capsys):
  controller = lp_launch(consumer_producers.make_program(num_producers=2, num_steps=3))
  assert controller.wait(timeout=WAIT_SECONDS)
  assert controller.failures() == []
  assert capsys.readouterr().out.splitlines() == [
    f"Step {step}: results [0, 1]" for step in range(3)
  ]


# batching

_CLIENT_LINE = re.compile(r"^Client (\d+): (\d+) \+ (\d+) = (\d+) \(in a batch of (\d+)\)$")


def _check_batching_output(lines: list[str], num_clients: int, num_calls: int) -> None:
  calls: dict[int, list[int]] = {client: [] for client in range(num_clients)}
  for line in lines[:-1]:
    match = _CLIENT_LINE.match(line)
    assert match, line
    client, x, y, total, batch = map(int, match.groups())
    assert (y, total) == (x + 1, 2 * x + 1), line
    assert 1 <= batch <= num_clients, line
    calls[client].append(x)
  for client, xs in calls.items():
    assert xs == list(range(client, client + num_calls))
  sums = [sum(range(c, c + num_calls)) for c in range(num_clients)]
  total = [sum(sums), sum(sums) + num_clients * num_calls]
  assert lines[-1] == f"Server: total of everything received {total}"


def test_batching_script_answers_every_client():
  lines = _run_script("batching", "--num_clients=3", "--num_calls=5")
  _check_batching_output(lines, num_clients=3, num_calls=5)


def test_batching_program_ends_when_clients_are_done(lp_launch, capsys):
  controller = lp_launch(batching.make_program(num_clients=3, num_calls=4))
  assert controller.wait(timeout=WAIT_SECONDS)
  assert controller.failures() == []
  _check_batching_output(capsys.readouterr().out.splitlines(), num_clients=3, num_calls=4)


def test_batched_server_gives_each_caller_its_own_row(lp_launch):
  program = batching.make_program(num_clients=4)
  for client_node in program.groups["clients"]:
    client_node.disable_run()  # the test is the only caller
  lp_launch(program)
  server = program.groups["server"][0].create_handle().dereference().with_timeout(WAIT_SECONDS)

  # Four concurrent calls fill one batch of four.
  futures = [server.futures.compute(np.array([10 * i, i])) for i in range(4)]
  results = [future.result(timeout=WAIT_SECONDS) for future in futures]

  for i, (total, batch) in enumerate(results):
    assert total == 11 * i
    assert batch == 4


# program_wait


def _check_program_wait_output(lines: list[str]) -> None:
  stop = lines.index("stop_program: stopping the program")
  assert set(lines[:stop]) <= {"poll_until_stop: not stopping yet, working a bit more"}
  after = lines[stop + 1 :]
  for line in [
    "poll_until_stop: stopping cleanly",
    "block_until_stop: stopping cleanly",
    "wait_on_stop_event: stopping cleanly",
    "use_stop_handler: stopping cleanly",
  ]:
    assert after.count(line) == 1, line
  handler = after.index("use_stop_handler: the stop handler was called")
  assert handler < after.index("use_stop_handler: stopping cleanly")


def test_program_wait_script_waits_for_every_node():
  lines = _run_script("program_wait")
  assert lines[-1] == "Program finished."
  _check_program_wait_output(lines[:-1])


def test_program_wait_nodes_see_the_stop(lp_launch, capsys):
  controller = lp_launch(program_wait.make_program(run_seconds=0.3))
  assert controller.wait(timeout=WAIT_SECONDS)
  assert controller.failures() == []
  _check_program_wait_output(capsys.readouterr().out.splitlines())
