"""Turning call arguments and results into bytes, with numpy data out of band.

Pickle protocol 5 hands contiguous buffers (numpy arrays, PickleBuffer) to a
callback instead of copying them into the pickle stream; the protocol then
writes those buffers straight from the array's memory with `sendmsg` and reads
them into fresh memory that the unpickled arrays adopt. So an array is copied
only by the kernel. Torch tensors and JAX arrays go out of band too, through
reductions of their own (tensors.py), in processes that imported torch or JAX.
The fast C pickler is tried first; cloudpickle handles what it cannot
(lambdas, local classes, interactively defined functions).

Code that cloudpickle sends by value (those, and the launched script's and
other modules registered by value, which is how nodes travel) keeps its file
name, lines and source text (`Pickler`), so that tracebacks of nodes name the
user's file and line and show the line, wherever the node runs.
"""

from __future__ import annotations

import dataclasses
import io
import linecache
import marshal
import pickle
import sys
import types
from collections.abc import Callable
from typing import Any, BinaryIO, NamedTuple

import cloudpickle

from launchpad import errors
from launchpad.courier import protocol, tensors

PROTOCOL = 5
# A `bytes` value at least this large, the value itself or an item of it or
# of its items (a call's arguments, a result's fields), travels as a piece of
# its own pickle (protocol.PayloadParts), written from its own memory.
LARGE_BYTES = 1 << 20
# The Python whose bytecode pickled code carries; code runs only under the same.
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def dumps(
  obj: Any, what: str = "value", out_of_band: bool = True
) -> tuple[bytes, list[memoryview]]:
  """Returns the pickle of `obj` and the raw buffers it refers to out of band.

  Args:
    obj: what to pickle.
    what: how to name `obj` in an error.
    out_of_band: False to keep every buffer inside the pickle, for values that
      are stored or forwarded as one byte string (exceptions, reports).
  """
  buffers: list[pickle.PickleBuffer] = []
  callback = buffers.append if out_of_band else None
  try:
    data = dumps_in_parts(obj, callback) if out_of_band and _holds_large_bytes(obj) else None
    if data is None:
      data = fast_dumps(obj, callback)
    if len(buffers) > protocol.MAX_BUFFERS:  # more than a frame lists: the rest in band
      buffers.clear()
      data = fast_dumps(obj, _up_to(buffers, protocol.MAX_BUFFERS))
  except Exception:  # noqa: BLE001 - any failure of the fast path gets a second try
    buffers.clear()
    try:
      keep = _up_to(buffers, protocol.MAX_BUFFERS) if out_of_band else None
      data = cloudpickle_dumps(obj, buffer_callback=keep)
    except Exception as e:
      raise errors.SerializationError(
        f"cannot serialize the {what}: {type(e).__name__}: {e}. Pass only "
        "picklable values (numpy arrays, builtins, dataclasses, module-level "
        "classes) through RPC calls."
      ) from e
  if not buffers:
    return data, []
  return data, [b.raw() for b in buffers]


def _up_to(buffers: list, limit: int) -> Callable[[pickle.PickleBuffer], bool]:
  """A buffer callback that keeps buffers out of band (in `buffers`) while
  there are fewer than `limit`, and in band after."""

  def keep(buffer: pickle.PickleBuffer) -> bool:
    if len(buffers) < limit:
      buffers.append(buffer)
      return False
    return True

  return keep


def fast_dumps(
  obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool] | None = None
) -> bytes:
  """The C pickler's `pickle.dumps`, with torch tensors and JAX arrays out of band.

  Their reductions (tensors.py) are in the dispatch table of a pickler of
  courier's own (not copyreg's, which every pickle of the process reads),
  and only once the process has imported torch or JAX (bench/tensors.py
  measures what it costs a small call).
  """
  pickler = tensors.pickler()
  if pickler is None:
    return pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=buffer_callback)
  with io.BytesIO() as file:
    pickler(file, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return file.getvalue()


def _holds_large_bytes(obj: Any) -> bool:
  """Whether `obj`, or an item of it or of its items (tuples, lists, dict
  values), is a `bytes` of at least LARGE_BYTES: a look of ~0.4 us at a
  call's request, not a walk, written out for the small call's sake."""
  kind = type(obj)
  if kind is bytes:
    return len(obj) >= LARGE_BYTES
  if kind is tuple or kind is list:
    items = obj
  elif kind is dict:
    items = obj.values()
  else:
    return False
  for item in items:
    kind = type(item)
    if kind is bytes:
      if len(item) >= LARGE_BYTES:
        return True
    elif kind is tuple or kind is list or kind is dict:
      for inner in item.values() if kind is dict else item:
        if type(inner) is bytes and len(inner) >= LARGE_BYTES:
          return True
  return False


def dumps_in_parts(
  obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool] | None
) -> protocol.PayloadParts | None:
  """The pickle of `obj` in pieces: the C pickler hands a large `bytes` to
  its file's write as it is, so the pickle holds no copy of it. None when
  torch or JAX is imported (fast_dumps' pickler then; nothing is lost but
  the copy)."""
  if tensors.pickler() is not None:
    return None
  parts: list[bytes] = []
  file = types.SimpleNamespace(write=parts.append)
  pickle.Pickler(file, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(obj)
  return protocol.PayloadParts(parts)


class Loaded(NamedTuple):
  """What a pickle read from its connection (load_stream) held, or why it
  could not be unpickled."""

  value: Any
  error: BaseException | None


def load_stream(stream: protocol.PayloadStream) -> Loaded:
  """Unpickles a frame's pickle as it arrives (protocol.FrameReader's
  `load`): its large `bytes` are read straight into their own memory.

  An error of the connection propagates; one of the unpickling is kept, to
  be raised where the value is asked for (`loads`), as for any frame.
  """
  try:
    return Loaded(pickle.Unpickler(stream).load(), None)
  except Exception as e:  # noqa: BLE001 - handed to whoever asks for the value
    if stream.failed is not None:
      raise stream.failed from None
    return Loaded(None, e.with_traceback(None))


def loads(data: bytes | memoryview | Loaded, buffers: list[Any]) -> Any:
  """Inverse of `dumps`: the unpickled object adopts `buffers` without copies."""
  if type(data) is Loaded:
    if data.error is not None:
      raise data.error
    return data.value
  return pickle.loads(data, buffers=buffers)


def cloudpickle_dumps(
  obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool] | None = None
) -> bytes:
  """`cloudpickle.dumps`, with code that keeps its file, lines and source (`Pickler`).

  Everything launchpad sends by value goes through here: node payloads to
  their processes, hosts and actors, and what the fast pickler cannot take.
  Plain `pickle.loads` reads the result where launchpad is installed.
  """
  with io.BytesIO() as file:
    Pickler(file, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return file.getvalue()


class Pickler(cloudpickle.Pickler):
  """cloudpickle whose code objects name their real file and bring its source.

  Recent cloudpickle (3.1.3; 3.0 did not) renames every code object it sends
  by value "<dynamic-code>", so a traceback from a node would show neither the user's
  file nor the line. Here a code object travels as its marshal, which keeps
  the file name, first line, line table and nested code. The source text of
  each file whose code travels goes along once per pickle (a `Source` shared
  by that file's code objects through the pickle memo); loading puts it in
  `linecache`, where tracebacks read lines.

  The source travels in the pickle rather than in the SSH code bundle
  (`launch/bundle.py`) because by-value code is exactly the code whose file
  need not exist where the node runs: the launched script, modules that
  `lp launch` registers by value, on SSH hosts, Ray clusters and in fresh
  interpreters alike, while the bundle only reaches SSH hosts and holds the
  modules nodes import by name. The text is also the launcher's, so it
  matches the code that runs even where the file was edited since.
  """

  def __init__(self, file: BinaryIO, protocol: int = PROTOCOL, buffer_callback=None):
    super().__init__(file, protocol=protocol, buffer_callback=buffer_callback)
    # One Source per file: pickled once, referred to by the memo after that.
    self._sources: dict[str, Source | None] = {}
    self._array_reducers = tensors.reducers()

  def reducer_override(self, obj: Any) -> Any:
    if type(obj) is types.CodeType:
      return self._reduce_code(obj)
    reduce = self._array_reducers.get(type(obj))
    if reduce is not None:
      return reduce(obj)
    return super().reducer_override(obj)

  def _reduce_code(self, code: types.CodeType) -> Any:
    try:
      marshalled = marshal.dumps(code)
    except ValueError:  # constants marshal cannot write (code built by hand)
      return NotImplemented  # cloudpickle's own reduction, without the file name
    return load_code, (marshalled, PYTHON, self._source(code.co_filename))

  def _source(self, filename: str) -> Source | None:
    if filename not in self._sources:
      lines = linecache.getlines(filename)
      self._sources[filename] = Source(filename, sum(map(len, lines)), lines) if lines else None
    return self._sources[filename]


@dataclasses.dataclass
class Source:
  """The text of a file whose code travels by value, as linecache holds it."""

  filename: str
  size: int
  lines: list[str]

  def remember(self) -> None:
    """Puts the text in linecache under the code's file name. With no
    modification time, `linecache.checkcache` keeps the entry even where no
    such file exists, and prefers it to a file of that name: it is the text of
    the code that runs."""
    linecache.cache[self.filename] = (self.size, None, self.lines, self.filename)


def load_code(marshalled: bytes, python: str, source: Source | None) -> types.CodeType:
  """A code object pickled by `Pickler`; its source goes into linecache.

  Raises:
    SerializationError: the code was pickled by another Python version,
      whose bytecode this interpreter cannot run.
  """
  if python != PYTHON:
    raise errors.SerializationError(
      f"code from {source.filename if source else 'the launcher'} was pickled by Python "
      f"{python} and cannot run in Python {PYTHON}: bytecode differs between Python versions. "
      f"Run the node with Python {python}, like the launcher (the hosts file's `python`, "
      "lp.PythonProcess(interpreter=...) or the Ray cluster's Python)."
    )
  if source is not None:
    source.remember()
  return marshal.loads(marshalled)
