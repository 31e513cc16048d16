"""A node's exception as data on the control plane, and rebuilt from it.

Failure reports come over the network, so the launcher must not run anything
they carry: an exception travels as its type's module and qualified name, its
message, its string arguments and its notes, never as a pickle. The launcher
rebuilds it only when its type is an exception class of a module that this
process has already imported (a received name is looked up, never imported),
and otherwise gives a RemoteError that names the type.
"""

from __future__ import annotations

import sys
import types

from launchpad import errors
from launchpad.control import control_pb2


def describe(error: BaseException) -> control_pb2.ExceptionInfo:
  """`error` as data."""
  kind = type(error)
  strings = all(isinstance(arg, str) for arg in error.args)
  return control_pb2.ExceptionInfo(
    module=kind.__module__,
    qualname=kind.__qualname__,
    message=message(error),
    args=error.args if strings else (),
    notes=[str(note) for note in getattr(error, "__notes__", ())],
  )


def message(error: BaseException) -> str:
  """str(error), or what says it has none: a failure is reported even when
  its exception's __str__ raises."""
  try:
    return str(error)
  except Exception as e:  # noqa: BLE001 - any way it fails, the report must go out
    return f"<str() of the exception raised {type(e).__name__}>"


def type_name(info: control_pb2.ExceptionInfo) -> str:
  """The exception's type as a user would write it (`ValueError`, `mod.Error`)."""
  return info.qualname if info.module == "builtins" else f"{info.module}.{info.qualname}"


def rebuild(info: control_pb2.ExceptionInfo, node: str, traceback: str) -> BaseException:
  """The exception `info` describes, raised in `node` with `traceback`: of its
  own type when that type is already imported here and accepts its arguments,
  else a RemoteError naming the type."""
  kind = known_type(info.module, info.qualname)
  error = None
  if kind is not None:
    arguments = list(info.args) or ([info.message] if info.message else [])
    try:
      error = kind(*arguments)
    except Exception:  # noqa: BLE001 - a type that wants other arguments: named instead
      error = None
  if not isinstance(error, BaseException):
    error = errors.RemoteError(node, type_name(info), info.message, traceback)
  for note in info.notes:
    error.add_note(note)
  return error


def known_type(module: str, qualname: str) -> type[BaseException] | None:
  """The exception class `module.qualname` if `module` is imported already.

  Only the dictionaries of modules and classes are read (no getattr), so a
  received name triggers nothing a module or class runs on attribute access.
  """
  found: object = sys.modules.get(module)
  for part in qualname.split("."):
    if not isinstance(found, (types.ModuleType, type)):
      return None
    found = vars(found).get(part)
  if isinstance(found, type) and issubclass(found, BaseException):
    return found
  return None
