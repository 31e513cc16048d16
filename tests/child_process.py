"""A child process whose output the test reads line by line as it comes."""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time

import pytest


class Child:
  """Runs `argv`; stdout lines are queued for `wait_for`, everything is kept."""

  def __init__(self, argv: list[str], timeout: float, **popen_kwargs):
    self.argv = argv
    self.timeout = timeout
    self.process = subprocess.Popen(
      argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kwargs
    )
    self.pid = self.process.pid
    self.lines: queue.Queue = queue.Queue()
    self.stdout: list[str] = []
    self.stderr: list[str] = []
    self._readers = [
      threading.Thread(target=self._read, args=(self.process.stdout, self.stdout, True)),
      threading.Thread(target=self._read, args=(self.process.stderr, self.stderr, False)),
    ]
    for reader in self._readers:
      reader.start()

  def _read(self, stream, sink, to_queue):
    for line in stream:
      sink.append(line)
      if to_queue:
        self.lines.put(line.rstrip("\n"))
    if to_queue:
      self.lines.put(None)

  def wait_for(self, pattern: re.Pattern, count: int = 1) -> list[re.Match]:
    """The first `count` stdout lines matching `pattern`, waiting for them."""
    found = []
    deadline = time.monotonic() + self.timeout
    while len(found) < count:
      try:
        line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        pytest.fail(f"no line matching {pattern.pattern!r} within {self.timeout} s{self.output()}")
      if line is None:
        pytest.fail(f"the process exited before printing {pattern.pattern!r}{self.output()}")
      match = pattern.match(line)
      if match:
        found.append(match)
    return found

  def wait_for_line(self, expected: str) -> None:
    """Waits for a stdout line equal to `expected`."""
    self.wait_for(re.compile(re.escape(expected) + r"\Z"))

  def finish(self, timeout: float | None = None) -> int:
    """Waits for the process to exit; its exit status."""
    timeout = self.timeout if timeout is None else timeout
    try:
      status = self.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"{' '.join(self.argv)} did not exit within {timeout} s{self.output()}")
    for reader in self._readers:
      reader.join(self.timeout)
    return status

  def out(self) -> str:
    return "".join(self.stdout)

  def err(self) -> str:
    return "".join(self.stderr)

  def output(self) -> str:
    return f"\nstdout:\n{self.out()[-5000:]}\nstderr:\n{self.err()[-5000:]}"

  def kill(self) -> None:
    if self.process.poll() is None:
      self.process.kill()
      self.process.wait(timeout=self.timeout)
