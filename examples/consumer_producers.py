"""Producers serve a method; a consumer calls them all at once and gathers.

Run it with:

  python examples/consumer_producers.py --num_producers=3

Each producer is a CourierNode: its public methods can be called by any node
that receives its handle. The consumer receives the list of producer handles,
which arrive as courier clients when the consumer is built. At every step it
sends one call to each producer with `futures`, so the producers work at the
same time, then waits for all the results. After a few steps it stops the
whole program with `lp.stop()`: returning from `run()` would only end the
consumer, and the producers would keep serving.
"""

from absl import app, flags

import launchpad as lp

_NUM_PRODUCERS = flags.DEFINE_integer("num_producers", 2, "How many producers to start.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 10, "How many steps the consumer runs.")

# A step waits at most this long for its results.
_STEP_TIMEOUT_SECONDS = 30.0


class Producer:
  """Does one unit of work per call.

  Calls may arrive from several threads at once, so `work` must be thread
  safe; this one keeps no state.
  """

  def work(self, context: int) -> int:
    return context


class Consumer:
  """Asks every producer for work, `num_steps` times, then stops the program."""

  def __init__(self, producers: list[lp.CourierClient], num_steps: int = 10) -> None:
    self._producers = producers
    self._num_steps = num_steps

  def step(self) -> list[int]:
    """Calls all producers concurrently and returns their results in order."""
    futures = [producer.futures.work(context) for context, producer in enumerate(self._producers)]
    return [future.result(timeout=_STEP_TIMEOUT_SECONDS) for future in futures]

  def run(self) -> None:
    for step in range(self._num_steps):
      print(f"Step {step}: results {self.step()}", flush=True)
    lp.stop()


def make_program(num_producers: int = 2, num_steps: int = 10) -> lp.Program:
  program = lp.Program("consumer_producers")
  # Every node added inside the block gets the label 'producer'.
  with program.group("producer"):
    producers = [program.add_node(lp.CourierNode(Producer)) for _ in range(num_producers)]
  # Handles are only promises here: they become clients inside the consumer.
  consumer = lp.CourierNode(Consumer, producers=producers, num_steps=num_steps)
  program.add_node(consumer, label="consumer")
  return program


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  program = make_program(num_producers=_NUM_PRODUCERS.value, num_steps=_NUM_STEPS.value)
  # No node object is constructed yet: each is built in its own worker.
  lp.launch(program)


if __name__ == "__main__":
  app.run(main)
