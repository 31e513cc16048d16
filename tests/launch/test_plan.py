"""Tests of the launch plan: program validation and the serialization check."""

from __future__ import annotations

import dataclasses
import threading
from concurrent import futures
from typing import Any

import cloudpickle
import pytest

import launchpad as lp
from launchpad import errors
from launchpad.launch import plan as plan_lib
from tests.launching import launching

TIMEOUT = 10.0


@dataclasses.dataclass
class Holder:
  lock: Any


@dataclasses.dataclass
class Config:
  env: Any
  steps: int = 10


class PlainHolder:
  def __init__(self, name, lock):
    self.name = name
    self.lock = lock


class Linked:
  """An object graph with a back-reference, as trees with parent links have."""

  def __init__(self):
    self.owner = self
    self.size = 3
    self.lock = threading.Lock()


def use_config(config, out=None):
  if out is not None:
    out.set_result(type(config.env.lock).__name__)


class Service:
  def __init__(self, config):
    self.config = config

  def ping(self):
    return "pong"


launched = launching()


def assert_nothing_runs():
  with pytest.raises(errors.LaunchpadError, match="no launchpad program"):
    lp.stop()


@pytest.mark.parametrize("launch_type", ["test_mt", "local_mt"])
def test_unpicklable_nested_argument_names_node_and_path(launched, launch_type):
  program = lp.Program("plan")
  program.add_node(
    lp.CourierNode(Service, Config(env=Holder(lock=threading.Lock()))), label="learner"
  )
  with pytest.raises(errors.SerializationError) as info:
    launched(program, launch_type=launch_type)
  message = str(info.value)
  assert "learner[0]" in message
  assert "env.lock" in message
  assert "lock" in message.lower()
  assert "Deferred" in message  # says how to fix it
  assert "serialize_py_nodes=False" in message
  assert isinstance(info.value, TypeError)
  assert info.value.__cause__ is not None
  assert_nothing_runs()


def test_unpicklable_attribute_of_a_plain_object_is_found():
  program = lp.Program("plan")
  holder = PlainHolder("env", threading.Lock())
  program.add_node(lp.PyNode(use_config, {"cfg": [1, holder]}), label="actor")
  with pytest.raises(errors.SerializationError) as info:
    lp.launch(program, launch_type="test_mt")
  message = str(info.value)
  assert "actor[0]" in message
  assert "['cfg'][1].lock" in message
  assert ".name" not in message  # the picklable sibling is not blamed


def test_unpicklable_keyword_argument_and_deferred_argument_paths():
  program = lp.Program("plan")
  program.add_node(
    lp.PyNode(use_config, config=lp.Deferred(Config, env=threading.Lock())), label="actor"
  )
  with pytest.raises(errors.SerializationError) as info:
    lp.launch(program, launch_type="test_mt")
  message = str(info.value)
  assert "actor[0]" in message
  assert "<Deferred>.kwargs['env']" in message


def test_path_to_unpicklable_part_of_an_object_with_a_back_reference():
  program = lp.Program("plan")
  program.add_node(lp.PyNode(use_config, Linked()), label="actor")
  with pytest.raises(errors.SerializationError) as info:
    lp.launch(program, launch_type="test_mt")
  message = str(info.value)
  assert "actor[0]" in message
  assert "[0].lock" in message, message
  assert ".owner.owner" not in message


def test_unpicklable_part_of_a_colocated_node_names_the_colocation():
  program = lp.Program("plan")
  program.add_node(
    lp.MultiThreadingColocation(
      [lp.PyNode(use_config, 1), lp.PyNode(use_config, Holder(lock=threading.Lock()))]
    ),
    label="pair",
  )
  with pytest.raises(errors.SerializationError) as info:
    lp.launch(program, launch_type="test_mt")
  message = str(info.value)
  assert "pair[0]" in message
  assert ".lock" in message


@pytest.mark.parametrize("launch_type", ["test_mt", "local_mt", "threads"])
def test_serialize_py_nodes_false_skips_the_check_in_threads_mode(launched, launch_type):
  out = futures.Future()
  program = lp.Program("plan")
  program.add_node(
    lp.PyNode(use_config, Config(env=Holder(lock=threading.Lock())), out), label="learner"
  )
  controller = launched(program, launch_type=launch_type, serialize_py_nodes=False)
  assert out.result(timeout=TIMEOUT) == "lock"
  assert controller.wait(TIMEOUT) is True


def test_deferred_makes_an_unpicklable_value_inside_the_node(launched):
  program = lp.Program("plan")
  handle = program.add_node(
    lp.CourierNode(Service, Config(env=lp.Deferred(Holder, lock=lp.Deferred(threading.Lock)))),
    label="learner",
  )
  launched(program, launch_type="test_mt")  # the default check passes
  assert handle.dereference().with_timeout(TIMEOUT).ping() == "pong"


def test_empty_program_is_rejected():
  program = lp.Program("nothing")
  with pytest.raises(errors.ProgramError) as info:
    lp.launch(program, launch_type="test_mt")
  message = str(info.value)
  assert "nothing" in message
  assert "no nodes" in message
  assert_nothing_runs()


def test_launch_rejects_a_non_program():
  with pytest.raises(TypeError, match=r"lp\.Program"):
    lp.launch([lp.PyNode(use_config, 1)], launch_type="test_mt")


def test_plan_lists_every_node_and_one_worker_per_top_level_node():
  program = lp.Program("plan")
  single = lp.PyNode(use_config, 1)
  inner = [lp.PyNode(use_config, 2), lp.PyNode(use_config, 3)]
  colocation = lp.MultiThreadingColocation(inner)
  program.add_node(single, label="single")
  program.add_node(colocation, label="pair")
  plan = plan_lib.make_plan(program)
  assert plan.program == "plan"
  assert plan.workers == [single, colocation]
  assert set(plan.node_names) == {"single[0]", "pair[0]", "pair[0].0", "pair[0].1"}
  assert len(plan.secret) >= 16
  assert plan_lib.make_plan(program).secret != plan.secret  # a new secret per launch


def test_a_nodes_pickle_does_not_hold_the_rest_of_the_program():
  def actor_pickle_sizes(actors: int) -> set[int]:
    program = lp.Program("wide")
    service = program.add_node(lp.CourierNode(Service), label="service")
    for _ in range(actors):
      program.add_node(lp.PyNode(use_config, service), label="actor")
    plan = plan_lib.make_plan(program, serialize=True)
    return {len(cloudpickle.dumps(worker)) for worker in plan.workers[1:]}

  small, large = actor_pickle_sizes(2), actor_pickle_sizes(200)
  # The same bytes, whatever the program's size, but for the digits of a name.
  assert max(large) - max(small) <= 2, (small, large)
  program = lp.Program("one")
  program.add_node(lp.PyNode(use_config, "config"), label="actor")
  (node,) = program.get_all_nodes()
  travelled = cloudpickle.loads(cloudpickle.dumps(node))
  assert (travelled.name, travelled.program, node.program) == ("actor[0]", None, program)
