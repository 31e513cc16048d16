"""Futures of one connection: batched requests and replies, and the shared condition.

A future's small request waits in a batch while other calls are in flight,
and a server holds small replies back while it has the next request in
hand (docs/design.md, Futures). Neither may wait for a call that runs long.
The futures of a connection share one condition (courier/future.py), so a
future's waits must not end when another future completes.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from launchpad.courier.client import Client
from launchpad.courier.future import CallFuture

from .conftest import TIMEOUT, pick

LONG = 60.0  # how long a blocked call waits for its release: beyond every wait here


def test_a_request_made_while_a_long_call_runs_is_sent_without_its_reply(local_server, transport):
  client = local_server.client(transport, timeout=LONG)
  slow = client.futures.block("slow", LONG)
  assert local_server.service.wait_started("slow")
  # Another call is in flight, so this request waits in the batch; no reply
  # comes to write it, the watcher must.
  assert client.futures.echo("next").result(TIMEOUT) == "next"
  assert not slow.done()
  local_server.service.release("slow")
  assert slow.result(TIMEOUT) is True


def test_a_reply_held_behind_a_request_that_runs_long_comes_out(local_server, transport):
  client = local_server.client(transport, timeout=LONG)
  gate = client.futures.block("gate", LONG)
  assert local_server.service.wait_started("gate")
  # Both wait in the batch and go in one write: the server reads them
  # together, holds the echo's reply while it has the next request in hand,
  # and that request then runs long.
  quick = client.futures.echo("quick")
  slow = client.futures.block("slow", LONG)
  assert quick.result(TIMEOUT) == "quick"
  assert local_server.service.wait_started("slow")
  assert not slow.done()
  local_server.service.release_all()
  assert gate.result(TIMEOUT) is True
  assert slow.result(TIMEOUT) is True


def test_many_pipelined_calls_each_get_their_own_reply(child_server, transport):
  client = Client(
    pick(child_server, transport), secret=child_server.secret, label="child_svc", timeout=LONG
  )
  for burst in range(5):
    futures = [client.futures.add(i, b=burst) for i in range(3000)]
    assert [f.result(LONG) for f in futures] == [i + burst for i in range(3000)]


def test_futures_are_concurrent_futures_futures_that_wait_and_complete_as_they_should(
  local_server,
):
  client = local_server.client(timeout=LONG)
  slow = client.futures.block("slow", LONG)
  assert local_server.service.wait_started("slow")
  quick = client.futures.echo(1)
  assert isinstance(slow, CallFuture) and isinstance(slow, concurrent.futures.Future)
  done, not_done = concurrent.futures.wait([slow, quick], TIMEOUT, "FIRST_COMPLETED")
  assert done == {quick} and not_done == {slow}
  called = threading.Event()
  slow.add_done_callback(lambda future: called.set())
  assert not called.is_set()
  local_server.service.release("slow")
  assert [f.result() for f in concurrent.futures.as_completed([slow, quick], TIMEOUT)] in (
    [True, 1],
    [1, True],
  )
  assert called.wait(TIMEOUT)
  assert quick.exception(0) is None


def test_a_cancelled_future_says_so_and_the_connection_serves_on(local_server):
  client = local_server.client(timeout=LONG)
  blocked = client.futures.block("cancelled", LONG)
  assert local_server.service.wait_started("cancelled")
  assert blocked.cancel()
  assert blocked.cancelled()
  with pytest.raises(concurrent.futures.CancelledError):
    blocked.result(TIMEOUT)
  local_server.service.release("cancelled")  # its reply comes to a cancelled future
  assert client.futures.echo("after").result(TIMEOUT) == "after"
  assert client.echo("sync") == "sync"


@pytest.mark.parametrize("wait", ["result", "exception"])
def test_a_wait_with_a_timeout_lasts_its_time_while_other_futures_complete(local_server, wait):
  client = local_server.client(timeout=LONG)
  blocked = client.futures.block("waited", LONG)
  assert local_server.service.wait_started("waited")
  stop = threading.Event()

  def complete_others() -> None:  # each completion wakes every waiter of the connection
    while not stop.is_set():
      client.futures.echo(0).result(TIMEOUT)

  other = threading.Thread(target=complete_others, daemon=True)
  other.start()
  try:
    start = time.monotonic()
    with pytest.raises(TimeoutError):
      getattr(blocked, wait)(0.5)
    assert time.monotonic() - start >= 0.5
  finally:
    stop.set()
    other.join(TIMEOUT)
  local_server.service.release("waited")
  assert getattr(blocked, wait)(TIMEOUT) in (True, None)


def test_a_threads_idle_connection_becomes_the_futures_one(local_server, transport):
  client = local_server.client(transport, timeout=LONG)
  assert client.echo("sync") == "sync"
  assert len(local_server.server.connections()) == 1
  # The futures take over this thread's authenticated connection: no new
  # connection (and no handshake in another thread) before the first reply.
  assert [f.result(TIMEOUT) for f in [client.futures.echo(i) for i in range(100)]] == list(
    range(100)
  )
  assert len(local_server.server.connections()) == 1
  assert client.echo("again") == "again"  # this thread's next call connects anew
  assert len(local_server.server.connections()) == 2
  assert client.futures.echo("still").result(TIMEOUT) == "still"


def test_a_connection_in_use_by_another_thread_is_not_taken(local_server):
  client = local_server.client(timeout=LONG)
  assert client.echo(0) == 0
  blocked = threading.Thread(target=client.block, args=("other", LONG), daemon=True)
  blocked.start()  # that thread's sync connection is busy in its call
  assert local_server.service.wait_started("other")
  assert client.futures.echo(1).result(TIMEOUT) == 1
  local_server.service.release("other")
  blocked.join(TIMEOUT)
  assert client.echo(2) == 2


def test_replies_completed_together_notify_every_waiter_and_callback(child_server, transport):
  client = Client(
    pick(child_server, transport), secret=child_server.secret, label="child_svc", timeout=LONG
  )
  futures = [client.futures.add(i) for i in range(500)]
  called = []
  for future in futures:
    future.add_done_callback(called.append)
  done = list(concurrent.futures.as_completed(futures, TIMEOUT))
  assert sorted(f.result() for f in done) == list(range(500))
  assert len(called) == 500 and set(called) == set(futures)


def test_a_future_cancelled_before_its_reply_is_notified_when_the_reply_comes(local_server):
  client = local_server.client(timeout=LONG)
  blocked = client.futures.block("to-cancel", LONG)
  assert local_server.service.wait_started("to-cancel")
  assert blocked.cancel()
  # Not yet notified: `wait` sees it done only once the reply marks it so.
  waited = concurrent.futures.ThreadPoolExecutor(1).submit(
    concurrent.futures.wait, [blocked], TIMEOUT
  )
  local_server.service.release("to-cancel")
  done, not_done = waited.result(TIMEOUT + 5)
  assert done == {blocked} and not not_done
  assert client.futures.echo("after").result(TIMEOUT) == "after"
