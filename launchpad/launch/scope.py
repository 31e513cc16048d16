"""What `lp launch`, `lp graph` and `lp sweep` ask of the lp.launch calls a target makes.

The `lp` command runs a user's script, whose own main calls `lp.launch`. A
`LaunchScope` entered around that run is how the command reaches those
calls: `lp.launch` takes the options its call left out from the scope (the
command line's --log-dir, --grace-period, ...), records every controller it
returns there, or, in a capturing scope (`lp graph`), hands its program
over and launches nothing. A scope is a context variable: it holds in the
thread that entered it, for as long as the `with` block runs.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from launchpad.launch.controller import Controller
  from launchpad.program import Program


class ProgramCaptured(BaseException):
  """Raised by lp.launch in a capturing scope, so that the target's main ends
  there without running anything; carries the program it was given."""

  def __init__(self, program: Program):
    super().__init__(program)
    self.program = program


class LaunchScope:
  """Defaults for the lp.launch calls made inside `with scope:`, and the
  controllers they returned."""

  def __init__(self, defaults: Mapping[str, Any] | None = None, capture: bool = False):
    """Args:
    defaults: lp.launch keyword arguments used where a call leaves them out
      (None values are ignored).
    capture: lp.launch raises ProgramCaptured(program) instead of launching.
    """
    self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
    self.capture = capture
    self.controllers: list[Controller] = []
    self._tokens: list[contextvars.Token] = []

  def __enter__(self) -> LaunchScope:
    self._tokens.append(_current.set(self))
    return self

  def __exit__(self, *exc_info: object) -> None:
    _current.reset(self._tokens.pop())


def current() -> LaunchScope | None:
  """The innermost scope entered in this thread, if any."""
  return _current.get()


_current: contextvars.ContextVar[LaunchScope | None] = contextvars.ContextVar(
  "launchpad_launch_scope", default=None
)
