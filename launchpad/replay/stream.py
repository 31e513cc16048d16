"""Stream: batches sampled ahead, so that a learner does not wait a round trip per step.

    with client.stream("experience", 32, max_in_flight_batches=4) as stream:
      for batch in stream:  # a ReplaySample, as sample_batch returns it
        train(batch)

Reverb's datasets keep samples in flight over several workers; a stream
keeps up to `max_in_flight_batches` `sample_batch` calls in flight, as
courier futures spread over `num_workers` connections of its own. Taking a
batch sends the next call at once, so the server samples while the learner
trains. Batches come in the order their calls complete.

In flight means sent and not answered, or answered and not yet taken: so
at most that many batches are sampled ahead and held in memory. They count
as sampled when the server draws them (the rate limiter, `times_sampled`),
before the learner sees them, and closing the stream drops those not taken,
as Reverb's datasets do. Priorities a learner updates reach only the calls
sent after the update.

Same host: a stream of a server on this host (reached over its Unix socket)
gets its batches through shared memory: the server writes them into a ring
of slots the learner maps, and a batch's arrays are read-only views of its
slot, given back when the learner drops them (ring.py). A learner that keeps
more batches than the ring has slots gets the others in the replies, also
read-only; copy a batch (np.array) to change it in place.

Timeouts: `timeout` bounds each `next()`: with no batch by then it raises
`lp.CallTimeoutError` naming the table, and the stream stays open (calling
`next()` again waits again). Each call waits for the table's rate limiter
for at most the same timeout; one that timed out there sampled nothing and
is sent again, at once if a `next()` is waiting, else by the next one. With
no timeout, calls wait as long as the table needs.

Ending: `close()` (or leaving the `with` block) stops sending calls, cancels
those in flight and closes the stream's connections; on the server a call
blocked on the rate limiter ends within its timeout or when its table
closes. After `close()`, `next()` raises StopIteration. A stream does not end
by itself: when its server stops (the program's stop closes its tables),
`next()` raises `replay.TableClosedError` naming the table, or
`lp.ConnectionLostError` if the server went away without closing them, and
the stream closes. Any other error of a call (an unknown table, items that
cannot be stacked) ends it the same way. A node ended by such an error while
the program stops counts as stopped, not failed.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from typing import Any

from launchpad import errors
from launchpad.replay.errors import RateLimiterTimeoutError
from launchpad.timeouts import Deadline


class Stream(Iterator):
  """An iterator of batches of one table, with a bounded number of calls in flight.

  Made by `replay.Client.stream` (see the module docstring); thread safe.

  Args:
    table: the table sampled.
    batch_size: items per call; a batch holds up to this many, as
      `sample_batch` returns them.
    submitters: one function per connection, each sending one sample call
      (table, num_samples, timeout, stack) and returning its Future.
    decode: turns a call's reply into the batch returned.
    max_in_flight_batches: the most calls in flight (sent and not answered,
      or answered and not taken).
    timeout: the longest a `next()` waits, and a call waits for the rate
      limiter (seconds; None: as long as it takes).
    on_close: called once when the stream closes, or is collected unclosed
      (closes its connections); it must not refer to the stream.
  """

  def __init__(
    self,
    table: str,
    batch_size: int,
    submitters: Sequence[Callable[..., Future]],
    decode: Callable[[Any], Any],
    max_in_flight_batches: int,
    timeout: float | None,
    on_close: Callable[[], None] = lambda: None,
  ):
    self.table = table
    self.batch_size = batch_size
    self.max_in_flight_batches = max_in_flight_batches
    self.timeout = timeout
    self._submitters = list(submitters)
    self._decode = decode
    self._lock = threading.Lock()
    self._closed = False
    self._in_flight: dict[Future, int] = {}  # future -> its connection's index
    self._loads = [0] * len(self._submitters)  # calls in flight per connection
    self._done: queue.SimpleQueue[Future | None] = queue.SimpleQueue()  # None wakes for close
    # Runs on_close once: from close(), or when a stream nobody closed is collected.
    self._finalizer = weakref.finalize(self, on_close)
    with self._lock:
      self._fill()  # sampling starts now, so the first batch may be ready by the first next()

  @property
  def in_flight(self) -> int:
    """Calls in flight now: sent and not answered, or answered and not taken."""
    with self._lock:
      return len(self._in_flight)

  @property
  def closed(self) -> bool:
    """True once closed: by close(), or by an error that ended the stream."""
    return self._closed

  def __next__(self) -> Any:
    """The next batch to arrive; see the module docstring for timeouts and errors."""
    deadline = Deadline(self.timeout, f"replay stream of table {self.table!r}")
    while True:
      with self._lock:
        if self._closed:
          raise StopIteration
        self._fill()
      future = self._take(deadline)
      if future is None:  # close() woke us
        self._done.put(None)  # for another thread waiting
        continue
      with self._lock:
        connection = self._in_flight.pop(future, None)
        if connection is None:
          continue  # dropped by close()
        self._loads[connection] -= 1
      try:
        reply = future.result()
      except RateLimiterTimeoutError:
        continue  # nothing sampled: sent again by _fill, while the deadline lasts
      except CancelledError:
        continue  # cancelled by close()
      except BaseException:
        self.close()
        raise
      with self._lock:
        if not self._closed:
          self._fill()  # the next call is in flight while the caller uses this batch
      return self._decode(reply)

  def close(self) -> None:
    """Stops sampling: cancels the calls in flight and closes the stream's connections.

    Batches sampled and not taken are dropped. Idempotent; any thread.
    """
    with self._lock:
      if self._closed:
        return
      self._closed = True
      pending, self._in_flight = list(self._in_flight), {}
    for future in pending:
      future.cancel()
    self._finalizer()
    self._done.put(None)

  def __enter__(self) -> Stream:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def __repr__(self) -> str:
    state = "closed" if self._closed else f"{len(self._in_flight)} in flight"
    return (
      f"<replay.Stream of table {self.table!r}, batches of {self.batch_size}, at most "
      f"{self.max_in_flight_batches} in flight over {len(self._submitters)} connections, {state}>"
    )

  def _fill(self) -> None:
    """(lock held) Sends calls, each on the least loaded connection, up to the bound."""
    while len(self._in_flight) < self.max_in_flight_batches:
      connection = min(range(len(self._loads)), key=self._loads.__getitem__)
      future = self._submitters[connection](self.table, self.batch_size, self.timeout, True)
      self._in_flight[future] = connection
      self._loads[connection] += 1
      future.add_done_callback(self._done.put)  # at once if it already failed

  def _take(self, deadline: Deadline) -> Future | None:
    """The next completed call, or None if close() woke the wait; CallTimeoutError at the deadline."""
    try:
      return self._done.get(timeout=deadline.remaining())
    except queue.Empty:
      raise errors.CallTimeoutError(
        f"replay stream of table {self.table!r}: no batch arrived within its {self.timeout:g} s "
        f"timeout ({self.in_flight} sample calls of {self.batch_size} items in flight): the "
        "table may hold too few items, or its rate limiter may not allow samples yet. Insert "
        "more, or give the stream a longer timeout (client.stream(..., timeout=seconds))."
      ) from None
