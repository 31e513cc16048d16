"""Tests of the program graph (lp.Program) and of what each node type does when run."""

from __future__ import annotations

import threading
from concurrent import futures

import pytest

import launchpad as lp
from launchpad import errors
from tests.launching import launching

TIMEOUT = 10.0


launch_expecting_failure = launching(launch_type="test_mt")


def worker_fn():
  pass


class Learner:
  def step(self):
    return 1


# Program: labels, groups, names.


def test_add_node_returns_a_handle_of_that_node():
  program = lp.Program("agent")
  node = lp.CourierNode(Learner)
  handle = program.add_node(node, label="learner")
  assert isinstance(handle, lp.Handle)
  assert isinstance(handle, lp.CourierHandle)
  assert handle.node is node
  assert handle.node_name == "learner[0]"


def test_labels_from_group_explicit_and_default():
  program = lp.Program("agent")
  with program.group("actor"):
    a0 = lp.PyNode(worker_fn)
    a1 = lp.PyNode(worker_fn)
    program.add_node(a0)
    program.add_node(a1)
  explicit = lp.PyNode(worker_fn)
  program.add_node(explicit, label="evaluator")
  by_function = lp.PyNode(worker_fn)
  program.add_node(by_function)
  by_class = lp.CourierNode(Learner)
  program.add_node(by_class)

  assert (a0.label, a0.index, a0.name) == ("actor", 0, "actor[0]")
  assert (a1.label, a1.index, a1.name) == ("actor", 1, "actor[1]")
  assert explicit.name == "evaluator[0]"
  assert by_function.name == "worker_fn[0]"
  assert by_class.name == "learner[0]"


def test_group_ends_with_its_block():
  program = lp.Program("agent")
  with program.group("actor"):
    program.add_node(lp.PyNode(worker_fn))
  after = lp.PyNode(worker_fn)
  program.add_node(after)
  assert after.label == "worker_fn"


def test_groups_map_labels_to_nodes_in_order():
  program = lp.Program("agent")
  first = lp.PyNode(worker_fn)
  learner = lp.CourierNode(Learner)
  second = lp.PyNode(worker_fn)
  program.add_node(first, label="actor")
  program.add_node(learner, label="learner")
  program.add_node(second, label="actor")

  groups = program.groups
  assert list(groups) == ["actor", "learner"]
  assert groups["actor"][0] is first
  assert groups["actor"][1] is second
  assert groups["learner"] == [learner]
  assert second.name == "actor[1]"
  # The mapping is a copy: changing it does not change the program.
  groups["actor"].clear()
  assert len(program.groups["actor"]) == 2


def test_get_all_nodes_lists_every_node_by_group():
  program = lp.Program("agent")
  first = lp.PyNode(worker_fn)
  learner = lp.CourierNode(Learner)
  second = lp.PyNode(worker_fn)
  program.add_node(first, label="actor")
  program.add_node(learner, label="learner")
  program.add_node(second, label="actor")
  assert program.get_all_nodes() == [first, second, learner]


def test_make_program_labels_nodes_after_their_function_or_class():
  a = lp.PyNode(worker_fn)
  b = lp.PyNode(worker_fn)
  c = lp.CourierNode(Learner)
  program = lp.make_program(a, b, c, name="made")
  assert isinstance(program, lp.Program)
  assert program.name == "made"
  assert program.get_all_nodes() == [a, b, c]
  assert [n.name for n in (a, b, c)] == ["worker_fn[0]", "worker_fn[1]", "learner[0]"]


def test_default_label_of_a_lambda_is_a_valid_label():
  program = lp.Program("agent")
  node = lp.PyNode(lambda: None)
  program.add_node(node)
  assert node.label
  assert all(ch.isalnum() or ch in "_.-" for ch in node.label), node.label


def test_colocation_default_label_and_inner_names():
  program = lp.Program("agent")
  inner = [lp.PyNode(worker_fn), lp.CourierNode(Learner)]
  colocation = lp.MultiThreadingColocation(inner)
  program.add_node(colocation)
  assert colocation.name == "colocation[0]"
  assert [n.name for n in inner] == ["colocation[0].0", "colocation[0].1"]


# Program: errors.


def test_empty_label_is_rejected():
  program = lp.Program("agent")
  with pytest.raises(errors.ProgramError, match="label") as info:
    program.add_node(lp.PyNode(worker_fn), label="")
  assert "''" in str(info.value)
  assert program.get_all_nodes() == []


@pytest.mark.parametrize("label", ["has space", "a/b", "x[0]", "é!"])
def test_bad_label_characters_are_rejected(label):
  program = lp.Program("agent")
  with pytest.raises(errors.ProgramError) as info:
    program.add_node(lp.PyNode(worker_fn), label=label)
  message = str(info.value)
  assert repr(label) in message
  assert "letters, digits" in message


def test_bad_group_label_is_rejected():
  program = lp.Program("agent")
  with pytest.raises(errors.ProgramError, match="group label 'bad label'"):
    with program.group("bad label"):
      pass


def test_bad_program_name_is_rejected():
  with pytest.raises(errors.ProgramError, match="program name"):
    lp.Program("my program")


def test_nested_groups_are_rejected():
  program = lp.Program("agent")
  with program.group("outer"):
    with pytest.raises(errors.ProgramError) as info:
      with program.group("inner"):
        pass
  message = str(info.value)
  assert "'inner'" in message and "'outer'" in message
  assert "nested" in message
  # The outer group ended normally: nodes added now get their own label.
  node = lp.PyNode(worker_fn)
  program.add_node(node)
  assert node.label == "worker_fn"


def test_label_inside_a_group_is_rejected():
  program = lp.Program("agent")
  with program.group("actor"):
    with pytest.raises(errors.ProgramError) as info:
      program.add_node(lp.PyNode(worker_fn), label="learner")
  message = str(info.value)
  assert "'learner'" in message and "'actor'" in message
  assert program.get_all_nodes() == []


def test_adding_the_same_node_twice_is_rejected():
  program = lp.Program("agent")
  node = lp.PyNode(worker_fn)
  program.add_node(node, label="actor")
  with pytest.raises(errors.ProgramError) as info:
    program.add_node(node, label="actor")
  message = str(info.value)
  assert "actor[0]" in message
  assert "'agent'" in message
  assert program.get_all_nodes() == [node]


def test_adding_a_node_to_two_programs_is_rejected():
  first = lp.Program("first")
  second = lp.Program("second")
  node = lp.PyNode(worker_fn)
  first.add_node(node, label="actor")
  with pytest.raises(errors.ProgramError) as info:
    second.add_node(node, label="actor")
  message = str(info.value)
  assert "actor[0]" in message and "'first'" in message
  assert node.program is first
  assert node.name == "actor[0]"


def test_failed_add_node_leaves_the_program_unchanged():
  first = lp.Program("first")
  second = lp.Program("second")
  node = lp.PyNode(worker_fn)
  first.add_node(node, label="actor")
  with pytest.raises(errors.ProgramError):
    second.add_node(node, label="shared")
  assert second.get_all_nodes() == []
  assert second.groups == {}


def test_add_node_with_a_non_node_is_rejected():
  program = lp.Program("agent")
  with pytest.raises(TypeError) as info:
    program.add_node(worker_fn)  # the function, not lp.PyNode(worker_fn)
  message = str(info.value)
  assert "worker_fn" in message
  assert "node" in message
  assert program.get_all_nodes() == []


def test_node_constructors_reject_non_callables_and_non_nodes():
  with pytest.raises(TypeError, match="callable"):
    lp.PyNode(42)
  with pytest.raises(TypeError, match="nodes"):
    lp.MultiThreadingColocation([lp.PyNode(worker_fn), "not a node"])
  with pytest.raises(errors.ProgramError, match="at least one node"):
    lp.MultiThreadingColocation([])


# Nodes: what running them does.


def record_call(out, a, b, *, c):
  out.set_result((a, b, c, threading.current_thread().name))


def test_py_node_runs_fn_with_its_arguments(lp_launch):
  out = futures.Future()
  program = lp.Program("py")
  program.add_node(lp.PyNode(record_call, out, 1, [2, 3], c={"k": 4}))
  controller = lp_launch(program, serialize_py_nodes=False)
  a, b, c, thread = out.result(timeout=TIMEOUT)
  assert (a, b, c) == (1, [2, 3], {"k": 4})
  assert thread != threading.current_thread().name
  # The only node returned: the program ends by itself, without failures.
  assert controller.wait(TIMEOUT) is True


class Runner:
  def __init__(self, constructed, ran):
    self.ran = ran
    constructed.set_result(threading.current_thread().name)

  def run(self):
    self.ran.set_result(True)


class NoRun:
  def __init__(self, constructed):
    constructed.set_result(True)


def test_py_class_node_constructs_and_calls_run(lp_launch):
  constructed, ran = futures.Future(), futures.Future()
  program = lp.Program("cls")
  program.add_node(lp.PyClassNode(Runner, constructed, ran=ran))
  controller = lp_launch(program, serialize_py_nodes=False)
  assert constructed.result(timeout=TIMEOUT) != threading.current_thread().name
  assert ran.result(timeout=TIMEOUT) is True
  assert controller.wait(TIMEOUT) is True


def test_py_class_node_without_run_only_constructs(lp_launch):
  constructed = futures.Future()
  program = lp.Program("cls")
  program.add_node(lp.PyClassNode(NoRun, constructed))
  controller = lp_launch(program, serialize_py_nodes=False)
  assert constructed.result(timeout=TIMEOUT) is True
  assert controller.wait(TIMEOUT) is True


def test_py_class_node_disable_run_skips_run(lp_launch):
  constructed, ran = futures.Future(), futures.Future()
  program = lp.Program("cls")
  node = lp.PyClassNode(Runner, constructed, ran)
  node.disable_run()
  program.add_node(node)
  controller = lp_launch(program, serialize_py_nodes=False)
  assert constructed.result(timeout=TIMEOUT)
  # Once the program is over, run() would have been called if it were going to be.
  assert controller.wait(TIMEOUT) is True
  assert not ran.done()


class Service:
  def __init__(self, base):
    self.base = base

  def add(self, x, y=0):
    return self.base + x + y

  def __call__(self, x):
    return ("called", x)

  def _private(self):
    return "secret"


def test_courier_node_serves_public_methods_and_call(lp_launch):
  program = lp.Program("svc")
  handle = program.add_node(lp.CourierNode(Service, 100))
  controller = lp_launch(program)
  client = handle.dereference().with_timeout(TIMEOUT)
  assert client.add(1, y=2) == 103
  assert client(7) == ("called", 7)
  assert client.futures.add(5).result(timeout=TIMEOUT) == 105
  with pytest.raises(AttributeError, match="_private") as info:
    client._private()
  assert "add" in str(info.value)  # lists the methods that exist
  # Without run(), the node serves until the program is stopped.
  assert controller.wait(0.2) is False
  controller.stop(timeout=TIMEOUT)
  assert controller.done
  assert controller.failures() == []


class Finishes:
  def __init__(self, finish):
    self._finish = finish

  def ping(self):
    return "pong"

  def run(self):
    if not self._finish.wait(TIMEOUT):
      raise TimeoutError("the test never set the finish event")


def test_courier_node_stops_serving_when_run_returns(lp_launch):
  finish = threading.Event()
  program = lp.Program("svc")
  handle = program.add_node(lp.CourierNode(Finishes, finish))
  controller = lp_launch(program, serialize_py_nodes=False)
  client = handle.dereference().with_timeout(TIMEOUT)
  assert client.ping() == "pong"  # serving while run() runs
  assert controller.wait(0.1) is False
  finish.set()
  # run() returned: the node ended, and with it the program.
  assert controller.wait(TIMEOUT) is True
  assert controller.failures() == []
  with pytest.raises((errors.ProgramStoppedError, errors.ConnectionLostError, TimeoutError)):
    client.with_timeout(1.0).ping()


class RunMustNotBeCalled:
  def ping(self):
    return "pong"

  def run(self):
    raise AssertionError("run() was called despite disable_run()")


def test_courier_node_disable_run_serves_until_stop(lp_launch):
  program = lp.Program("svc")
  node = lp.CourierNode(RunMustNotBeCalled)
  node.disable_run()
  handle = program.add_node(node)
  controller = lp_launch(program)
  assert handle.dereference().with_timeout(TIMEOUT).ping() == "pong"
  assert controller.wait(0.2) is False
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []


# Colocation.


class Named:
  def __init__(self, name):
    self._name = name

  def name(self):
    return self._name


def ask_both(first, second, out):
  out.set_result((first.name(), second.name()))


def test_colocation_runs_inner_nodes_whose_handles_work_from_other_nodes(lp_launch):
  n1 = lp.CourierNode(Named, "one")
  n2 = lp.CourierNode(Named, "two")
  h1, h2 = n1.create_handle(), n2.create_handle()
  out = futures.Future()
  program = lp.Program("colo")
  colocation = lp.MultiThreadingColocation([n1, n2])
  program.add_node(colocation, label="pair")
  program.add_node(lp.PyNode(ask_both, h1, h2, out), label="caller")
  assert (n1.name, n2.name) == ("pair[0].0", "pair[0].1")
  assert (h1.node_name, h2.node_name) == ("pair[0].0", "pair[0].1")

  controller = lp_launch(program, serialize_py_nodes=False)
  assert out.result(timeout=TIMEOUT) == ("one", "two")
  # And from the test's thread too.
  assert h2.dereference().with_timeout(TIMEOUT).name() == "two"
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []


def raise_in_colocation():
  raise RuntimeError("inner node broke")


def test_failure_of_a_colocated_node_names_the_inner_node(launch_expecting_failure):
  program = lp.Program("colo")
  program.add_node(
    lp.MultiThreadingColocation([lp.CourierNode(Named, "ok"), lp.PyNode(raise_in_colocation)]),
    label="pair",
  )
  controller = launch_expecting_failure(program)
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  assert info.value.node == "pair[0].1"
  assert "inner node broke" in str(info.value)
  assert controller.done
