"""Torch tensors and JAX arrays through courier: out of band, without copies, as they were.

Each library's tests are skipped where it is not installed; CI installs both
(`pip install torch==2.13.0` and `pip install jax jaxlib`).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest

from launchpad.courier import serialization, tensors
from launchpad.courier.client import Client
from launchpad.courier.server import Server

from .conftest import Service

# Bounds every wait; the child imports torch and JAX before it serves.
TIMEOUT = 60.0
LABEL = "tensors_svc"
MIB = 1 << 20


@pytest.fixture(scope="module")
def torch():
  return _library("torch", "torch is not installed: pip install torch==2.13.0")


@pytest.fixture(scope="module")
def jnp():
  return _library("jax.numpy", "JAX is not installed: pip install jax jaxlib")


# Set by CI's run that installs both: a missing library fails these tests instead of skipping them.
REQUIRED = "LAUNCHPAD_TEST_REQUIRE_TENSORS"


def _library(name: str, missing: str):
  if os.environ.get(REQUIRED):
    return importlib.import_module(name)
  return pytest.importorskip(name, reason=missing)


def roundtrip(value):
  """dumps then loads, handing loads fresh writable memory as the protocol's reader does."""
  data, buffers = serialization.dumps(value)
  return serialization.loads(data, [bytearray(b) for b in buffers])


def address_of(buffer) -> int:
  return np.frombuffer(buffer, np.uint8).ctypes.data


def pickled_sizes(value) -> tuple[int, int]:
  """(in-band bytes, out-of-band bytes) of `value`'s pickle, where this runs."""
  data, buffers = serialization.dumps(value)
  return len(data), sum(memoryview(b).nbytes for b in buffers)


def assert_same_tensor(got, expected, torch):
  assert type(got) is torch.Tensor
  assert got.dtype == expected.dtype
  assert got.shape == expected.shape
  assert torch.equal(got, expected)
  assert not got.requires_grad


def assert_same_jax(got, expected):
  assert type(got) is type(expected)
  assert got.dtype == expected.dtype
  assert got.shape == expected.shape
  assert got.weak_type == expected.weak_type
  assert np.asarray(got).tobytes() == np.asarray(expected).tobytes()


def tensor_cases(torch) -> dict:
  base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
  return {
    "float32": torch.linspace(-1, 1, 1000),
    "int64": torch.arange(-500, 500, dtype=torch.int64).reshape(10, 100),
    "bfloat16": torch.linspace(-3, 3, 257, dtype=torch.bfloat16),
    "float16": torch.tensor([0.5, -2.0, 65504.0], dtype=torch.float16),
    "bool": torch.tensor([[True, False], [False, True]]),
    "complex64": torch.tensor([1 + 2j, -3j], dtype=torch.complex64),
    "uint8": torch.arange(256, dtype=torch.uint8),
    "transposed": base.transpose(0, 2),
    "gapped": base[:, ::2, 1::2],
    "broadcast": torch.arange(4.0).expand(3, 4),
    "offset": base.reshape(-1)[5:17],
    "conj": torch.tensor([1 + 2j], dtype=torch.complex64).conj(),
    "0-d": torch.tensor(2.5),
    "0-d bfloat16": torch.tensor(-1.5, dtype=torch.bfloat16),
    "empty": torch.empty(0, 3),
    "empty int64": torch.empty(4, 0, dtype=torch.int64),
  }


def jax_cases(jnp) -> dict:
  return {
    "float32": jnp.linspace(-1, 1, 1000),
    "int32": jnp.arange(-50, 50, dtype=jnp.int32).reshape(10, 10),
    "bfloat16": jnp.linspace(-3, 3, 257, dtype=jnp.bfloat16),
    "uint8": jnp.arange(256, dtype=jnp.uint8).reshape(16, 16),
    "bool": jnp.array([True, False]),
    "0-d": jnp.array(np.float32(2.5)),
    "empty": jnp.zeros((0, 3)),
    "weak 0-d": jnp.asarray(1.0),  # from a Python scalar: JAX's own pickling keeps it weak
  }


# --- the serialization API ----------------------------------------------------------


def test_a_tensor_travels_out_of_band_from_its_own_memory(torch):
  tensor = torch.arange(MIB, dtype=torch.float32)
  data, buffers = serialization.dumps(tensor)
  assert len(data) < 1024
  assert [memoryview(b).nbytes for b in buffers] == [4 * MIB]
  assert address_of(buffers[0]) == tensor.data_ptr()  # no copy on the way out


def test_a_received_tensor_adopts_its_buffer_without_copy(torch):
  data, buffers = serialization.dumps(torch.arange(16, dtype=torch.uint8))
  memory = bytearray(buffers[0])
  got = serialization.loads(data, [memory])
  assert got.data_ptr() == address_of(memory)
  memory[0] = 200
  assert got[0] == 200
  got[1] = 201  # the tensor is writable
  assert memory[1] == 201


@pytest.mark.parametrize(
  "case",
  [
    "float32",
    "int64",
    "bfloat16",
    "float16",
    "bool",
    "complex64",
    "uint8",
    "transposed",
    "gapped",
    "broadcast",
    "offset",
    "conj",
    "0-d",
    "0-d bfloat16",
    "empty",
    "empty int64",
  ],
)
def test_tensors_roundtrip_with_dtype_shape_and_values(torch, case):
  tensor = tensor_cases(torch)[case]
  data, buffers = serialization.dumps(tensor)
  assert len(buffers) == 1 and len(data) < 256, "the data must travel out of band"
  assert_same_tensor(roundtrip(tensor), tensor.resolve_conj(), torch)


def test_dense_views_keep_their_strides_and_send_only_what_they_span(torch):
  base = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
  transposed = base.transpose(0, 2)
  got = roundtrip(transposed)
  assert got.stride() == transposed.stride() and not got.is_contiguous()
  broadcast = torch.arange(4.0).expand(1000, 4)  # stride 0: 4 elements span 4000
  assert pickled_sizes(broadcast)[1] == 4 * 4
  got = roundtrip(broadcast)
  assert got.stride() == (0, 1)
  assert torch.equal(got, broadcast)


def test_a_view_with_gaps_sends_only_its_elements_and_arrives_contiguous(torch):
  column = torch.arange(1000 * 100, dtype=torch.float32).reshape(1000, 100)[:, 7]
  assert pickled_sizes(column)[1] == 1000 * 4  # not the 400 kB the column spans
  got = roundtrip(column)
  assert got.is_contiguous()
  assert_same_tensor(got, column, torch)


def test_tensors_torch_must_pickle_itself_keep_its_pickling(torch):
  weights = torch.ones(3, requires_grad=True)
  got = roundtrip(weights)
  assert got.requires_grad and torch.equal(got.detach(), weights.detach())
  parameter = torch.nn.Parameter(torch.full((2,), 4.0))
  got = roundtrip(parameter)
  assert type(got) is torch.nn.Parameter and torch.equal(got.detach(), parameter.detach())
  tagged = torch.zeros(2)
  tagged.tag = "kept"
  assert roundtrip(tagged).tag == "kept"


def test_a_tensor_inside_a_value_with_a_lambda_still_travels_out_of_band(torch):
  value = (lambda x: x + 1, torch.arange(MIB, dtype=torch.uint8))  # cloudpickle's path
  data, buffers = serialization.dumps(value)
  # The lambda brings this file's source along: small beside the tensor.
  assert len(data) < 64 * 1024 and sum(memoryview(b).nbytes for b in buffers) == MIB
  fn, got = serialization.loads(data, [bytearray(b) for b in buffers])
  assert fn(1) == 2 and torch.equal(got, value[1])


def test_a_tensor_kept_in_band_loads_too(torch):
  tensor = torch.linspace(0, 1, 100, dtype=torch.bfloat16)
  data, buffers = serialization.dumps(tensor, out_of_band=False)
  assert buffers == []
  assert_same_tensor(serialization.loads(data, []), tensor, torch)


def test_a_jax_array_travels_out_of_band_from_its_host_memory(jnp):
  array = jnp.arange(MIB, dtype=jnp.float32)
  data, buffers = serialization.dumps(array)
  assert len(data) < 1024
  assert [memoryview(b).nbytes for b in buffers] == [4 * MIB]
  assert address_of(buffers[0]) == np.asarray(array).ctypes.data  # no copy on the way out


def test_a_received_jax_array_adopts_aligned_memory_without_copy(jnp):
  data, buffers = serialization.dumps(jnp.arange(1024, dtype=jnp.float32))
  raw = np.empty(4096 + tensors.XLA_ALIGNMENT, np.uint8)
  start = -raw.ctypes.data % tensors.XLA_ALIGNMENT
  aligned = raw[start : start + 4096]
  aligned[:] = np.frombuffer(buffers[0], np.uint8)
  got = serialization.loads(data, [aligned])
  assert np.asarray(got).ctypes.data == aligned.ctypes.data
  unaligned = raw[start + 4 : start + 4 + 4096]
  unaligned[:] = np.frombuffer(buffers[0], np.uint8)
  got = serialization.loads(data, [unaligned])  # copied into aligned memory first
  assert np.asarray(got).ctypes.data % tensors.XLA_ALIGNMENT == 0
  assert np.array_equal(np.asarray(got), np.arange(1024, dtype=np.float32))


@pytest.mark.parametrize("case", ["float32", "int32", "bfloat16", "uint8", "bool", "0-d", "empty"])
def test_jax_arrays_roundtrip_with_dtype_shape_and_values(jnp, case):
  array = jax_cases(jnp)[case]
  data, buffers = serialization.dumps(array)
  assert len(buffers) == 1 and len(data) < 256, "the data must travel out of band"
  assert_same_jax(roundtrip(array), array)


def test_a_weakly_typed_jax_array_stays_weakly_typed(jnp):
  array = jax_cases(jnp)["weak 0-d"]
  assert array.weak_type
  assert_same_jax(roundtrip(array), array)


IMPORTS_NEITHER = textwrap.dedent(
  """
  import sys
  import numpy as np
  from launchpad.courier import serialization, tensors

  value = {"obs": np.ones((4, 4)), "tags": ["a"], "n": 3, "fn": lambda x: x}
  data, buffers = serialization.dumps(value)
  serialization.loads(data, [bytearray(b) for b in buffers])
  print(sorted(m for m in ("torch", "jax", "jaxlib") if m in sys.modules))
  """
)


def test_serializing_other_values_imports_neither_torch_nor_jax(torch, jnp):
  out = subprocess.run(
    [sys.executable, "-c", IMPORTS_NEITHER],
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    check=True,
  ).stdout
  assert out.strip() == "[]"


# --- through a server in another process ---------------------------------------------


def serve(conn, secret: bytes) -> None:
  """Child-process entry point: imports what is installed, serves a Service until the parent goes."""
  for library in ("torch", "jax.numpy"):
    try:
      __import__(library)
    except ImportError:
      pass
  server = Server(Service(), secret=secret, label=LABEL)
  server.start()
  conn.send((server.address, server.local_address))
  try:
    conn.recv()  # returns or raises once the parent closes its end or dies
  except EOFError:
    pass
  server.stop()


@pytest.fixture(scope="module")
def child() -> Iterator[tuple[str, str, bytes]]:
  """(tcp address, unix address, secret) of a server in a spawned child process."""
  context = multiprocessing.get_context("spawn")
  parent_end, child_end = context.Pipe()
  secret = os.urandom(32)
  process = context.Process(target=serve, args=(child_end, secret), daemon=True)
  process.start()
  child_end.close()
  try:
    if not parent_end.poll(TIMEOUT):
      raise RuntimeError(f"the child courier server did not start within {TIMEOUT:g} s")
    tcp, unix = parent_end.recv()
    yield tcp, unix, secret
  finally:
    parent_end.close()
    process.join(TIMEOUT)
    if process.is_alive():
      os.kill(process.pid, signal.SIGKILL)
      process.join(TIMEOUT)


@pytest.fixture(params=["unix", "tcp"])
def client(request, child) -> Iterator[Client]:
  tcp, unix, secret = child
  address = unix if request.param == "unix" else tcp
  client = Client(address, secret=secret, label=LABEL, timeout=TIMEOUT)
  yield client
  client.close()


def test_echo_of_tensors_across_processes(torch, client):
  cases = tensor_cases(torch)
  for tensor in cases.values():
    assert_same_tensor(client.echo(tensor), tensor.resolve_conj(), torch)
  got = client.futures.echo(cases).result(TIMEOUT)
  for name, tensor in cases.items():
    assert_same_tensor(got[name], tensor.resolve_conj(), torch)
  assert client.echo(cases["transposed"]).stride() == cases["transposed"].stride()


def test_a_tensor_received_by_the_server_goes_back_out_of_band(torch, client):
  tensor = torch.arange(4 * MIB, dtype=torch.uint8)
  in_band, out_of_band = client.apply(pickled_sizes, tensor)  # measured in the server
  assert in_band < 1024 and out_of_band == 4 * MIB
  assert_same_tensor(client.echo(tensor), tensor, torch)


def test_echo_of_jax_arrays_across_processes(jnp, client):
  cases = jax_cases(jnp)
  for array in cases.values():
    assert_same_jax(client.echo(array), array)
  got = client.futures.echo(cases).result(TIMEOUT)
  for name, array in cases.items():
    assert_same_jax(got[name], array)
  in_band, out_of_band = client.apply(pickled_sizes, jnp.zeros(MIB, jnp.uint8))
  assert in_band < 1024 and out_of_band == MIB
