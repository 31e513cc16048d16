"""Shared fixtures of the courier tests: served objects, in-process and child-process servers."""

from __future__ import annotations

import dataclasses
import importlib
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any, NamedTuple

import numpy as np
import pytest

from launchpad.courier.client import Client
from launchpad.courier.server import Server

# Every blocking wait of the tests is bounded by this (seconds).
TIMEOUT = 10.0
CHILD_LABEL = "child_svc"
SERVER_ONLY_MODULE = "lp_courier_server_only_errors"


@dataclasses.dataclass
class Point:
  x: float
  y: float
  tags: list[str] = dataclasses.field(default_factory=list)


class BadInitError(Exception):
  """Pickles fine, but its __init__ cannot be called with its own args: unpickling fails."""

  def __init__(self, a, b):
    super().__init__(f"{a}/{b}")


class Service:
  """The object served in the tests; events let tests order calls without sleeping."""

  def __init__(self):
    self._events: dict[str, threading.Event] = {}
    self._lock = threading.Lock()

  def _event(self, name: str) -> threading.Event:
    with self._lock:
      return self._events.setdefault(name, threading.Event())

  def release_all(self) -> None:
    with self._lock:
      events = list(self._events.values())
    for event in events:
      event.set()

  def _private(self) -> str:
    return "private"

  def __call__(self, x, scale=1):
    return ("called", x * scale)

  def echo(self, x):
    return x

  def add(self, a, b=0):
    return a + b

  def kwargs(self, *args, **kwargs):
    return args, kwargs

  def apply(self, fn, *args, **kwargs):
    return fn(*args, **kwargs)

  def pid(self) -> int:
    return os.getpid()

  def sleep(self, seconds: float) -> float:
    time.sleep(seconds)
    return seconds

  def block(self, name: str, timeout: float = TIMEOUT) -> bool:
    """Signals `<name>:started`, then waits until `name` is released."""
    self._event(name + ":started").set()
    return self._event(name).wait(timeout)

  def wait_started(self, name: str, timeout: float = TIMEOUT) -> bool:
    """True once a `block(name)` call has started running."""
    return self._event(name + ":started").wait(timeout)

  def release(self, name: str) -> None:
    self._event(name).set()

  def wait_for(self, name: str, timeout: float = TIMEOUT) -> bool:
    return self._event(name).wait(timeout)

  def set_and_wait(self, to_set: str, to_wait: str, timeout: float = TIMEOUT) -> bool:
    self._event(to_set).set()
    return self._event(to_wait).wait(timeout)

  def raise_key_error(self, key):
    raise KeyError(key)

  def raise_bad_init(self):
    raise BadInitError(1, 2)

  def raise_server_only(self):
    module = importlib.import_module(SERVER_ONLY_MODULE)
    raise module.ServerOnlyError("only the server knows this type")

  def raise_with_array(self):
    raise ValueError("bad values", np.arange(3))

  def unpicklable_result(self):
    return threading.Lock()

  def many_arrays(self, n: int):
    return [np.full(1, i) for i in range(n)]


class ServerAddresses(NamedTuple):
  """What a client needs: the TCP address, the Unix address and the secret."""

  address: str
  local_address: str
  secret: bytes


@dataclasses.dataclass
class ChildServer:
  addresses: ServerAddresses
  process: Any  # multiprocessing.Process
  label: str
  pipe: Any  # the parent's end; the child serves until it closes

  def kill(self) -> None:
    """Kills the child by its pid (SIGKILL) and reaps it."""
    if self.process.is_alive():
      os.kill(self.process.pid, signal.SIGKILL)
    self.process.join(TIMEOUT)
    self.pipe.close()


def serve_in_child(conn, secret: bytes, label: str, extra_sys_path: list[str]) -> None:
  """Child-process entry point: serves a Service until the parent goes away."""
  sys.path[:0] = extra_sys_path
  server = Server(Service(), secret=secret, label=label)
  server.start()
  conn.send((server.address, server.local_address))
  try:
    conn.recv()  # returns or raises once the parent closes its end or dies
  except EOFError:
    pass
  server.stop()


def start_child_server(label: str = CHILD_LABEL, extra_sys_path: list[str] = ()) -> ChildServer:
  context = multiprocessing.get_context("spawn")
  parent_end, child_end = context.Pipe()
  secret = os.urandom(32)
  process = context.Process(
    target=serve_in_child,
    args=(child_end, secret, label, list(extra_sys_path)),
    daemon=True,
  )
  process.start()
  child_end.close()
  child = ChildServer(ServerAddresses("", "", secret), process, label, parent_end)
  try:
    if not parent_end.poll(60):
      raise RuntimeError("the child courier server did not start within 60 s")
    address, local_address = parent_end.recv()
  except BaseException:
    child.kill()
    raise
  child.addresses = ServerAddresses(address, local_address, secret)
  return child


def _write_server_only_module(directory) -> None:
  (directory / f"{SERVER_ONLY_MODULE}.py").write_text("class ServerOnlyError(Exception):\n  pass\n")


@pytest.fixture(scope="session")
def child_process_server(tmp_path_factory) -> Iterator[ChildServer]:
  """One courier Server in a spawned child process, shared by the tests of a session."""
  directory = tmp_path_factory.mktemp("server_only")
  _write_server_only_module(directory)
  child = start_child_server(extra_sys_path=[str(directory)])
  yield child
  child.kill()


@pytest.fixture(scope="session")
def child_server(child_process_server) -> ServerAddresses:
  """(tcp address, unix address, secret) of the shared child-process server."""
  return child_process_server.addresses


@pytest.fixture
def fresh_child_server() -> Iterator[ChildServer]:
  """A child-process server of this test alone, which the test may kill."""
  child = start_child_server()
  yield child
  child.kill()


@pytest.fixture(params=["tcp", "unix"])
def transport(request) -> str:
  return request.param


def pick(addresses: ServerAddresses, transport: str) -> str:
  return addresses.address if transport == "tcp" else addresses.local_address


class InProcessServer(NamedTuple):
  server: Server
  service: Service
  secret: bytes
  label: str

  def client(self, transport: str = "tcp", timeout: float | None = TIMEOUT, **kwargs) -> Client:
    address = self.server.address if transport == "tcp" else self.server.local_address
    return Client(address, secret=self.secret, label=self.label, timeout=timeout, **kwargs)


@pytest.fixture
def local_server() -> Iterator[InProcessServer]:
  """A courier Server of a Service in this process (label 'local_svc')."""
  service = Service()
  secret = os.urandom(32)
  server = Server(service, secret=secret, label="local_svc")
  server.start()
  yield InProcessServer(server, service, secret, "local_svc")
  service.release_all()
  server.stop()


def in_thread(fn, *args, **kwargs) -> Future:
  """Runs fn in a daemon thread; its outcome lands in the returned Future."""
  future: Future = Future()

  def run():
    try:
      future.set_result(fn(*args, **kwargs))
    except BaseException as e:  # noqa: BLE001 - handed to the test through the future
      future.set_exception(e)

  threading.Thread(target=run, daemon=True).start()
  return future


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]
