"""Large `bytes` values: written from their own memory, unpickled as they arrive.

A pickle that holds a large `bytes` is sent in pieces (serialization.
dumps_in_parts) and, having no out-of-band buffers, unpickled from the
connection as it is read (protocol.STREAMED_PAYLOAD). What must hold: the
values come back whole wherever they sit in a call, and a pickle that cannot
be unpickled fails its call only, the connection reading on past it.
"""

from __future__ import annotations

import os

import pytest

from launchpad.courier import protocol, serialization
from launchpad.courier.client import Client

from .conftest import SERVER_ONLY_MODULE, TIMEOUT, pick

BIG = protocol.STREAMED_PAYLOAD * 3 + 17  # bytes: well past both thresholds


def client_of(child_server, transport: str, **kwargs) -> Client:
  address = pick(child_server, transport)
  return Client(address, secret=child_server.secret, label="child_svc", timeout=TIMEOUT, **kwargs)


def test_the_thresholds_are_those_these_tests_cross():
  assert BIG > serialization.LARGE_BYTES and BIG > protocol.STREAMED_PAYLOAD
  payload, buffers = serialization.dumps(("echo", (os.urandom(BIG),), {}))
  assert isinstance(payload, protocol.PayloadParts) and not buffers
  assert isinstance(serialization.dumps(("echo", (b"small",), {}))[0], bytes)


@pytest.mark.parametrize(
  "shape",
  ["alone", "in a tuple", "in a dict", "two of them"],
)
def test_large_bytes_come_back_whole_wherever_they_sit(child_server, transport, shape):
  client = client_of(child_server, transport)
  data, other = os.urandom(BIG), os.urandom(BIG // 2)
  value = {
    "alone": data,
    "in a tuple": (1, data, "x"),
    "in a dict": {"a": data, "n": 3},
    "two of them": [data, other],
  }[shape]
  assert client.echo(value) == value
  assert client.futures.echo(value).result(TIMEOUT) == value
  assert client.kwargs(blob=data) == ((), {"blob": data})
  echoed = client.echo(data)
  assert type(echoed) is bytes and echoed == data
  client.close()


def test_a_large_reply_that_cannot_be_unpickled_fails_its_call_only(child_server, transport):
  client = client_of(child_server, transport)

  def server_only_value(module: str, size: int):
    # The class comes first in the pickle, the bytes after: the client's
    # unpickling fails before it has read them, and must skip them.
    return (__import__(module).ServerOnlyError("only there"), bytes(size))

  for call in (
    lambda: client.apply(server_only_value, SERVER_ONLY_MODULE, BIG),
    lambda: client.futures.apply(server_only_value, SERVER_ONLY_MODULE, BIG).result(TIMEOUT),
  ):
    with pytest.raises(ModuleNotFoundError, match=SERVER_ONLY_MODULE):
      call()
    data = os.urandom(BIG)
    assert client.echo(data) == data  # the same connections read on
    assert client.futures.echo(data).result(TIMEOUT) == data
  client.close()


def test_a_large_request_the_server_cannot_unpickle_fails_its_call_only(
  child_server, transport, tmp_path, monkeypatch
):
  module = "lp_courier_client_only"
  (tmp_path / f"{module}.py").write_text("class ClientOnly:\n  pass\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  client_only = __import__(module).ClientOnly()
  client = client_of(child_server, transport)
  for call in (
    lambda: client.echo(client_only, bytes(BIG)),
    lambda: client.futures.echo(client_only, bytes(BIG)).result(TIMEOUT),
  ):
    with pytest.raises(Exception, match=module) as raised:
      call()
    assert "ModuleNotFoundError" in f"{raised.value!r} {raised.value}"
    data = os.urandom(BIG)
    assert client.echo(data) == data
  client.close()
