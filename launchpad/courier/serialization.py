"""Turning call arguments and results into bytes, with numpy data out of band.

Pickle protocol 5 hands contiguous buffers (numpy arrays, PickleBuffer) to a
callback instead of copying them into the pickle stream; the protocol then
writes those buffers straight from the array's memory with `sendmsg` and reads
them into fresh memory that the unpickled arrays adopt. So an array is copied
only by the kernel. The fast C pickler is tried first; cloudpickle handles
what it cannot (lambdas, local classes, interactively defined functions).
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from launchpad import errors
from launchpad.courier import protocol

PROTOCOL = 5


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

  def keep(buffer: pickle.PickleBuffer) -> bool:
    """Out of band (False) while a frame can list the buffers; in band after."""
    if len(buffers) < protocol.MAX_BUFFERS:
      buffers.append(buffer)
      return False
    return True

  callback = keep if out_of_band else None
  try:
    data = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=callback)
  except Exception:  # noqa: BLE001 - any failure of the fast path gets a second try
    buffers.clear()
    try:
      data = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=callback)
    except Exception as e:
      raise errors.SerializationError(
        f"cannot serialize the {what}: {type(e).__name__}: {e}. Pass only "
        "picklable values (numpy arrays, builtins, dataclasses, module-level "
        "classes) through RPC calls."
      ) from e
  return data, [b.raw() for b in buffers]


def loads(data: bytes | memoryview, buffers: list[Any]) -> Any:
  """Inverse of `dumps`: the unpickled object adopts `buffers` without copies."""
  return pickle.loads(data, buffers=buffers)
