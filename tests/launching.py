"""The fixture most launcher tests share: lp.launch, and a stop at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import launchpad as lp

# How long teardown waits for each program to stop.
STOP_SECONDS = 60.0


def launching(
  *, needs: tuple[str, ...] = (), **defaults: Any
) -> Callable[[], Iterator[Callable[..., lp.Controller]]]:
  """A pytest fixture that calls lp.launch with `defaults` (a test's own
  arguments win) and stops every program it launched at teardown, without
  raising their failures: the tests check those themselves. `needs` names
  fixtures that must be set up first (a cluster to launch on)."""

  @pytest.fixture
  def launched(request: pytest.FixtureRequest) -> Iterator[Callable[..., lp.Controller]]:
    for name in needs:
      request.getfixturevalue(name)
    controllers: list[lp.Controller] = []

    def _launch(program: lp.Program, **kwargs: Any) -> lp.Controller:
      controller = lp.launch(program, **{**defaults, **kwargs})
      controllers.append(controller)
      return controller

    yield _launch
    for controller in controllers:
      controller.stop(timeout=STOP_SECONDS)

  return launched
