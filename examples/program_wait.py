"""How nodes learn that the program is stopping, and how main waits for the end.

Run it with:

  python examples/program_wait.py

Four nodes wait for the stop, each in a different way:

- `lp.wait_for_stop(timeout)` in a loop, doing periodic work in between;
- `lp.wait_for_stop()`, which blocks until the stop;
- `lp.stop_event()`, a threading.Event to wait on or poll;
- `lp.register_stop_handler(fn)`, which calls `fn` when the stop comes.

A fifth node calls `lp.stop()` after a moment. The nodes then have the
launch's grace period to clean up and return. `main` keeps the controller
returned by `lp.launch` and waits on it until every node has ended.
"""

import threading
import time

from absl import app

import launchpad as lp

# How long the stopping node lets the others run.
_RUN_SECONDS = 1.0
# The pretend clean-up every waiting node does after the stop.
_CLEANUP_SECONDS = 0.2


def say(text: str) -> None:
  """Prints one line in a single write, so lines of concurrent nodes stay whole."""
  print(text + "\n", end="", flush=True)


def poll_until_stop() -> None:
  while not lp.wait_for_stop(0.25):
    say("poll_until_stop: not stopping yet, working a bit more")
  say("poll_until_stop: stopping cleanly")
  time.sleep(_CLEANUP_SECONDS)


def block_until_stop() -> None:
  lp.wait_for_stop()
  say("block_until_stop: stopping cleanly")
  time.sleep(_CLEANUP_SECONDS)


def wait_on_stop_event() -> None:
  stop_event = lp.stop_event()
  stop_event.wait()
  say("wait_on_stop_event: stopping cleanly")
  time.sleep(_CLEANUP_SECONDS)


def use_stop_handler() -> None:
  done = threading.Event()

  def on_stop() -> None:
    # May run in another thread than this node's: keep it short.
    say("use_stop_handler: the stop handler was called")
    done.set()

  lp.register_stop_handler(on_stop)
  done.wait()
  say("use_stop_handler: stopping cleanly")
  time.sleep(_CLEANUP_SECONDS)


def stop_program(run_seconds: float) -> None:
  time.sleep(run_seconds)
  say("stop_program: stopping the program")
  lp.stop()


def make_program(run_seconds: float = _RUN_SECONDS) -> lp.Program:
  program = lp.Program("program_wait")
  program.add_node(lp.PyNode(poll_until_stop), label="poll_until_stop")
  program.add_node(lp.PyNode(block_until_stop), label="block_until_stop")
  program.add_node(lp.PyNode(wait_on_stop_event), label="wait_on_stop_event")
  program.add_node(lp.PyNode(use_stop_handler), label="use_stop_handler")
  program.add_node(lp.PyNode(stop_program, run_seconds), label="stop_program")
  return program


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  controller = lp.launch(make_program())
  controller.wait()  # raises lp.NodeFailedError if a node failed
  print("Program finished.")


if __name__ == "__main__":
  app.run(main)
