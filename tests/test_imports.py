"""Building a program loads no RPC stack.

The definition layer (programs, groups, node types, handles) is plain
objects: defining a program, in a launch script or in every node process
that unpickles one, must not import gRPC, which only the control plane uses
once a program runs. Each test builds an agent-shaped program in a fresh
interpreter, where nothing else has imported gRPC yet, and lists the gRPC
modules loaded.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import psutil

import launchpad as lp
from tests.launching import launching

TIMEOUT = 120.0

# An agent: a replay node, a learner serving methods with the replay's handle,
# actors in a group holding both handles, evaluators colocated in threads,
# and a program made by make_program.
BUILD_AGENT = """
def actor(learner, replay):
  pass


class Learner:
  def __init__(self, replay):
    self.replay = replay

  def step(self):
    return 0


def evaluator(learner):
  pass


program = Program("agent")
with program.group("replay"):
  replay = program.add_node(ReplayNode([Table.queue("queue", 100)]))
learner = program.add_node(CourierNode(Learner, replay), label="learner")
with program.group("actor"):
  for _ in range(3):
    program.add_node(PyNode(actor, learner, replay))
colocation = MultiThreadingColocation([PyNode(evaluator, learner) for _ in range(2)])
program.add_node(colocation, label="evaluator")
assert [n.name for n in program.get_all_nodes()] == [
  "replay[0]", "learner[0]", "actor[0]", "actor[1]", "actor[2]", "evaluator[0]"
]
make_program(CourierNode(Learner, replay), PyNode(actor, learner, replay), name="small")

import sys
print(sorted(m for m in sys.modules if m == "grpc" or m.startswith("grpc.")))
"""


def grpc_modules_after(imports: str) -> str:
  """The gRPC modules a fresh interpreter holds after `imports` and building the agent."""
  code = textwrap.dedent(imports) + BUILD_AGENT
  done = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT
  )
  assert done.returncode == 0, f"building the program failed:\n{done.stderr}"
  return done.stdout.strip()


def test_the_definition_modules_import_no_grpc():
  loaded = grpc_modules_after(
    """
    from launchpad.nodes.colocation import MultiThreadingColocation
    from launchpad.nodes.courier import CourierNode
    from launchpad.nodes.python import PyNode
    from launchpad.nodes.replay import ReplayNode
    from launchpad.program import Program, make_program
    from launchpad.replay import Table
    """
  )
  assert loaded == "[]", f"building a program imported gRPC: {loaded}"


def test_building_a_program_with_lp_imports_no_grpc():
  loaded = grpc_modules_after(
    """
    import launchpad as lp
    from launchpad.replay import Table

    Program, make_program = lp.Program, lp.make_program
    PyNode, CourierNode, ReplayNode = lp.PyNode, lp.CourierNode, lp.ReplayNode
    MultiThreadingColocation = lp.MultiThreadingColocation
    """
  )
  assert loaded == "[]", f"import launchpad and building a program imported gRPC: {loaded}"


launched = launching(launch_type="local_mp", terminal="output_to_files", grace_period=2.0)


def note_fork_server_grpc(path: str) -> None:
  """A node: notes whether the fork server (the parent of the node's keeper)
  has gRPC's core library mapped, i.e. loaded it before forking the node."""
  fork_server = psutil.Process().parent().parent()
  maps = pathlib.Path(f"/proc/{fork_server.pid}/maps").read_text()
  pathlib.Path(path).write_text("loaded" if "cygrpc" in maps else "absent")


def test_node_processes_get_grpc_from_the_fork_server(launched, tmp_path, monkeypatch):
  # Every node's runtime needs the control client: the fork server loads it
  # once for all its nodes instead of each node after its fork.
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path / "home"))
  seen = tmp_path / "seen"
  program = lp.Program("warm")
  program.add_node(lp.PyNode(note_fork_server_grpc, str(seen)))
  controller = launched(program)
  assert controller.wait(timeout=TIMEOUT), f"the program did not end within {TIMEOUT} s"
  assert seen.read_text() == "loaded"


def test_reading_the_launchers_flags_imports_no_ray():
  # `lp launch` and `lp sweep` read every launcher's flags; the Ray launcher's
  # come from its options module, so a launch of any kind loads no Ray.
  code = textwrap.dedent(
    """
    import sys
    from launchpad import cli
    try:
      cli.main(["launch", "--help"])
    except SystemExit:
      pass
    print("ray loaded" if "ray" in sys.modules else "no ray", file=sys.stderr)
    """
  )
  done = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT
  )
  assert "--ray-address" in done.stdout, done.stderr  # the Ray launcher's flag is listed
  assert done.stderr.strip().endswith("no ray"), done.stderr
