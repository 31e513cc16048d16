"""Central computation on batches: many callers, one call of the handler.

Run it with:

  python examples/batching.py --num_clients=4

The server wraps its `compute` method with `lp.batched_handler`. Calls that
arrive together (up to `batch_size` of them, or whatever came within the
batch timeout) run as one call whose numpy arguments are stacked along a new
first axis. The handler returns one row per caller, and every caller receives
only its own row. This is how a server runs a model once for many actors.

Each client makes a few calls and then tells the server it is done; the
last client to finish stops the program with `lp.stop()`.
"""

import threading

import numpy as np
from absl import app, flags

import launchpad as lp

_NUM_CLIENTS = flags.DEFINE_integer("num_clients", 2, "How many clients call the server.")
_NUM_CALLS = flags.DEFINE_integer("num_calls", 10, "How many calls each client makes.")


def say(text: str) -> None:
  """Prints one line in a single write, so lines of concurrent nodes stay whole."""
  print(text + "\n", end="", flush=True)


class Server:
  """Sums the pairs it is sent, one batch at a time."""

  def __init__(self, batch_size: int, num_clients: int) -> None:
    self._lock = threading.Lock()
    self._clients_left = num_clients
    self._total = np.zeros(2, dtype=np.int64)
    # Wrap the bound method: callers keep calling `compute(pair)` one at a time.
    self.compute = lp.batched_handler(batch_size=batch_size)(self.compute)

  def compute(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`pairs` has one row per caller; returns each row's sum and the batch size."""
    self._total += pairs.sum(axis=0)
    batch = len(pairs)
    return pairs.sum(axis=1), np.full(batch, batch)

  def total(self) -> list[int]:
    """The sum of every pair received so far."""
    return self._total.tolist()

  def client_done(self) -> int:
    """Records that a client has finished; returns how many are still calling."""
    with self._lock:
      self._clients_left -= 1
      return self._clients_left


class Client:
  """Calls the server with its own pairs, one call at a time."""

  def __init__(self, client_id: int, server: lp.CourierClient, num_calls: int) -> None:
    self._client_id = client_id
    # A call that gets no reply within 30 s raises lp.CallTimeoutError.
    self._server = server.with_timeout(30.0)
    self._num_calls = num_calls

  def run(self) -> None:
    for x in range(self._client_id, self._client_id + self._num_calls):
      total, batch = self._server.compute(np.array([x, x + 1]))
      say(f"Client {self._client_id}: {x} + {x + 1} = {total} (in a batch of {batch})")
    if self._server.client_done() == 0:
      # The server would serve forever: the last client to finish stops the program.
      say(f"Server: total of everything received {self._server.total()}")
      lp.stop()


def make_program(num_clients: int = 2, num_calls: int = 10) -> lp.Program:
  program = lp.Program("batching")
  server = program.add_node(
    lp.CourierNode(Server, batch_size=num_clients, num_clients=num_clients), label="server"
  )
  with program.group("clients"):
    for client_id in range(num_clients):
      program.add_node(lp.PyClassNode(Client, client_id, server, num_calls))
  return program


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  lp.launch(make_program(num_clients=_NUM_CLIENTS.value, num_calls=_NUM_CALLS.value))


if __name__ == "__main__":
  app.run(main)
