"""Torch tensors and JAX arrays out of band, as numpy arrays are.

Neither travels out of band by itself: a torch tensor pickles its storage
through `torch.save` into bytes inside the pickle, and a JAX array pickles a
numpy copy of itself in band. `reducers()` gives the courier's picklers
(serialization.py) reductions that hand their memory to the pickle's buffer
callback instead, so that the protocol writes it straight from the tensor:

- A CPU torch tensor travels as the bytes of the part of its storage it
  spans, viewed as uint8 (so every dtype travels alike, bfloat16 included),
  with its dtype, shape and strides; the receiver's tensor adopts the
  received memory (`torch.frombuffer`) and takes the same strides. A view
  with gaps between its elements (`t[::2]`, a column) would drag the gaps
  along: it travels as a contiguous copy of its elements and arrives
  contiguous. Tensors travel as values: two views of one storage arrive as
  two tensors of their own (torch's pickling would keep them views).
  Tensors torch must pickle itself keep its reduction: ones that require
  grad, carry Python attributes, are quantized, sparse or nested, are not
  on the CPU, and subclasses (`nn.Parameter`).
- A JAX array travels as the bytes of `np.asarray(array)`, a view of its
  host memory for CPU arrays, with its dtype and shape, and arrives as
  `jax.device_put` of a numpy array on the received memory, which XLA
  adopts without a copy if it is 64-byte aligned. Received buffers seldom
  are, so those are first copied into aligned memory, once. Weakly typed
  arrays (made from Python scalars), PRNG keys and arrays not fully
  addressable keep JAX's own reduction, which keeps what they are.

Nothing here imports torch or JAX: there are reductions only for the modules
the process imported already (a value cannot hold a tensor otherwise), and
the rebuilding functions run only where a pickle holds one, whose own
unpickling imports the library anyway.

Tensors received in shared memory (same-host calls of large buffers,
shared_memory.py) arrive on read-only memory: a torch tensor, which has no
read-only flag, is rebuilt on a copy of it; a JAX array, immutable anyway,
on the memory itself when it is aligned (a mapping always is).
"""

from __future__ import annotations

import copyreg
import functools
import pickle
import sys
from collections.abc import Callable
from typing import Any

# XLA's CPU client adopts host memory aligned to this many bytes; other memory
# it copies, 3-5x slower than numpy copies it into aligned memory.
XLA_ALIGNMENT = 64


def reducers() -> dict[type, Callable[[Any], tuple]]:
  """Exact type -> reduction, for the array types of the libraries imported so far."""
  return _reducers(*_array_types())


def pickler() -> type[pickle.Pickler] | None:
  """The C pickler with these reductions in its dispatch table (beside
  copyreg's), for the libraries imported so far; None if neither is.

  The class is made once per set of libraries (and again when copyreg's
  table grows, so later registrations count): a pickler's own table costs a
  call a merge of both tables each time, ~2 us (bench/tensors.py).
  """
  tensor, array = _array_types()
  if tensor is None and array is None:
    return None
  return _pickler(tensor, array, len(copyreg.dispatch_table))


def _array_types() -> tuple[type | None, type | None]:
  """torch.Tensor and JAX's concrete array type, where imported (else None)."""
  tensor = getattr(sys.modules.get("torch"), "Tensor", None)  # None while torch is half imported
  # JAX's concrete array type (jax.Array is abstract); PRNG keys are another type.
  array = getattr(sys.modules.get("jax._src.array"), "ArrayImpl", None)
  return tensor, array


def _reducers(tensor: type | None, array: type | None) -> dict[type, Callable[[Any], tuple]]:
  found: dict[type, Callable[[Any], tuple]] = {}
  if tensor is not None:
    found[tensor] = reduce_torch_tensor
  if array is not None:
    found[array] = reduce_jax_array
  return found


@functools.lru_cache(maxsize=8)
def _pickler(tensor: type | None, array: type | None, registered: int) -> type[pickle.Pickler]:
  """`pickler()`'s class for these types; `registered` only tells copyreg's tables apart."""
  table = {**copyreg.dispatch_table, **_reducers(tensor, array)}
  return type("ArrayPickler", (pickle.Pickler,), {"dispatch_table": table, "__slots__": ()})


def reduce_torch_tensor(tensor: Any) -> tuple:
  """A CPU tensor as (rebuild_torch_tensor, (its spanned bytes out of band, dtype, shape, strides))."""
  import torch  # imported already: the value holds a tensor

  if (
    tensor.device.type != "cpu"
    or tensor.layout != torch.strided
    or tensor.requires_grad
    or tensor.is_quantized
    or tensor.is_nested
    or tensor.__dict__
  ):
    return tensor.__reduce_ex__(pickle.HIGHEST_PROTOCOL)  # torch's own, in band
  tensor = tensor.resolve_conj().resolve_neg()
  shape, strides, numel = tuple(tensor.shape), tensor.stride(), tensor.numel()
  span = 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) if numel else 0
  if span > numel:  # gaps between the elements: send only the elements
    tensor = tensor.contiguous()
    strides, span = tensor.stride(), numel
  spanned = tensor.as_strided((span,), (1,), tensor.storage_offset())
  memory = spanned.view(torch.uint8).numpy()  # no copy: the tensor's own memory
  return rebuild_torch_tensor, (pickle.PickleBuffer(memory), tensor.dtype, shape, strides)


def rebuild_torch_tensor(buffer: Any, dtype: Any, shape: tuple, strides: tuple) -> Any:
  """The tensor `reduce_torch_tensor` sent, on the received memory itself."""
  import torch

  memory = memoryview(buffer)
  if not memory.nbytes:
    return torch.empty_strided(shape, strides, dtype=dtype)
  if memory.readonly:  # sent in band (bytes): a tensor needs memory it may write
    buffer = bytearray(memory)
  flat = torch.frombuffer(buffer, dtype=torch.uint8).view(dtype)
  return flat.as_strided(shape, strides)


def reduce_jax_array(array: Any) -> tuple:
  """A JAX array as (rebuild_jax_array, (its host memory out of band, dtype, shape))."""
  if array.weak_type or not array.is_fully_addressable:
    return array.__reduce__()  # JAX's own: keeps the weak type, or raises as JAX does
  import numpy as np  # imported already: JAX imports it

  host = np.asarray(array)
  # As bytes: numpy would pickle dtypes it does not own (bfloat16) in band.
  memory = pickle.PickleBuffer(host.reshape(-1).view(np.uint8))
  return rebuild_jax_array, (memory, host.dtype, host.shape)


def rebuild_jax_array(buffer: Any, dtype: Any, shape: tuple) -> Any:
  """The JAX array `reduce_jax_array` sent, on the default device."""
  import jax
  import numpy as np

  host = np.frombuffer(buffer, dtype)
  if host.ctypes.data % XLA_ALIGNMENT and jax.default_backend() == "cpu":
    host = aligned_copy(host)
  return jax.device_put(host.reshape(shape))


def aligned_copy(array: Any) -> Any:
  """A copy of a 1-d numpy array in memory aligned for XLA to adopt."""
  import numpy as np

  raw = np.empty(array.nbytes + XLA_ALIGNMENT, np.uint8)
  start = -raw.ctypes.data % XLA_ALIGNMENT
  copy = raw[start : start + array.nbytes].view(array.dtype)
  np.copyto(copy, array)
  return copy
