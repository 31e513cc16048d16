"""The plan: what must run, checked before anything runs.

A launcher gets one worker per top-level node (a colocation is one worker),
the names of every node that reports to the coordinator, and the program
secret. Making the plan validates the graph and checks that every node can
travel to another process, naming the node and the path of what cannot.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from launchpad import errors, handles
from launchpad.courier import serialization
from launchpad.nodes.base import Node
from launchpad.program import Program
from launchpad.restarts import RestartPolicy


@dataclasses.dataclass
class Plan:
  program: str
  secret: bytes
  workers: list[Node]
  node_names: list[str]
  source: Program | None = None  # the definition, in the launching process

  @property
  def restart_policies(self) -> dict[str, RestartPolicy]:
    return {worker.name: worker.restart_policy for worker in self.workers}


def make_plan(program: Program, serialize: bool = True) -> Plan:
  """Validates `program`; with `serialize`, also that every node pickles."""
  workers = [worker for node in program.get_all_nodes() for worker in node.workers()]
  if not workers:
    raise errors.ProgramError(f"program {program.name} has no nodes; add some with add_node().")
  nodes = [n for worker in workers for n in (worker, *worker.inner_nodes())]
  for node in nodes:
    for path, handle in handles.find_handles(node.arguments(), "arguments"):
      _check_handle(program, node, path, handle)
  if serialize:
    for worker in workers:
      check_serializable(worker)
  return Plan(program.name, os.urandom(32), workers, [n.name for n in nodes], program)


def _check_handle(program: Program, node: Node, path: str, handle: handles.Handle) -> None:
  target = handle.node
  if target is not None and target.program is program:
    return
  if target is None:
    what = f"a handle of node {handle.node_name} from another process"
  elif target.program is None:
    what = f"a handle of a {type(target).__name__} that was never added to a program"
  else:
    what = f"a handle of node {target.name} of program {target.program.name!r}"
  raise errors.ProgramError(
    f"node {node.name} receives {what} (at {path}); handles may only refer to "
    f"nodes of the same program: add that node to program {program.name!r}."
  )


def check_serializable(node: Node) -> None:
  """Raises SerializationError naming `node` and the path of the part that
  cannot be pickled."""
  try:
    serialization.cloudpickle_dumps(node.arguments())
  except Exception as e:
    path, error = _find_unpicklable(node.arguments(), "", set()) or ("", e)
    raise errors.SerializationError(
      f"node {node.name} cannot be sent to its worker: {path.lstrip('.') or 'its arguments'} "
      f"cannot be pickled ({type(error).__name__}: {error}). Build it inside the node "
      "instead, with lp.Deferred(factory, ...) or in the constructor; or launch with "
      "serialize_py_nodes=False when all nodes run as threads."
    ) from e


def _find_unpicklable(value: Any, path: str, seen: set[int]) -> tuple[str, Exception] | None:
  """The deepest part of `value` that fails to pickle, with its path.

  `seen` holds the objects on the way down, so back references are not
  followed again.
  """
  if id(value) in seen:
    return None
  try:
    serialization.cloudpickle_dumps(value)
    return None
  except Exception as e:  # noqa: BLE001
    error = e
  seen.add(id(value))
  for child_path, child in _parts(value, path):
    found = _find_unpicklable(child, child_path, seen)
    if found is not None:
      return found
  return path, error


def _parts(value: Any, path: str):
  if isinstance(value, handles.Deferred):
    yield f"{path}<Deferred>.fn", value.fn
    yield f"{path}<Deferred>.args", value.args
    yield f"{path}<Deferred>.kwargs", value.kwargs
    return
  found = False
  for found_part in handles.children(value, path):
    found = True
    yield found_part
  if not found and hasattr(value, "__dict__") and not isinstance(value, type):
    for name, attribute in vars(value).items():
      yield f"{path}.{name}", attribute
