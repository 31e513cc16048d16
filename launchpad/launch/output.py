"""Node output: every line of every node, prefixed, on the terminal and in files.

Each node process writes its stdout and stderr into one socket; a single
thread reads all of them and writes whole lines only, so lines of different
nodes never cut into each other however many nodes run.
"""

from __future__ import annotations

import os
import pathlib
import selectors
import socket
import sys
import threading
from collections import Counter
from typing import IO

from launchpad import private_files

_COLOURS = [31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96]


class OutputMux:
  """Collects node output; `terminal=None` keeps it in the log files only."""

  def __init__(self, log_dir: pathlib.Path, terminal: IO[str] | None = sys.stdout):
    self.directory = log_dir
    self._terminal = terminal
    self._colour = terminal is not None and terminal.isatty() and "NO_COLOR" not in os.environ
    self._selector = selectors.DefaultSelector()
    self._lock = threading.Lock()
    self._wake_r, self._wake_w = socket.socketpair()
    self._selector.register(self._wake_r, selectors.EVENT_READ, None)
    self._thread = threading.Thread(target=self._run, name="node-output", daemon=True)
    self._thread.start()
    self._open: Counter[str] = Counter()  # each node's streams not ended yet
    self._drained = threading.Condition()

  def attach(self, name: str, colour_index: int, shown_as: str | None = None) -> socket.socket:
    """A socket for node `name` to write into; give its other end to the node.

    Its lines are prefixed with `shown_as` (default: the name) and kept in
    the log file of `name`.
    """
    ours, theirs = socket.socketpair()
    shown_as = shown_as or name
    prefix = (
      f"{shown_as} | "
      if not self._colour
      else (f"\x1b[{_COLOURS[colour_index % len(_COLOURS)]}m{shown_as}\x1b[0m | ")
    )
    log = private_files.open_append(self.log_path(name))
    with self._drained:
      self._open[name] += 1
    self._selector.register(ours, selectors.EVENT_READ, _Stream(name, prefix, log))
    self._wake_w.send(b"x")
    return theirs

  def log_path(self, name: str) -> pathlib.Path:
    return self.directory / f"{name}.log"

  def wait_drained(self, timeout: float) -> bool:
    """Waits until every attached stream has ended (its node exited)."""
    with self._drained:
      return self._drained.wait_for(lambda: not +self._open, timeout)

  def tail(self, name: str, timeout: float, lines: int = 30) -> str:
    """The last `lines` lines node `name` wrote, once its output has ended
    (waiting up to `timeout`: a process that exited may have left its last
    lines in the socket, or a child of it may hold the socket open), or ""."""
    with self._drained:
      self._drained.wait_for(lambda: self._open[name] <= 0, timeout)
    try:
      text = self.log_path(name).read_text(errors="replace").splitlines()
    except OSError:
      return ""
    return "last lines of its output:\n" + "\n".join(text[-lines:]) if text else ""

  def _run(self) -> None:
    while True:
      for key, _ in self._selector.select():
        if key.data is None:
          self._wake_r.recv(4096)
          continue
        stream: _Stream = key.data
        data = key.fileobj.recv(65536)
        if data:
          self._emit(stream, stream.feed(data))
          continue
        self._emit(stream, stream.flush())
        self._selector.unregister(key.fileobj)
        key.fileobj.close()
        stream.log.close()
        with self._drained:
          self._open[stream.name] -= 1
          self._drained.notify_all()

  def _emit(self, stream: _Stream, lines: list[bytes]) -> None:
    if not lines:
      return
    stream.log.write(b"".join(lines))
    stream.log.flush()
    if self._terminal is None:
      return
    text = "".join(stream.prefix + line.decode(errors="replace") for line in lines)
    with self._lock:
      try:
        self._terminal.write(text)
        self._terminal.flush()
      except (ValueError, OSError):  # the terminal was closed: the files go on
        self._terminal = None


class _Stream:
  def __init__(self, name: str, prefix: str, log):
    self.name = name
    self.prefix = prefix
    self.log = log
    self._partial = b""

  def feed(self, data: bytes) -> list[bytes]:
    """Whole lines so far; a trailing partial line waits for its end."""
    lines = (self._partial + data).split(b"\n")
    self._partial = lines.pop()
    return [line + b"\n" for line in lines]

  def flush(self) -> list[bytes]:
    rest, self._partial = self._partial, b""
    return [rest + b"\n"] if rest else []
