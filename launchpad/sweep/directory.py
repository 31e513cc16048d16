"""Where a sweep keeps what it makes: `~/.launchpad/sweeps/<name>/`.

    study.db       the Optuna study (SQLite), unless --storage names another
    status.json    the live table `lp status` and `lp top` show, rewritten on every change
    results.csv    one row per trial: number, state, value, last step, parameters, times
    curves.png     every trial's objective against its step, pruned ones marked
    sweep.lock     held (flock) while a sweep process runs the sweep
    stop.request   `lp stop NAME` asks the running sweep process to stop (the reason)
    trials/NNNN/   one per trial: params.json, error.txt for a failed one, and the run
                   directory (node logs, run.json, metrics.jsonl) of launchers that keep one

The directory is private (mode 0700) like run directories: the run
directories of trials inside hold their programs' control tokens. Under
$LAUNCHPAD_HOME instead of ~/.launchpad when that is set.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import re
from collections.abc import Iterator
from typing import Any

from launchpad import private_files, runs
from launchpad.sweep.errors import SweepError

STUDY_FILE = "study.db"
STATUS_FILE = "status.json"
RESULTS_FILE = "results.csv"
CURVES_FILE = "curves.png"
LOCK_FILE = "sweep.lock"
STOP_FILE = "stop.request"
TRIALS = "trials"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


def root() -> pathlib.Path:
  return runs.home() / "sweeps"


def check_name(name: str) -> str:
  """`name` if it can name a sweep's directory; SweepError otherwise."""
  if not isinstance(name, str) or not _NAME.match(name):
    raise SweepError(
      f"sweep name {name!r} cannot name a directory; use letters, digits, '.', '_' and '-' "
      "(100 at most, starting with a letter or digit)."
    )
  return name


class SweepDirectory:
  """The directory of sweep `path.name`."""

  def __init__(self, path: pathlib.Path):
    self.path = path

  @property
  def name(self) -> str:
    return self.path.name

  @property
  def status_path(self) -> pathlib.Path:
    return self.path / STATUS_FILE

  @property
  def results_path(self) -> pathlib.Path:
    return self.path / RESULTS_FILE

  @property
  def curves_path(self) -> pathlib.Path:
    return self.path / CURVES_FILE

  def default_storage(self) -> str:
    """The SQLAlchemy URL of the SQLite study in this directory."""
    return f"sqlite:///{self.path / STUDY_FILE}"

  def trial_directory(self, number: int) -> pathlib.Path:
    return self.path / TRIALS / f"{number:04d}"

  @contextlib.contextmanager
  def lock(self) -> Iterator[None]:
    """Holds the sweep for this process: a second process running the same
    sweep at once is refused, naming the first. The kernel lets go of the
    lock when the process ends, however it ends."""
    private_files.make_directory(self.path / TRIALS)
    path = self.path / LOCK_FILE
    fd = os.open(
      path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, private_files.FILE_MODE
    )
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        raise SweepError(
          f"sweep {self.name} is running already, in process {holder}: wait for it to end or "
          f"stop it (`lp stop {self.name}`), or give this one another --name."
        ) from None
      os.ftruncate(fd, 0)
      os.pwrite(fd, str(os.getpid()).encode(), 0)
      yield
    finally:
      os.close(fd)

  def request_stop(self, reason: str) -> None:
    """Asks the process running the sweep to stop it (it looks several times a
    second); `reason` says who asked."""
    private_files.write(self.path / STOP_FILE, reason)

  def stop_requested(self) -> str | None:
    """The reason of a stop asked for by `request_stop`, or None."""
    try:
      return (self.path / STOP_FILE).read_text() or "a stop was asked for"
    except FileNotFoundError:
      return None

  def clear_stop_request(self) -> None:
    """Forgets a stop asked for before this run of the sweep (one that came
    as the last run ended, say)."""
    with contextlib.suppress(FileNotFoundError):
      (self.path / STOP_FILE).unlink()

  def write_status(self, status: dict[str, Any]) -> None:
    private_files.write(self.status_path, json.dumps(status, indent=1, default=str))

  def read_status(self) -> dict[str, Any] | None:
    """status.json's contents; None when it is missing or cannot be read."""
    try:
      status = json.loads(self.status_path.read_text())
    except (OSError, ValueError):
      return None
    return status if isinstance(status, dict) else None


def create(name: str) -> SweepDirectory:
  """The directory of sweep `name`, made (mode 0700) if it is new."""
  directory = SweepDirectory(root() / check_name(name))
  try:
    private_files.make_directory(root())
    private_files.make_directory(directory.path)
  except private_files.PrivateFileError as e:
    raise SweepError(str(e)) from None
  return directory


def every() -> list[SweepDirectory]:
  """Every sweep directory, by name."""
  if not root().is_dir():
    return []
  return [SweepDirectory(path) for path in sorted(root().iterdir()) if path.is_dir()]
