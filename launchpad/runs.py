"""Run directories: where a launched program keeps its logs and is found again.

Each launch by a process launcher gets `~/.launchpad/runs/<program>-<time>/`
(under $LAUNCHPAD_HOME if set, or the `log_dir` given): one log file per
node, and `run.json` with the coordinator's address and the launcher's pid,
so that `lp status` and `lp stop` can reach the program from another shell.
The control token beside it (mode 0600) lets them in; it is derived from the
program secret, which is never written down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

import psutil

from launchpad.control import auth
from launchpad.control.client import ControlClient
from launchpad.tls import TlsConfig


def home() -> pathlib.Path:
  return pathlib.Path(os.environ.get("LAUNCHPAD_HOME", pathlib.Path.home() / ".launchpad"))


@dataclasses.dataclass
class Run:
  """One launch's directory."""

  path: pathlib.Path

  @property
  def name(self) -> str:
    return self.path.name

  def write(self, coordinator: str, secret: bytes, tls: TlsConfig | None = None) -> None:
    token = self.path / "token"
    token.touch(mode=0o600)
    token.write_text(auth.control_token(secret))
    if tls is not None:
      tls.write(self.path)
    info = {"coordinator": coordinator, "launcher_pid": os.getpid(), "started": time.time()}
    (self.path / "run.json").write_text(json.dumps(info))

  def info(self) -> dict:
    try:
      return json.loads((self.path / "run.json").read_text())
    except (OSError, ValueError):
      return {}

  def token(self) -> str:
    return (self.path / "token").read_text()

  def control_client(self) -> ControlClient:
    """A client of the run's coordinator, for `lp` commands."""
    return ControlClient(
      self.info()["coordinator"], token=self.token(), tls=TlsConfig.read(self.path)
    )

  def finish(self) -> None:
    """Marks the run as over: it no longer shows in `lp status`."""
    (self.path / "token").unlink(missing_ok=True)
    info = self.info()
    info["ended"] = time.time()
    (self.path / "run.json").write_text(json.dumps(info))

  def running(self) -> bool:
    info = self.info()
    if not info or "ended" in info:
      return False
    return psutil.pid_exists(info["launcher_pid"])


def create(program: str, log_dir: pathlib.Path | str | None = None) -> Run:
  """A new run directory for `program` (`log_dir`, else under the runs home)."""
  if log_dir is None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = home() / "runs" / f"{program}-{stamp}"
    suffix = 1
    while path.exists():
      suffix += 1
      path = home() / "runs" / f"{program}-{stamp}-{suffix}"
  else:
    path = pathlib.Path(log_dir)
  path.mkdir(parents=True, exist_ok=True)
  return Run(path)


def running() -> list[Run]:
  """The runs whose launcher is alive, oldest first."""
  root = home() / "runs"
  if not root.is_dir():
    return []
  found = [Run(p) for p in sorted(root.iterdir()) if p.is_dir()]
  return [r for r in found if r.running()]


def find(name: str) -> Run:
  """The running run called `name` (or the only one whose name starts with it)."""
  matches = [r for r in running() if r.name == name] or [
    r for r in running() if r.name.startswith(name)
  ]
  if len(matches) != 1:
    names = ", ".join(r.name for r in running()) or "none"
    what = "no" if not matches else "more than one"
    raise LookupError(f"{what} running program matches {name!r}; running: {names}.")
  return matches[0]
