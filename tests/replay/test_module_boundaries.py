"""The replay modules use only each other's public names: no `other._private` across modules."""

from __future__ import annotations

import ast
import pathlib

import launchpad

ROOT = pathlib.Path(launchpad.__file__).parent
MODULES = [*sorted((ROOT / "replay").glob("*.py")), ROOT / "nodes" / "replay.py"]


def private(name: str) -> bool:
  return name.startswith("_") and not name.startswith("__")


def own_private_names(tree: ast.Module) -> set[str]:
  """The private names a module defines: its functions, classes, attributes and slots."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
      names.add(node.name)
    elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
      names.add(node.attr)
    elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
      names.add(node.id)
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
      names.add(node.target.id)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
      names.add(node.value)  # __slots__ entries
  return {name for name in names if private(name)}


def foreign_private_uses(path: pathlib.Path) -> list[str]:
  """`module:line: what` for each use of a private name that the module does not define."""
  tree = ast.parse(path.read_text(), str(path))
  own = own_private_names(tree)
  uses = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      uses += [
        f"{path.name}:{node.lineno}: from {node.module} import {alias.name}"
        for alias in node.names
        if private(alias.name)
      ]
    elif isinstance(node, ast.Attribute) and private(node.attr) and node.attr not in own:
      uses.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
  return uses


def test_no_replay_module_uses_another_modules_private_names():
  assert len(MODULES) > 10
  uses = [use for path in MODULES for use in foreign_private_uses(path)]
  assert uses == [], "make these public in the module that defines them:\n" + "\n".join(uses)


def test_the_check_finds_a_foreign_private_use(tmp_path):
  path = tmp_path / "user.py"
  path.write_text(
    "from launchpad.replay.table import _hidden\n"
    "class A:\n"
    "  def __init__(self):\n"
    "    self._mine = 1\n"
    "  def f(self, table):\n"
    "    return self._mine + table._lock\n"
  )
  assert foreign_private_uses(path) == [
    "user.py:1: from launchpad.replay.table import _hidden",
    "user.py:6: table._lock",
  ]
