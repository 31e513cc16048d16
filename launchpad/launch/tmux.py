"""terminal='tmux_session': a detached tmux session with one window per node.

Each window follows its node's log file, so the session can be attached and
detached at will without touching the nodes.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from launchpad import runs


def session_name(run: runs.Run) -> str:
  return run.name.replace(".", "_").replace(":", "_")


def open_windows(run: runs.Run, nodes: list[str]) -> None:
  session = session_name(run)
  for i, node in enumerate(nodes):
    log = shlex.quote(str(run.path / f"{node}.log"))
    command = f"tail -n +1 -F {log}"
    if i == 0:
      subprocess.run(["tmux", "new-session", "-d", "-s", session, "-n", node, command], check=True)
    else:
      subprocess.run(["tmux", "new-window", "-t", session, "-n", node, command], check=True)
  print(f"node output is in tmux: tmux attach -t {session}", file=sys.stderr, flush=True)


def close(run: runs.Run) -> None:
  subprocess.run(["tmux", "kill-session", "-t", session_name(run)], capture_output=True)
