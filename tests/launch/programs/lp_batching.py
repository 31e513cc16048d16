"""A program written the way DeepMind Launchpad's batching example is, for
the compatibility tests: a server whose `compute` is wrapped with
lp.batched_handler in its constructor and served with
courier_kwargs={'thread_pool_size': batch_size}; clients that call it with
plain lists and each call lp.stop() when done; a main that returns right
after lp.launch(program).

Each client prints `RESULT <client> <x> <sum0> <sum1>` per call, the server's
running sums (sum1 - sum0 is the number of calls summed so far).

  python tests/launch/programs/lp_batching.py --num_batching_clients=3
  lp launch --mode=multiprocess tests/launch/programs/lp_batching.py -- --num_batching_clients=3
"""

import os
import threading

import numpy as np
from absl import app, flags

import launchpad as lp

_NUM_CLIENTS = flags.DEFINE_integer("num_batching_clients", 2, "The number of clients.")
NUM_CALLS = 10
# Bound on every wait of the program, so that a broken run ends.
WAIT_SECONDS = 60.0


def say(text: str) -> None:
  os.write(1, (text + "\n").encode())


class Client:
  """Calls the batched method NUM_CALLS times, then stops the program."""

  def __init__(self, client_id: int, server: lp.CourierClient) -> None:
    self._client_id = client_id
    self._server = server

  def run(self) -> None:
    for x in range(self._client_id, self._client_id + NUM_CALLS):
      result = self._server.compute([x, x + 1])
      say(f"RESULT {self._client_id} {x} {result[0]} {result[1]}")
    # Every client stops the program, as in Launchpad's example; the
    # barrier keeps the first from cutting the others' calls short.
    self._server.finished()
    lp.stop()


class Server:
  """Keeps the running sum of every pair it is sent."""

  def __init__(self, batch_size: int, num_clients: int) -> None:
    self._sum = None
    self._clients = threading.Barrier(num_clients)
    self.compute = lp.batched_handler(batch_size=batch_size)(self.compute)

  def compute(self, values):
    result = np.sum(values, axis=0)
    self._sum = result if self._sum is None else self._sum + result
    return np.tile(self._sum, (len(values), 1))

  def finished(self) -> None:
    """Returns once every client has called it."""
    self._clients.wait(WAIT_SECONDS)


def make_program(num_clients: int | None = None) -> lp.Program:
  num_clients = num_clients or _NUM_CLIENTS.value
  program = lp.Program("batching")
  batch_size = num_clients
  server = program.add_node(
    lp.CourierNode(
      Server, batch_size, num_clients, courier_kwargs={"thread_pool_size": batch_size}
    ),
    label="server",
  )
  with program.group("clients"):
    for client_id in range(num_clients):
      program.add_node(lp.CourierNode(Client, client_id, server))
  return program


def main(argv):
  del argv
  lp.launch(make_program())


if __name__ == "__main__":
  app.run(main)
