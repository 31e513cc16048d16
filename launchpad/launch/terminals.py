"""Launchpad's window terminals for the multiprocess launcher: 'xterm',
'gnome-terminal' (a window per node) and 'gnome-terminal-tabs' (a tab per node).

Nodes write to their log files as with 'output_to_files'; each window
follows one node's log and closes when the program has ended. Where the
terminal program or a display is missing, node output goes to the current
terminal instead, with a warning.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import warnings

# How long closing windows waits for each to exit.
CLOSE_SECONDS = 5.0
# Terminal name -> the program that opens its windows.
PROGRAMS = {
  "xterm": "xterm",
  "gnome-terminal": "gnome-terminal",
  "gnome-terminal-tabs": "gnome-terminal",
}


class Windows:
  """Opens a window (or tab) of `terminal` per node, following its log."""

  def __init__(self, terminal: str, program: str):
    self.terminal = terminal
    self.program = program
    self._opened: list[subprocess.Popen] = []

  def open(self, run_dir: pathlib.Path, nodes: list[str]) -> None:
    if self.terminal == "gnome-terminal-tabs":
      tabs = [
        arg for node in nodes for arg in ("--tab", "--title", node, "--", *_follow(run_dir, node))
      ]
      self._start(tabs)
      return
    for node in nodes:
      if self.terminal == "xterm":
        self._start(["-T", node, "-e", *_follow(run_dir, node)])
      else:
        self._start(["--title", node, "--", *_follow(run_dir, node)])

  def close(self) -> None:
    """Closes every window opened (the program has ended)."""
    for window in self._opened:
      try:
        os.killpg(window.pid, signal.SIGTERM)
      except ProcessLookupError:
        pass
      try:
        window.wait(CLOSE_SECONDS)
      except subprocess.TimeoutExpired:
        os.killpg(window.pid, signal.SIGKILL)
        window.wait(CLOSE_SECONDS)

  def _start(self, args: list[str]) -> None:
    self._opened.append(
      subprocess.Popen(
        [self.program, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
      )
    )


def _follow(run_dir: pathlib.Path, node: str) -> list[str]:
  """The command a window runs: the node's log, from its first line on."""
  log = shlex.quote(str(run_dir / f"{node}.log"))
  return ["sh", "-c", f"exec tail -n +1 -F {log}"]


def windows(terminal: str | None) -> Windows | None:
  """The windows to open for `terminal`, or None: not a window terminal, or
  one that cannot open here (then a warning says so)."""
  program = PROGRAMS.get(terminal or "")
  if program is None:
    return None
  if shutil.which(program) is None:
    missing = f"{program} is not installed"
  elif not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    missing = "there is no display ($DISPLAY and $WAYLAND_DISPLAY are unset)"
  else:
    return Windows(terminal, program)
  warnings.warn(
    f"terminal={terminal!r}: {missing}; node output goes to this terminal instead "
    "('current_terminal'). For a window per node without a display, use "
    "terminal='tmux_session'.",
    stacklevel=3,
  )
  return None


def output_mode(terminal: str | None, windows: Windows | None) -> str:
  """What the multiprocess launcher does with node output for `terminal`."""
  if windows is not None:
    return "output_to_files"
  if terminal in PROGRAMS:
    return "current_terminal"
  return terminal or "current_terminal"
