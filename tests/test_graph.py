"""Tests of program pictures: launchpad.graph and `lp graph`."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import launchpad as lp
from launchpad import graph
from launchpad.replay import Table

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 30.0
needs_graphviz = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is missing")


class Learner:
  def __init__(self, replay, config):
    pass


class Counter:
  def increment(self):
    pass


@dataclasses.dataclass
class Config:
  counter: object


def actor(index, peers, env):
  pass


def make_env(counter):
  return counter


def make_program() -> lp.Program:
  """Groups, a CourierNode, a ReplayNode, a colocation, and handles nested
  in a dataclass, a dict of lists, a tuple and a Deferred."""
  program = lp.Program("agent")
  replay = program.add_node(lp.ReplayNode([Table.queue("q", 10)]), label="replay")
  counter_node = lp.CourierNode(Counter)
  counter = counter_node.create_handle()
  learner = program.add_node(lp.CourierNode(Learner, replay, Config(counter)), label="learner")
  with program.group("actor"):
    for i in range(2):
      peers = {"learners": [learner], "replay": (replay, replay)}  # replay twice: one edge
      program.add_node(lp.PyNode(actor, i, peers, lp.Deferred(make_env, counter)))
  box = lp.MultiThreadingColocation([counter_node, lp.PyNode(actor, 9, [learner], None)])
  program.add_node(box, label="box")
  return program


NODES = {
  "replay[0]": "ReplayNode",
  "learner[0]": "CourierNode: Learner",
  "actor[0]": "PyNode: actor",
  "actor[1]": "PyNode: actor",
  "box[0].0": "CourierNode: Counter",
  "box[0].1": "PyNode: actor",
}
EDGES = {
  ("learner[0]", "replay[0]"),
  ("learner[0]", "box[0].0"),
  ("actor[0]", "learner[0]"),
  ("actor[0]", "replay[0]"),
  ("actor[0]", "box[0].0"),
  ("actor[1]", "learner[0]"),
  ("actor[1]", "replay[0]"),
  ("actor[1]", "box[0].0"),
  ("box[0].1", "learner[0]"),
}


def dot_parts(text: str):
  """Node name -> label, edges, and cluster label -> the nodes right inside it."""
  nodes = dict(re.findall(r'^\s*"([^"]+)" \[label="([^"]+)"', text, re.M))
  edges = re.findall(r'^\s*"([^"]+)" -> "([^"]+)";$', text, re.M)
  clusters, stack = {}, []
  for line in text.splitlines():
    if match := re.match(r'\s*label="([^"]+)";', line):
      stack.append(match.group(1))
      clusters[stack[-1]] = []
    elif match := re.match(r'\s*"([^"]+)" \[label=', line):
      clusters[stack[-1]].append(match.group(1))
    elif line.strip() == "}" and stack:
      stack.pop()
  return nodes, edges, clusters


def test_dot_boxes_each_group_shows_node_types_and_draws_an_edge_per_caller_and_callee():
  text = graph.to_dot(make_program())
  assert text.startswith('digraph "agent" {')
  nodes, edges, clusters = dot_parts(text)
  assert nodes == {name: f"{name}\\n{kind}" for name, kind in NODES.items()}
  assert len(edges) == len(set(edges)), "an edge is drawn once however many handles make it"
  assert set(edges) == EDGES
  assert clusters == {
    "replay": ["replay[0]"],
    "learner": ["learner[0]"],
    "actor": ["actor[0]", "actor[1]"],
    "box": [],
    "box[0]: MultiThreadingColocation": ["box[0].0", "box[0].1"],
  }
  assert re.search(r'"replay\[0\]" \[.*shape=cylinder', text)


def test_mermaid_has_the_same_nodes_groups_and_edges():
  text = graph.to_mermaid(make_program())
  assert text.startswith("flowchart LR\n")
  ids = {}
  for node_id, label in re.findall(r'^\s*(n\d+)[(\[]+"([^"]+)"', text, re.M):
    name, kind = label.split("<br/>")
    assert NODES[name] == kind
    ids[node_id] = name
  assert sorted(ids.values()) == sorted(NODES)
  edges = re.findall(r"^\s*(n\d+) --> (n\d+)$", text, re.M)
  assert {(ids[a], ids[b]) for a, b in edges} == EDGES
  assert len(edges) == len(EDGES)
  titles = re.findall(r'^\s*subgraph g\d+\["([^"]+)"\]$', text, re.M)
  assert titles == ["replay", "learner", "actor", "box", "box[0]: MultiThreadingColocation"]
  assert text.count("subgraph") == len(re.findall(r"^\s*end$", text, re.M))


def test_a_handle_of_a_node_outside_the_program_is_reported():
  program = lp.Program("broken")
  stray = lp.CourierNode(Counter).create_handle()
  program.add_node(lp.PyNode(actor, 0, [stray], None), label="actor")
  with pytest.raises(lp.ProgramError, match="never added to a program"):
    graph.to_dot(program)


@needs_graphviz
def test_svg_and_png_come_from_graphviz():
  program = make_program()
  svg = graph.render(program, "svg").decode()
  assert svg.lstrip().startswith("<?xml") and "<svg" in svg
  for name in NODES:
    assert name in svg
  assert graph.render(program, "png").startswith(b"\x89PNG")


def test_svg_without_graphviz_says_to_install_it_or_ask_for_text(monkeypatch, tmp_path):
  monkeypatch.setenv("PATH", str(tmp_path))
  with pytest.raises(
    graph.GraphvizError, match=r"install graphviz.*--format=dot or --format=mermaid"
  ):
    graph.render(make_program(), "svg")
  assert graph.render(make_program(), "mermaid").startswith(b"flowchart")


# lp graph


def lp_graph(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "launchpad.cli", "graph", *args],
    capture_output=True,
    cwd=ROOT,
    env=env,
    timeout=TIMEOUT,
  )


def test_lp_graph_of_a_file_draws_the_program_its_main_would_launch_without_running_it():
  result = lp_graph("examples/consumer_producers.py", "--", "--num_producers=3")
  assert result.returncode == 0, result.stderr.decode()
  text = result.stdout.decode()
  nodes, edges, clusters = dot_parts(text)
  assert set(nodes) == {"consumer[0]", "producer[0]", "producer[1]", "producer[2]"}
  assert set(edges) == {("consumer[0]", f"producer[{i}]") for i in range(3)}
  assert clusters["producer"] == ["producer[0]", "producer[1]", "producer[2]"]
  assert "Step" not in text  # the consumer never ran


def test_lp_graph_options_may_follow_the_target():
  result = lp_graph("examples/consumer_producers.py", "--format=mermaid", "--", "--num_producers=2")
  assert result.returncode == 0, result.stderr.decode()
  text = result.stdout.decode()
  assert text.startswith("flowchart LR")
  assert len(re.findall(r"^\s*n\d+ --> n\d+$", text, re.M)) == 2


def test_lp_graph_of_a_function_as_mermaid(tmp_path):
  output = tmp_path / "program.mmd"
  result = lp_graph("-o", str(output), "examples/consumer_producers.py:make_program")
  assert result.returncode == 0, result.stderr.decode()
  text = output.read_text()
  assert text.startswith("flowchart LR")
  assert len(re.findall(r"^\s*n\d+ --> n\d+$", text, re.M)) == 2


@needs_graphviz
def test_lp_graph_writes_svg_given_a_file_ending_in_svg(tmp_path):
  output = tmp_path / "program.svg"
  result = lp_graph("-o", str(output), "examples/consumer_producers.py")
  assert result.returncode == 0, result.stderr.decode()
  assert "<svg" in output.read_text() and "consumer[0]" in output.read_text()


def test_lp_graph_without_graphviz_exits_1_saying_what_to_do(tmp_path):
  env = {**os.environ, "PATH": str(tmp_path)}
  result = lp_graph("--format=png", "examples/consumer_producers.py", env=env)
  assert result.returncode == 1
  message = result.stderr.decode()
  assert message.startswith("lp graph: drawing png needs Graphviz's `dot` program"), message
  assert "install graphviz" in message and "--format=dot or --format=mermaid" in message


def test_lp_graph_of_a_file_that_never_launches_exits_2(tmp_path):
  script = tmp_path / "no_launch.py"
  script.write_text("print('hello')\n")
  result = lp_graph(str(script))
  assert result.returncode == 2
  assert "without calling lp.launch" in result.stderr.decode()
  assert f"{script}:make_program" in result.stderr.decode()
