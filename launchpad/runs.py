"""Run directories: where a launched program keeps its logs and is found again.

Each launch by a process launcher gets `~/.launchpad/runs/<program>-<time>/`
(under $LAUNCHPAD_HOME if set, or the `log_dir` given): one log file per
node, and `run.json` with the coordinator's address and the launcher's pid,
so that `lp status` and `lp stop` can reach the program from another shell.
The control token beside it lets them in; it is derived from the program
secret, which is never written down.

Only the user reads a run directory: it is made mode 0700 and its files
0600 (private_files), and an existing directory that belongs to someone
else or that others can write is refused, since whoever can replace its
files could read the token or point `lp stop` elsewhere.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import psutil

from launchpad import errors, private_files
from launchpad.control import auth, control_pb2
from launchpad.tls import TlsConfig

if TYPE_CHECKING:  # made by control_client(): finding runs (sweeps do) loads no gRPC
  from launchpad.control.client import ControlClient

# How long `lp` commands wait for a coordinator at first. A live one
# answers in milliseconds; past this, only a run that looks alive
# (Run.looks_alive) is waited for, so that a silent address beside it (a
# black hole, an address another process took) holds `lp status` this long.
FIRST_QUERY_SECONDS = 1.0
# How long they wait in all for a run that looks alive: within seconds while
# its machine is loaded or it is stopping nodes; one that never answers (a
# stuck launcher) must not hold `lp status` for gRPC's own 30 s.
QUERY_SECONDS = 5.0
# Run directories started in one second get suffixes -2, -3, ... up to this.
MAX_SUFFIX = 1000

# Why a run cannot be queried, as the STATE column of `lp status` says it.
UNSAFE = "unsafe"  # the directory belongs to another user, or others can write it
BROKEN = "broken"  # run.json cannot be read
NO_TOKEN = "no-token"  # the token file is missing
UNREACHABLE = "unreachable"  # nothing answers at the coordinator's address
NOT_ANSWERING = "not-answering"  # the coordinator did not answer in time
REFUSED = "refused"  # the coordinator does not accept the run's token

_Reply = TypeVar("_Reply")


def home() -> pathlib.Path:
  return pathlib.Path(os.environ.get("LAUNCHPAD_HOME", pathlib.Path.home() / ".launchpad"))


class RunError(errors.LaunchpadError):
  """A run that `lp` cannot query; `state` says why in a word (UNSAFE, BROKEN, ...)."""

  def __init__(self, run: str, state: str, detail: str):
    super().__init__(f"{run}: {detail}")
    self.run = run
    self.state = state
    self.detail = detail


@dataclasses.dataclass
class Run:
  """One launch's directory."""

  path: pathlib.Path

  @property
  def name(self) -> str:
    return self.path.name

  def write(self, coordinator: str, secret: bytes, tls: TlsConfig | None = None) -> None:
    """Records how `lp` commands reach the program: the control token, the
    TLS files and run.json, each a new file only the user can read."""
    private_files.write(self.path / "token", auth.control_token(secret))
    if tls is not None:
      tls.write(self.path)
    info = {
      "coordinator": coordinator,
      "launcher_pid": os.getpid(),
      "launcher_host": socket.gethostname(),
      "started": time.time(),
    }
    private_files.write(self.path / "run.json", json.dumps(info))

  def info(self) -> dict:
    """run.json's contents; {} when it is missing or cannot be read."""
    try:
      info = json.loads((self.path / "run.json").read_text())
    except (OSError, ValueError):
      return {}
    return info if isinstance(info, dict) else {}

  def token(self) -> str:
    return (self.path / "token").read_text()

  def control_client(self) -> ControlClient:
    """A client of the run's coordinator, for `lp` commands."""
    from launchpad.control.client import ControlClient

    return ControlClient(
      self.info()["coordinator"], token=self.token(), tls=TlsConfig.read(self.path)
    )

  def finish(self) -> None:
    """Marks the run as over: it no longer shows in `lp status`."""
    (self.path / "token").unlink(missing_ok=True)
    info = self.info()
    info["ended"] = time.time()
    private_files.write(self.path / "run.json", json.dumps(info))

  def over(self) -> bool:
    """True once the run is known to have ended: run.json says so, or its
    launcher has exited. A directory without run.json is no run (yet); one
    whose run.json cannot be read is not known to be over, nor one whose
    launcher runs on another host (a detached Slurm run's compute node)."""
    path = self.path / "run.json"
    if not path.exists():
      return True
    info = self.info()
    if "ended" in info:
      return True
    if info.get("launcher_host", socket.gethostname()) != socket.gethostname():
      return False
    pid = info.get("launcher_pid")
    return isinstance(pid, int) and not psutil.pid_exists(pid)

  def check(self) -> dict:
    """run.json's contents, once the run looks queryable from here; raises
    RunError (UNSAFE, BROKEN, NO_TOKEN) saying what is wrong."""
    try:
      private_files.check_directory(self.path)
    except private_files.PrivateFileError as e:
      raise RunError(self.name, UNSAFE, f"{e} `lp` does not send the token from it.") from None
    path = self.path / "run.json"
    try:
      info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise RunError(
        self.name,
        BROKEN,
        f"{path} cannot be read ({e}); if the program has ended, remove {self.path}.",
      ) from None
    if not (
      isinstance(info, dict)
      and isinstance(info.get("coordinator"), str)
      and isinstance(info.get("launcher_pid"), int)
    ):
      raise RunError(
        self.name,
        BROKEN,
        f"{path} lacks the coordinator's address or the launcher's pid; if the program has "
        f"ended, remove {self.path}.",
      )
    if not (self.path / "token").is_file():
      raise RunError(
        self.name,
        NO_TOKEN,
        f"{self.path / 'token'} is missing, so `lp` cannot reach the program: it is ending, or "
        f"the file was removed; stop the launcher (pid {info['launcher_pid']}) with a signal.",
      )
    return info

  def status(self, timeout: float = QUERY_SECONDS) -> control_pb2.StatusReply:
    """The program's status from its coordinator, within FIRST_QUERY_SECONDS,
    or `timeout` seconds if the run looks alive; raises RunError."""
    return self._call(lambda client: client.status(), timeout)

  def stop(self, reason: str, timeout: float = QUERY_SECONDS) -> None:
    """Asks the coordinator to stop the program (bounded as `status`); raises RunError."""
    self._call(lambda client: client.stop(reason), timeout)

  def looks_alive(self, info: dict, connected: bool) -> bool:
    """Whether a coordinator that is slow to answer is worth waiting for.

    On this host: its launcher is the process listening at the
    coordinator's port (a loaded launcher answers late; an address another
    process took, or a black hole, never does). On another host, whose
    processes cannot be looked at from here: the address accepted the
    connection (`connected`).
    """
    if info.get("launcher_host", socket.gethostname()) != socket.gethostname():
      return connected
    port = info["coordinator"].rpartition(":")[2]
    try:
      sockets = psutil.Process(info["launcher_pid"]).net_connections(kind="inet")
    except (psutil.Error, ValueError):
      return False
    return any(
      s.status == psutil.CONN_LISTEN and s.laddr and str(s.laddr.port) == port for s in sockets
    )

  def _call(self, call: Callable[[ControlClient], _Reply], timeout: float) -> _Reply:
    info = self.check()
    address = info["coordinator"]
    patience = _Patience(timeout, lambda connected: self.looks_alive(info, connected))
    refused: OSError | None = TimeoutError()  # no connection yet
    while isinstance(refused, TimeoutError) and (left := patience.remaining(False)) > 0:
      refused = _connect_error(address, left)
    if isinstance(refused, TimeoutError):
      raise self._not_answering(info, patience.waited)
    if refused is not None:
      raise RunError(
        self.name,
        UNREACHABLE,
        f"nothing answers at the coordinator's address {address} ({refused}): the program "
        "has ended or its launcher died; if the launcher (pid "
        f"{info['launcher_pid']}) is not a launchpad process, remove {self.path}.",
      )
    try:
      client = self.control_client()
    except OSError as e:
      raise RunError(self.name, NO_TOKEN, f"cannot read the run's files ({e}).") from None
    answer: concurrent.futures.Future = concurrent.futures.Future()

    def ask() -> None:
      try:
        answer.set_result(call(client))
      except BaseException as e:  # noqa: BLE001 - raised below, in the caller's thread
        answer.set_exception(e)

    threading.Thread(target=ask, name=f"lp-query-{self.name}", daemon=True).start()
    try:
      while not answer.done():
        left = patience.remaining(True)
        if left <= 0:
          raise self._not_answering(info, patience.waited)
        concurrent.futures.wait([answer], left)
      return answer.result()
    except errors.AuthenticationError as e:
      raise RunError(self.name, REFUSED, str(e)) from None
    except errors.ProgramStoppedError as e:
      raise RunError(self.name, UNREACHABLE, str(e)) from None
    finally:
      client.close()  # ends a call still in flight

  def _not_answering(self, info: dict, waited: float) -> RunError:
    return RunError(
      self.name,
      NOT_ANSWERING,
      f"the coordinator at {info['coordinator']} did not answer within {waited:g} s: its "
      f"launcher (pid {info['launcher_pid']}) is stuck or overloaded, or another process "
      "took the address; try again, or stop the launcher with a signal.",
    )


class _Patience:
  """How long one query waits: FIRST_QUERY_SECONDS, then the rest of its
  timeout if the run looks alive (asked once, when the first bound passed)."""

  def __init__(self, timeout: float, looks_alive: Callable[[bool], bool]):
    self._start = time.monotonic()
    self._first = min(FIRST_QUERY_SECONDS, timeout)
    self._timeout = timeout
    self._looks_alive = looks_alive
    self._alive: bool | None = None
    self.waited = self._first  # the bound the query is held to, for its error

  def remaining(self, connected: bool) -> float:
    """Seconds left to wait (0.0: give up); `connected`: the coordinator's
    address accepted a connection."""
    elapsed = time.monotonic() - self._start
    if elapsed < self._first:
      return self._first - elapsed
    if self._alive is None:
      self._alive = self._timeout > self._first and self._looks_alive(connected)
      if self._alive:
        self.waited = self._timeout
    return max(0.0, self._timeout - elapsed) if self._alive else 0.0


def _connect_error(address: str, timeout: float) -> OSError | None:
  """Why nothing accepts connections at `address` (host:port) within
  `timeout` seconds, or None if something does. Telling a coordinator that is
  gone from one that does not answer takes this: gRPC retries both alike."""
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
      return None
  except ValueError:  # not host:port: the gRPC call will say what is wrong
    return None
  except OSError as e:
    return e


def create(program: str, log_dir: pathlib.Path | str | None = None) -> Run:
  """A new run directory for `program` (`log_dir`, else under the runs
  home), mode 0700. An existing `log_dir` must belong to the user and be
  writable by no one else: private_files.PrivateFileError otherwise."""
  if log_dir is not None:
    path = pathlib.Path(log_dir)
    private_files.make_directory(path)
    return Run(path)
  root = home() / "runs"
  private_files.make_directory(root)
  stamp = time.strftime("%Y%m%d-%H%M%S")
  for suffix in range(1, MAX_SUFFIX):
    path = root / (f"{program}-{stamp}" if suffix == 1 else f"{program}-{stamp}-{suffix}")
    try:
      path.mkdir(mode=private_files.DIRECTORY_MODE)
    except FileExistsError:
      continue
    return Run(path)
  raise errors.LaunchpadError(
    f"{root} holds {MAX_SUFFIX} runs of {program} started at {stamp}; remove some of them."
  )


def current() -> list[Run]:
  """The runs not known to be over (Run.over), oldest first."""
  root = home() / "runs"
  if not root.is_dir():
    return []
  return [run for run in (Run(p) for p in sorted(root.iterdir()) if p.is_dir()) if not run.over()]


def find(name: str) -> Run:
  """The current run called `name` (or the only one whose name starts with it)."""
  found = current()
  matches = [r for r in found if r.name == name] or [r for r in found if r.name.startswith(name)]
  if len(matches) != 1:
    names = ", ".join(r.name for r in found) or "none"
    what = "no" if not matches else "more than one"
    raise LookupError(f"{what} running program matches {name!r}; running: {names}.")
  return matches[0]
