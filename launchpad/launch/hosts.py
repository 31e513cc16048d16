"""The hosts file of the SSH launcher: which hosts exist, and which groups run where.

    # hosts.toml
    [hosts.gpu1]
    ssh = "alice@gpu1.example.com"     # anything `ssh` accepts, ~/.ssh/config aliases too
    python = "/opt/venv/bin/python"    # default: python3
    workdir = "/scratch/agent"         # default: a temporary directory
    env = { CUDA_VISIBLE_DEVICES = "0" }
    ssh_options = ["-p", "2222"]

    [hosts]
    cpu1 = "cpu1.example.com"          # a host given by its ssh destination only

    [groups]
    learner = "gpu1"
    "*" = ["cpu1", "gpu1"]             # every other group; nodes take turns

Nodes of a group spread over its hosts in turn. Optional at the top:
`ship = ["bin/simulator", "configs"]`, files and folders (relative to the
hosts file) copied into every host's working directory, modes kept.
Optional per host:
`address`, the address its nodes bind and the other hosts reach them at
(default: the address its SSH connection arrived at). Optional at the top:
`coordinator = "host"`, the launcher's address as the hosts reach it
(default: the address its SSH connections came from).
"""

from __future__ import annotations

import dataclasses
import pathlib
import shlex
import tomllib
from collections.abc import Mapping
from typing import Any

from launchpad import errors
from launchpad.nodes.base import Node

ANY_GROUP = "*"


@dataclasses.dataclass(frozen=True)
class Host:
  """One host nodes run on, and how to reach it."""

  name: str
  ssh: str
  python: str = "python3"
  workdir: str | None = None
  env: Mapping[str, str] = dataclasses.field(default_factory=dict)
  ssh_options: tuple[str, ...] = ()
  address: str | None = None

  def python_command(self) -> list[str]:
    """The interpreter, which may carry arguments ("python3 -X dev")."""
    return shlex.split(self.python)


@dataclasses.dataclass(frozen=True)
class Hosts:
  """A parsed hosts file."""

  hosts: Mapping[str, Host]
  groups: Mapping[str, tuple[str, ...]]
  coordinator: str | None = None
  ship: tuple[pathlib.Path, ...] = ()

  def place(self, workers: list[Node]) -> dict[str, list[Node]]:
    """host name -> the nodes that run there; a group's nodes take turns over its hosts."""
    placed: dict[str, list[Node]] = {}
    turns: dict[str, int] = {}
    for node in workers:
      names = self.groups.get(node.label) or self.groups.get(ANY_GROUP)
      if not names:
        raise errors.ProgramError(
          f"the hosts file gives no host for group {node.label!r} (node {node.name}); "
          f'map it in [groups], or add "*" = [...] for every other group.'
        )
      turn = turns.get(node.label, 0)
      turns[node.label] = turn + 1
      placed.setdefault(names[turn % len(names)], []).append(node)
    return placed


def load(source: str | pathlib.Path | Mapping[str, Any] | Hosts) -> Hosts:
  """Reads a hosts file (a path), or takes its contents already parsed."""
  if isinstance(source, Hosts):
    return source
  where = "the hosts given to lp.launch"
  base = pathlib.Path.cwd()
  if not isinstance(source, Mapping):
    where = str(source)
    base = pathlib.Path(source).resolve().parent
    try:
      with open(source, "rb") as f:
        source = tomllib.load(f)
    except FileNotFoundError:
      raise errors.ProgramError(f"hosts file {where} does not exist.") from None
    except tomllib.TOMLDecodeError as e:
      raise errors.ProgramError(f"hosts file {where} is not valid TOML: {e}") from None
  try:
    return _parse(source, base)
  except (TypeError, ValueError) as e:
    raise errors.ProgramError(f"{where}: {e} (see docs/remote.md for the format)") from None


def _parse(data: Mapping[str, Any], base: pathlib.Path) -> Hosts:
  unknown = set(data) - {"hosts", "groups", "coordinator", "ship"}
  if unknown:
    raise ValueError(
      f"unknown top-level keys {sorted(unknown)}; use hosts, groups, coordinator, ship"
    )
  hosts = {name: _host(name, entry) for name, entry in dict(data.get("hosts", {})).items()}
  if not hosts:
    raise ValueError("no [hosts] are defined")
  groups = {}
  for group, names in dict(data.get("groups", {ANY_GROUP: list(hosts)})).items():
    names = (names,) if isinstance(names, str) else tuple(names)
    missing = [n for n in names if n not in hosts]
    if missing or not names:
      raise ValueError(
        f"group {group!r} names hosts {missing or '(none)'}; the hosts are {sorted(hosts)}"
      )
    groups[group] = names
  coordinator = data.get("coordinator")
  if coordinator is not None and not isinstance(coordinator, str):
    raise TypeError(f"coordinator must be a host name or address, got {coordinator!r}")
  ship = tuple(base / p for p in data.get("ship", ()))
  missing = [str(p) for p in ship if not p.exists()]
  if missing:
    raise ValueError(f"ship names files that do not exist: {missing}")
  return Hosts(hosts, groups, coordinator, ship)


_HOST_KEYS = {f.name for f in dataclasses.fields(Host)} - {"name"}


def _host(name: str, entry: Any) -> Host:
  if isinstance(entry, str):
    entry = {"ssh": entry}
  if not isinstance(entry, Mapping):
    raise TypeError(f"host {name!r} must be an ssh destination or a table, got {entry!r}")
  unknown = set(entry) - _HOST_KEYS
  if unknown:
    raise ValueError(f"host {name!r} has unknown keys {sorted(unknown)}; use {sorted(_HOST_KEYS)}")
  if not isinstance(entry.get("ssh"), str):
    raise ValueError(f"host {name!r} needs ssh = 'user@host' (its ssh destination)")
  env = dict(entry.get("env", {}))
  if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
    raise TypeError(f"host {name!r}: env must map names to strings, got {env!r}")
  return Host(
    name=name,
    ssh=entry["ssh"],
    python=entry.get("python", "python3"),
    workdir=entry.get("workdir"),
    env=env,
    ssh_options=tuple(entry.get("ssh_options", ())),
    address=entry.get("address"),
  )
