"""Values through courier: numpy out of band, arbitrary picklables, and what cannot travel."""

from __future__ import annotations

import dataclasses
import fractions
import importlib.util
import marshal
import pathlib
import pickle
import subprocess
import sys
import threading
import types

import cloudpickle
import numpy as np
import pytest

from launchpad import errors
from launchpad.courier import serialization
from launchpad.courier.client import Client

from .conftest import CHILD_LABEL, TIMEOUT, Point, pick


def child_client(addresses, transport="unix", timeout=TIMEOUT) -> Client:
  return Client(
    pick(addresses, transport), secret=addresses.secret, label=CHILD_LABEL, timeout=timeout
  )


def roundtrip(value):
  data, buffers = serialization.dumps(value)
  # What a reader hands to loads: fresh, writable memory of each buffer.
  return serialization.loads(data, [bytearray(b) for b in buffers])


def assert_same_array(got, expected):
  assert isinstance(got, np.ndarray)
  assert got.dtype == expected.dtype
  assert got.shape == expected.shape
  np.testing.assert_array_equal(got, expected)


DTYPES = [
  np.bool_,
  np.int8,
  np.uint16,
  np.int32,
  np.int64,
  np.float16,
  np.float32,
  np.float64,
  np.complex64,
  np.complex128,
  "datetime64[ns]",
  "<U7",
  "S3",
  np.dtype([("a", np.int32), ("b", np.float64, (2,))]),
]
SHAPES = [(), (0,), (1,), (7,), (3, 4), (2, 0, 3), (2, 3, 4, 5)]


def make_array(dtype, shape) -> np.ndarray:
  dtype = np.dtype(dtype)
  size = int(np.prod(shape))
  raw = np.arange(1, size + 1) % 100
  if dtype.kind == "U":
    flat = np.array([f"s{i}" for i in raw], dtype=dtype)
  elif dtype.kind == "S":
    flat = np.array([f"{i}".encode() for i in raw], dtype=dtype)
  elif dtype.kind == "M":
    flat = raw.astype("datetime64[ns]")
  elif dtype.fields:
    flat = np.zeros(size, dtype=dtype)
    flat["a"] = raw
    flat["b"] = raw[:, None] / 2
  else:
    flat = raw.astype(dtype)
  return flat.reshape(shape)


# --- serialization module ------------------------------------------------------


def test_array_data_travels_out_of_band():
  array = np.arange(1 << 20, dtype=np.float64).reshape(1024, 1024)
  data, buffers = serialization.dumps(array)
  assert len(data) < 1024 < array.nbytes
  assert sum(b.nbytes for b in buffers) == array.nbytes
  assert b"".join(bytes(b) for b in buffers) == array.tobytes()
  assert_same_array(serialization.loads(data, [bytearray(b) for b in buffers]), array)


def test_arrays_nested_in_containers_each_travel_out_of_band():
  value = {"obs": np.ones((64, 64)), "rest": [np.zeros(1000, np.int32), (np.eye(50), "tag")]}
  data, buffers = serialization.dumps(value)
  assert len(buffers) == 3
  assert len(data) < 2048
  assert sum(b.nbytes for b in buffers) == 64 * 64 * 8 + 1000 * 4 + 50 * 50 * 8
  got = serialization.loads(data, [bytearray(b) for b in buffers])
  assert_same_array(got["obs"], value["obs"])
  assert_same_array(got["rest"][0], value["rest"][0])
  assert_same_array(got["rest"][1][0], value["rest"][1][0])
  assert got["rest"][1][1] == "tag"


def test_loaded_array_adopts_its_buffer_without_copy():
  array = np.arange(16, dtype=np.uint8)
  data, buffers = serialization.dumps(array)
  memory = bytearray(buffers[0])
  got = serialization.loads(data, [memory])
  memory[0] = 200
  assert got[0] == 200
  got[1] = 201  # the result is writable
  assert memory[1] == 201


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_roundtrip_dtypes(dtype):
  for shape in SHAPES:
    array = make_array(dtype, shape)
    assert_same_array(roundtrip(array), array)


def test_roundtrip_non_contiguous_and_fortran_and_zero_d():
  base = np.arange(240, dtype=np.float32).reshape(4, 6, 10)
  for array in (
    base[:, ::2, 1::3],
    base.T,
    base[::-1],
    np.asfortranarray(base),
    np.array(3.5),
    np.array(7, dtype=np.int16),
    base[0, 0, 0:0],
    np.broadcast_to(np.arange(3), (4, 3)),
  ):
    assert_same_array(roundtrip(array), array)


def test_roundtrip_arbitrary_picklables():
  @dataclasses.dataclass
  class Local:
    value: int

  factor = 3
  value = {
    "point": Point(1.0, 2.0, ["a"]),
    "nested": {"a": [1, {"b": (2, 3)}], "c": {4, 5}, "d": None, "e": b"\x00" * 10},
    "local": Local(7),
    "lambda": lambda x: x * factor,
  }
  got = roundtrip(value)
  assert got["point"] == Point(1.0, 2.0, ["a"])
  assert got["nested"] == value["nested"]
  assert got["local"].value == 7
  assert got["lambda"](5) == 15


def test_unpicklable_value_raises_serialization_error_naming_what():
  with pytest.raises(errors.SerializationError) as info:
    serialization.dumps({"lock": threading.Lock()}, "arguments of node.method")
  assert "arguments of node.method" in str(info.value)
  assert isinstance(info.value, TypeError)


# --- code sent by value ---------------------------------------------------------

BY_VALUE_MODULE = """\
\"\"\"Code that travels by value (tests/courier/test_serialization.py).\"\"\"


def crash():
  raise ValueError("crashed by value")  # a comment only the source has


class Crasher:
  def crash(self):
    return [crash() for _ in range(1)]


def also_here():
  return crash
"""
# Loads what stdin holds in a fresh interpreter and prints the traceback of its call.
LOAD_AND_CALL = """\
import pickle, sys, traceback
crasher = pickle.loads(sys.stdin.buffer.read())
try:
  crasher.crash()
except ValueError:
  traceback.print_exc(file=sys.stdout)
"""


@pytest.fixture
def by_value(tmp_path, monkeypatch):
  """A module of tmp_path, imported and registered for pickling by value."""
  path = tmp_path / "lp_by_value_module.py"
  path.write_text(BY_VALUE_MODULE)
  spec = importlib.util.spec_from_file_location("lp_by_value_module", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  monkeypatch.setitem(sys.modules, module.__name__, module)
  cloudpickle.register_pickle_by_value(module)
  yield module
  cloudpickle.unregister_pickle_by_value(module)


def frame(path: pathlib.Path, function: str, source: str) -> str:
  """A traceback's lines for line `source` of `path`, in `function`."""
  numbers = [n for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip() == source]
  assert len(numbers) == 1, f"{source!r} is not one line of {path}"
  return f'  File "{path}", line {numbers[0]}, in {function}\n    {source}\n'


def test_code_sent_by_value_keeps_its_file_lines_and_source_where_the_file_is_gone(by_value):
  path = pathlib.Path(by_value.__file__)
  expected = [
    frame(path, "crash", "return [crash() for _ in range(1)]"),
    frame(path, "crash", 'raise ValueError("crashed by value")  # a comment only the source has'),
  ]
  data = serialization.cloudpickle_dumps(by_value.Crasher())
  path.unlink()  # as on a host that does not have the file
  result = subprocess.run(
    [sys.executable, "-c", LOAD_AND_CALL], input=data, capture_output=True, timeout=60
  )
  printed = result.stdout.decode()
  assert result.returncode == 0, result.stderr.decode()
  assert "ValueError: crashed by value" in printed
  for lines in expected:
    assert lines in printed, printed
  assert "<dynamic-code>" not in printed


def test_a_files_source_travels_once_per_pickle(by_value):
  data = serialization.cloudpickle_dumps([by_value.crash, by_value.Crasher, by_value.also_here])
  assert data.count(b"a comment only the source has") == 1
  loaded = pickle.loads(data)
  assert loaded[2]() is loaded[0], "functions of one module still share their globals"


def test_code_pickled_by_another_python_version_is_refused_saying_which_to_use(by_value):
  data = serialization.cloudpickle_dumps(by_value.crash)
  other = "2." + "9" * (len(serialization.PYTHON) - 2)  # as long: the pickle stays valid
  pickled_version = pickle.SHORT_BINUNICODE + bytes([len(other)])
  assert data.count(pickled_version + serialization.PYTHON.encode()) == 1
  data = data.replace(
    pickled_version + serialization.PYTHON.encode(), pickled_version + other.encode()
  )
  with pytest.raises(errors.SerializationError) as info:
    pickle.loads(data)
  message = str(info.value)
  assert f"code from {by_value.__file__} was pickled by Python {other}" in message
  assert f"cannot run in Python {serialization.PYTHON}" in message
  assert f"Run the node with Python {other}" in message


def test_code_that_marshal_cannot_write_travels_as_cloudpickle_sends_it():
  def add_one(x):
    return x + 1

  # A constant marshal does not know (code made by hand, not by the compiler).
  code = add_one.__code__.replace(co_consts=(*add_one.__code__.co_consts, fractions.Fraction(1, 3)))
  function = types.FunctionType(code, add_one.__globals__, "add_one")
  with pytest.raises(ValueError):
    marshal.dumps(code)
  assert pickle.loads(serialization.cloudpickle_dumps(function))(1) == 2


# --- through a server in another process ------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_echo_dtypes_and_shapes_across_processes(child_server, dtype):
  client = child_client(child_server)
  arrays = [make_array(dtype, shape) for shape in SHAPES]
  for array, got in zip(arrays, client.echo(arrays), strict=True):
    assert_same_array(got, array)
  for array in arrays:
    assert_same_array(client.echo(array), array)


def test_echo_non_contiguous_and_zero_d_across_processes(child_server, transport):
  client = child_client(child_server, transport)
  base = np.arange(10_000, dtype=np.float64).reshape(100, 100)
  for array in (base[::3, 1::2], base.T, np.asfortranarray(base), np.array(1.25), base[:, 5]):
    got = client.echo(array)
    assert_same_array(got, array)
    assert got.flags.writeable
    assert_same_array(client.futures.echo(array).result(TIMEOUT), array)


def test_echo_mixed_arrays_and_objects_across_processes(child_server, transport):
  client = child_client(child_server, transport)
  value = {"obs": np.ones((3, 84, 84), np.uint8), "reward": np.float32(1.5), "info": Point(1, 2)}
  got = client.echo(value)
  assert_same_array(got["obs"], value["obs"])
  assert got["reward"] == np.float32(1.5)
  assert got["info"] == Point(1, 2)


def test_one_gib_array_echo_across_processes(child_server):
  client = child_client(child_server, "unix", timeout=120)
  array = np.empty(1 << 30, dtype=np.uint8)
  array[:] = 7
  array[::4096] = np.arange(array[::4096].size) % 251
  got = client.echo(array)
  assert got.shape == array.shape and got.dtype == np.uint8
  step = 64 << 20
  for start in range(0, array.size, step):
    assert np.array_equal(got[start : start + step], array[start : start + step])


def test_arbitrary_picklables_across_processes(child_server, transport):
  client = child_client(child_server, transport)

  @dataclasses.dataclass
  class Local:
    items: list

  offset = 100
  assert client.echo(Point(3.0, 4.0, ["x"])) == Point(3.0, 4.0, ["x"])
  nested = {"a": {"b": {"c": [1, 2, (3, {"d": frozenset({4})})]}}, "e": b"\xff" * (1 << 20)}
  assert client.echo(nested) == nested
  assert client.echo(Local([1, 2])).items == [1, 2]
  assert client.apply(lambda x, y=0: x + y + offset, 1, y=2) == 103
  make_adder = client.apply(lambda: lambda x: x + offset)
  assert make_adder(1) == 101


def test_unpicklable_argument_raises_serialization_error(child_server):
  client = child_client(child_server)
  with pytest.raises(errors.SerializationError) as info:
    client.echo(threading.Lock())
  assert "echo" in str(info.value)
  with pytest.raises(errors.SerializationError) as info:
    client.futures.echo({"lock": threading.Lock()}).result(TIMEOUT)
  assert "echo" in str(info.value)
  assert client.echo("still works") == "still works"


def test_unpicklable_result_raises_serialization_error(child_server):
  client = child_client(child_server)
  with pytest.raises(errors.SerializationError) as info:
    client.unpicklable_result()
  assert "unpicklable_result" in str(info.value)
  error = client.futures.unpicklable_result().exception(TIMEOUT)
  assert isinstance(error, errors.SerializationError)
  assert client.echo(1) == 1


# 2**16 arrays in one value: more than the header's 16-bit buffer count holds.
MANY = 70_000


def test_argument_with_more_than_65535_arrays(child_server):
  """Either it arrives whole or the caller gets a SerializationError; nothing else."""
  client = child_client(child_server, timeout=60)  # 70k arrays take seconds to pickle
  arrays = [np.full(1, i) for i in range(MANY)]
  try:
    got = client.echo(arrays)
  except errors.SerializationError:
    pass
  else:
    assert len(got) == MANY and got[-1][0] == MANY - 1
  assert client.echo(1) == 1


def test_result_with_more_than_65535_arrays(child_server):
  """Either it arrives whole or the caller gets an error; the call must not hang."""
  client = child_client(child_server, timeout=60)  # 70k arrays take seconds to pickle
  try:
    got = client.many_arrays(MANY)
  except errors.SerializationError:
    pass
  else:
    assert len(got) == MANY and got[-1][0] == MANY - 1
  assert client.echo(1) == 1
