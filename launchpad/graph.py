"""Pictures of a program: its nodes, grouped by label, and who calls whom.

    print(graph.to_mermaid(program))          # for Markdown (GitHub renders it)
    open("p.svg", "wb").write(graph.render(program, "svg"))

Each group (label) is a box holding its nodes; a colocation is a box inside
its group. Each node shows its name, its type, and the function or class it
runs. Handles are the edges: an edge goes from the node that receives a
handle in its arguments (anywhere `lp.launch` replaces it: inside lists,
dicts, dataclasses, `lp.Deferred`) to the node the handle refers to, so it
points from caller to callee. Nothing is built or run.

DOT and mermaid text are made here, in Python; SVG and PNG come from DOT
through Graphviz's `dot` program.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import subprocess
from collections.abc import Iterator

from launchpad import errors, handles
from launchpad.nodes.base import Node
from launchpad.nodes.colocation import MultiProcessingColocation, MultiThreadingColocation
from launchpad.nodes.courier import CourierNode
from launchpad.nodes.python import PyClassNode, PyNode
from launchpad.program import Program

FORMATS = ("dot", "mermaid", "svg", "png")
# Text formats, made without Graphviz.
TEXT_FORMATS = ("dot", "mermaid")
# How long Graphviz gets to lay out a picture.
DOT_SECONDS = 60.0
_COLOCATIONS = (MultiProcessingColocation, MultiThreadingColocation)


class GraphvizError(errors.LaunchpadError):
  """Graphviz's `dot` is missing or failed, so no SVG or PNG could be made."""


@dataclasses.dataclass(frozen=True)
class Vertex:
  """A node as drawn: its name, its type, and what it runs."""

  name: str
  kind: str
  runs: str = ""

  @property
  def text(self) -> str:
    """The lines of its label."""
    kind = f"{self.kind}: {self.runs}" if self.runs else self.kind
    return f"{self.name}\n{kind}"


@dataclasses.dataclass(frozen=True)
class Box:
  """A group (label) or a colocation, and what it holds."""

  title: str
  members: tuple[Vertex | Box, ...]
  colocation: bool = False


@dataclasses.dataclass(frozen=True)
class Graph:
  """A program as drawn: its groups, and its edges (caller, callee) by node name."""

  name: str
  groups: tuple[Box, ...]
  edges: tuple[tuple[str, str], ...]


def describe(program: Program) -> Graph:
  """The picture of `program`, before it is written in any format."""
  groups = tuple(
    Box(label, tuple(_member(node) for node in nodes)) for label, nodes in program.groups.items()
  )
  edges: dict[tuple[str, str], None] = {}  # ordered and without repeats
  for node in _leaves(program.get_all_nodes()):
    for _, handle in handles.find_handles(node.arguments()):
      edges[(node.name, handle.node_name)] = None
  return Graph(program.name, groups, tuple(edges))


def _member(node: Node) -> Vertex | Box:
  if isinstance(node, _COLOCATIONS):
    title = f"{node.name}: {type(node).__name__}"
    return Box(title, tuple(_member(inner) for inner in node.nodes), colocation=True)
  runs = ""
  if type(node) in (PyNode, PyClassNode, CourierNode):  # subclasses say what they are by name
    runs = getattr(node.fn, "__qualname__", "")
  return Vertex(node.name, type(node).__name__, runs)


def _leaves(nodes: list[Node]) -> list[Node]:
  """The nodes that receive arguments: colocations are opened up."""
  found = []
  for node in nodes:
    found.extend(_leaves(node.nodes) if isinstance(node, _COLOCATIONS) else [node])
  return found


# DOT.

_DOT_STYLES = {
  "PyNode": 'shape=box, style="filled", fillcolor="#f3f4f6"',
  "PyClassNode": 'shape=box, style="filled", fillcolor="#f3f4f6"',
  "CourierNode": 'shape=box, style="rounded,filled", fillcolor="#dbeafe"',
  "ReplayNode": 'shape=cylinder, style="filled", fillcolor="#dcfce7"',
}
_DOT_DEFAULT_STYLE = 'shape=box, style="filled", fillcolor="#fef3c7"'


def to_dot(program: Program) -> str:
  """The program as a Graphviz DOT digraph."""
  graph = describe(program)
  lines = [
    f"digraph {_dot_quote(graph.name)} {{",
    "  rankdir=LR;",
    '  graph [fontname="Helvetica", fontsize=12, labeljust=l];',
    '  node [fontname="Helvetica", fontsize=11];',
    '  edge [color="#4b5563"];',
  ]
  counter = itertools.count()
  for group in graph.groups:
    lines.extend(_dot_box(group, counter, "  "))
  lines.extend(f"  {_dot_quote(a)} -> {_dot_quote(b)};" for a, b in graph.edges)
  lines.append("}")
  return "\n".join(lines) + "\n"


def _dot_box(box: Box, counter: Iterator[int], indent: str) -> list[str]:
  style = 'style="dashed,rounded"' if box.colocation else 'style="rounded"; color="#9ca3af"'
  lines = [
    f"{indent}subgraph cluster_{next(counter)} {{",
    f"{indent}  label={_dot_quote(box.title)}; {style};",
  ]
  for member in box.members:
    if isinstance(member, Box):
      lines.extend(_dot_box(member, counter, indent + "  "))
    else:
      attributes = _DOT_STYLES.get(member.kind, _DOT_DEFAULT_STYLE)
      lines.append(
        f"{indent}  {_dot_quote(member.name)} [label={_dot_quote(member.text)}, {attributes}];"
      )
  lines.append(f"{indent}}}")
  return lines


def _dot_quote(text: str) -> str:
  escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
  return f'"{escaped}"'


# Mermaid.

_MERMAID_SHAPES = {"CourierNode": ('(["', '"])'), "ReplayNode": ('[("', '")]')}
_MERMAID_CLASSES = {
  "PyNode": "fill:#f3f4f6,stroke:#6b7280",
  "PyClassNode": "fill:#f3f4f6,stroke:#6b7280",
  "CourierNode": "fill:#dbeafe,stroke:#2563eb",
  "ReplayNode": "fill:#dcfce7,stroke:#16a34a",
}


def to_mermaid(program: Program) -> str:
  """The program as a mermaid flowchart (Markdown renderers draw it)."""
  graph = describe(program)
  ids: dict[str, str] = {}  # node name -> mermaid id (names have brackets)
  lines = ["flowchart LR"]
  counter = itertools.count()
  for group in graph.groups:
    lines.extend(_mermaid_box(group, ids, counter, "  "))
  for a, b in graph.edges:
    lines.append(f"  {ids.get(a, _mermaid_id(a))} --> {ids.get(b, _mermaid_id(b))}")
  kinds = {}
  for group in graph.groups:
    for vertex in _vertices(group):
      kinds.setdefault(vertex.kind, []).append(ids[vertex.name])
  for kind, members in kinds.items():
    if kind in _MERMAID_CLASSES:
      lines.append(f"  classDef {kind} {_MERMAID_CLASSES[kind]}")
      lines.append(f"  class {','.join(members)} {kind}")
  return "\n".join(lines) + "\n"


def _mermaid_box(box: Box, ids: dict[str, str], counter: Iterator[int], indent: str) -> list[str]:
  lines = [f"{indent}subgraph g{next(counter)}[{_mermaid_quote(box.title)}]"]
  for member in box.members:
    if isinstance(member, Box):
      lines.extend(_mermaid_box(member, ids, counter, indent + "  "))
    else:
      ids[member.name] = node_id = f"n{len(ids)}"
      start, end = _MERMAID_SHAPES.get(member.kind, ('["', '"]'))
      text = _mermaid_quote(member.text)[1:-1]
      lines.append(f"{indent}  {node_id}{start}{text}{end}")
  lines.append(f"{indent}end")
  return lines


def _vertices(box: Box) -> list[Vertex]:
  found = []
  for member in box.members:
    found.extend(_vertices(member) if isinstance(member, Box) else [member])
  return found


def _mermaid_id(name: str) -> str:
  """An id for a node that no group holds (a handle to a colocation itself)."""
  return "x_" + "".join(c if c.isalnum() else "_" for c in name)


def _mermaid_quote(text: str) -> str:
  for char, entity in (("&", "#amp;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
    text = text.replace(char, entity)
  return '"' + text.replace("\n", "<br/>") + '"'


# Any format.


def render(program: Program, format: str) -> bytes:
  """The program drawn in `format`: 'dot', 'mermaid' (text), 'svg' or 'png'.

  Raises:
    GraphvizError: svg or png without Graphviz's `dot`, or `dot` failed.
  """
  if format not in FORMATS:
    raise ValueError(f"unknown graph format {format!r}; use one of: {', '.join(FORMATS)}.")
  if format == "mermaid":
    return to_mermaid(program).encode()
  dot = to_dot(program)
  if format == "dot":
    return dot.encode()
  return _run_dot(dot, format)


def _run_dot(dot: str, format: str) -> bytes:
  program = shutil.which("dot")
  if program is None:
    raise GraphvizError(
      f"drawing {format} needs Graphviz's `dot` program, which is not installed: install "
      "graphviz (apt-get install graphviz, brew install graphviz), or ask for text with "
      "--format=dot or --format=mermaid (graph.to_dot, graph.to_mermaid)."
    )
  try:
    result = subprocess.run(
      [program, f"-T{format}"], input=dot.encode(), capture_output=True, timeout=DOT_SECONDS
    )
  except subprocess.TimeoutExpired:
    raise GraphvizError(
      f"Graphviz's dot took more than {DOT_SECONDS:g} s to lay out the picture; use "
      "--format=dot or --format=mermaid and lay it out yourself."
    ) from None
  if result.returncode != 0:
    raise GraphvizError(
      f"Graphviz's dot failed (status {result.returncode}): "
      f"{result.stderr.decode(errors='replace').strip()}; --format=dot shows its input."
    )
  return result.stdout
