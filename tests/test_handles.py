"""Tests of handles: replaced by clients inside nodes, Deferred values, pickling,
program checks, and cycles made with configure()."""

from __future__ import annotations

import collections
import dataclasses
import pickle
import threading
from typing import Any

import cloudpickle
import pytest

import launchpad as lp
from launchpad import errors

TIMEOUT = 10.0

Pair = collections.namedtuple("Pair", "left right")


@dataclasses.dataclass
class Config:
  echo: Any
  others: list
  rate: float = 0.5


@dataclasses.dataclass(frozen=True)
class Frozen:
  target: Any


class Echo:
  def __init__(self, name):
    self._name = name

  def name(self):
    return self._name


def describe(value):
  """What a node received: client leaves answer their name()."""
  if isinstance(value, lp.CourierClient):
    return ("client", value.with_timeout(TIMEOUT).name())
  if isinstance(value, lp.Handle):
    return ("handle", value.node_name)
  if isinstance(value, dict):
    return {k: describe(v) for k, v in value.items()}
  if isinstance(value, tuple) and hasattr(value, "_fields"):
    return (type(value).__name__, *(describe(v) for v in value))
  if isinstance(value, list | tuple):
    return (type(value).__name__, *(describe(v) for v in value))
  if isinstance(value, Config):
    return ("Config", describe(value.echo), describe(value.others), value.rate)
  if isinstance(value, Frozen):
    return ("Frozen", describe(value.target))
  return value


class Inspector:
  """Serves a description of the arguments it was built with, as seen inside the node."""

  def __init__(self, *args, **kwargs):
    self._thread = threading.current_thread().name
    self._description = describe({"args": list(args), "kwargs": kwargs})

  def description(self):
    return self._description

  def built_in(self):
    return self._thread


def two_echo_program():
  program = lp.Program("handles")
  one = program.add_node(lp.CourierNode(Echo, "one"), label="one")
  two = program.add_node(lp.CourierNode(Echo, "two"), label="two")
  return program, one, two


def test_handles_in_nested_containers_become_clients_inside_the_node(lp_launch):
  program, one, two = two_echo_program()
  config = Config(echo=two, others=[one, 3])
  inspector_node = lp.CourierNode(
    Inspector,
    [one, "x"],
    (two,),
    {"inner": {"deep": one}},
    Pair(left=one, right=two),
    config,
    Frozen(target=one),
    plain=7,
  )
  inspector = program.add_node(inspector_node, label="inspector")
  lp_launch(program)

  description = inspector.dereference().with_timeout(TIMEOUT).description()
  one_client, two_client = ("client", "one"), ("client", "two")
  assert description["args"] == (
    "list",
    ("list", one_client, "x"),
    ("tuple", two_client),
    {"inner": {"deep": one_client}},
    ("Pair", one_client, two_client),
    ("Config", two_client, ("list", one_client, 3), 0.5),
    ("Frozen", one_client),
  )
  assert description["kwargs"] == {"plain": 7}
  # The program's own arguments are untouched: the node got a copy.
  assert config.echo is two
  assert inspector_node.args[0][0] is one


class MappingInspector:
  def __init__(self, mapping):
    self._mapping = mapping

  def describe(self):
    mapping = self._mapping
    return type(mapping).__name__, {k: describe(v) for k, v in mapping.items()}


@pytest.mark.parametrize(
  "mapping_type",
  [collections.OrderedDict, lambda: collections.defaultdict(list)],
  ids=["OrderedDict", "defaultdict"],
)
def test_handles_in_dict_subclasses_become_clients(lp_launch, mapping_type):
  program, one, _ = two_echo_program()
  mapping = mapping_type()
  mapping["peer"] = one
  inspector = program.add_node(lp.CourierNode(MappingInspector, mapping), label="inspector")
  lp_launch(program)
  kind, description = inspector.dereference().with_timeout(TIMEOUT).describe()
  assert kind == type(mapping).__name__
  assert description == {"peer": ("client", "one")}


class Box:
  """Not a container launchpad looks into: its handle is not replaced."""

  def __init__(self, handle):
    self.handle = handle


class ExplicitUser:
  def __init__(self, box):
    self._box = box

  def held(self):
    return type(self._box.handle).__name__

  def ask(self):
    return self._box.handle.dereference().with_timeout(TIMEOUT).name()


def test_handle_dereference_explicitly_inside_a_node(lp_launch):
  program, one, _ = two_echo_program()
  user = program.add_node(lp.CourierNode(ExplicitUser, Box(one)), label="user")
  lp_launch(program)
  client = user.dereference().with_timeout(TIMEOUT)
  assert client.held() == "CourierHandle"
  assert client.ask() == "one"


def test_handle_dereference_in_the_launching_thread(lp_launch):
  program, one, two = two_echo_program()
  lp_launch(program)
  assert isinstance(one.dereference(), lp.CourierClient)
  assert one.dereference().with_timeout(TIMEOUT).name() == "one"
  assert two.dereference().with_timeout(TIMEOUT).name() == "two"


def test_handle_of_a_node_that_serves_nothing_cannot_be_dereferenced(lp_launch):
  program = lp.Program("plain")
  plain = program.add_node(lp.PyNode(lp.wait_for_stop, TIMEOUT), label="waiter")
  lp_launch(program)
  with pytest.raises(errors.ProgramError, match=r"waiter\[0\].*CourierNode"):
    plain.dereference()


def test_dereference_outside_a_program_raises_launchpad_error():
  _, one, _ = two_echo_program()
  with pytest.raises(errors.LaunchpadError, match="no launchpad program"):
    one.dereference()


# Deferred.


class Resource:
  """Built by a Deferred: holds an unpicklable lock and a client."""

  def __init__(self, echo, scale):
    self.lock = threading.Lock()
    self.echo = echo
    self.scale = scale
    self.thread = threading.current_thread().name


def add(a, b):
  return a + b


class ResourceUser:
  def __init__(self, resource, numbers):
    self._resource = resource
    self._numbers = numbers

  def summary(self):
    resource = self._resource
    return {
      "type": type(resource).__name__,
      "has_lock": hasattr(resource.lock, "acquire"),
      "echo": resource.echo.with_timeout(TIMEOUT).name(),
      "scale": resource.scale,
      "built_in": resource.thread,
      "numbers": self._numbers,
    }


def test_deferred_is_built_inside_the_node_with_handles_dereferenced(lp_launch):
  program, one, _ = two_echo_program()
  deferred = lp.Deferred(Resource, one, scale=3)
  user = program.add_node(
    lp.CourierNode(ResourceUser, deferred, numbers=[lp.Deferred(add, 1, lp.Deferred(add, 2, 3))]),
    label="user",
  )
  lp_launch(program)  # the lock is made in the node, so the program pickles
  summary = user.dereference().with_timeout(TIMEOUT).summary()
  assert summary == {
    "type": "Resource",
    "has_lock": True,
    "echo": "one",
    "scale": 3,
    "built_in": "user[0]",
    "numbers": [6],
  }
  assert repr(deferred) == "Deferred('Resource')"


# Pickling.


class VeryDistinctiveServiceName:
  def ping(self):
    return "pong"


def test_handle_pickles_as_the_node_name_only():
  program = lp.Program("pickling")
  handle = program.add_node(lp.CourierNode(VeryDistinctiveServiceName), label="svc")
  for dumps in (pickle.dumps, cloudpickle.dumps):
    data = dumps(handle)
    assert b"VeryDistinctiveServiceName" not in data
    assert b"svc[0]" in data
    restored = pickle.loads(data)
    assert type(restored) is lp.CourierHandle
    assert restored.node is None
    assert restored.node_name == "svc[0]"
    assert "svc[0]" in repr(restored)


def test_pickling_a_handle_of_an_unadded_node_raises():
  handle = lp.CourierNode(VeryDistinctiveServiceName).create_handle()
  with pytest.raises(errors.ProgramError, match="never added"):
    pickle.dumps(handle)


def test_handle_created_before_add_names_the_node_once_added():
  node = lp.CourierNode(Echo, "early")
  handle = node.create_handle()
  assert "unadded" in repr(handle)
  program = lp.Program("early")
  program.add_node(node, label="early")
  assert handle.node is node
  assert handle.node_name == "early[0]"


# Handles that do not belong to the program.


def consume(peer):
  del peer


def test_handle_of_a_node_never_added_is_rejected_at_launch():
  program = lp.Program("main")
  orphan = lp.CourierNode(Echo, "orphan").create_handle()
  program.add_node(lp.PyNode(consume, {"peer": [orphan]}), label="consumer")
  with pytest.raises(errors.ProgramError) as info:
    lp.launch(program, launch_type="test_mt")
  message = str(info.value)
  assert "consumer[0]" in message
  assert "CourierNode" in message and "never added" in message
  assert "['peer'][0]" in message  # where the handle is
  # Nothing started.
  with pytest.raises(errors.LaunchpadError, match="no launchpad program"):
    lp.stop()


def test_handle_from_another_program_is_rejected_at_launch():
  other = lp.Program("other")
  foreign = other.add_node(lp.CourierNode(Echo, "foreign"), label="foreign")
  program = lp.Program("main")
  program.add_node(lp.PyNode(consume, lp.Deferred(consume, foreign)), label="consumer")
  with pytest.raises(errors.ProgramError) as info:
    lp.launch(program, launch_type="test_mt")
  message = str(info.value)
  assert "consumer[0]" in message
  assert "foreign[0]" in message
  assert "'other'" in message and "'main'" in message
  assert "<Deferred>" in message


def test_restored_handle_from_another_process_is_rejected_at_launch():
  other = lp.Program("other")
  foreign = pickle.loads(pickle.dumps(other.add_node(lp.CourierNode(Echo, "x"), label="far")))
  program = lp.Program("main")
  program.add_node(lp.PyNode(consume, foreign), label="consumer")
  with pytest.raises(errors.ProgramError, match=r"consumer\[0\].*far\[0\]"):
    lp.launch(program, launch_type="test_mt")


# Cycles with configure().


class Peer:
  def __init__(self, name, peer):
    self._name = name
    self._peer = peer

  def name(self):
    return self._name

  def peer_name(self):
    return self._peer.with_timeout(TIMEOUT).name()


def test_configure_lets_two_nodes_hold_each_others_handles(lp_launch):
  program = lp.Program("cycle")
  ping = lp.CourierNode(Peer)
  pong = lp.CourierNode(Peer)
  ping_handle = program.add_node(ping, label="ping")
  pong_handle = program.add_node(pong, label="pong")
  ping.configure("ping", peer=pong_handle)
  pong.configure("pong", peer=ping_handle)
  controller = lp_launch(program)
  assert ping_handle.dereference().with_timeout(TIMEOUT).peer_name() == "pong"
  assert pong_handle.dereference().with_timeout(TIMEOUT).peer_name() == "ping"
  controller.stop(timeout=TIMEOUT)
  assert controller.failures() == []
