"""A sweep's search space: which parameters the program factory gets, and their values.

Given as a TOML file or as the mapping it parses to, one entry per parameter
(a keyword argument of the factory):

    learning_rate = {type = "float", low = 1e-4, high = 1e-2, log = true}
    batch_size = {type = "int", low = 32, high = 256, step = 32}
    target_update_period = {values = [50, 250, 1000]}   # a choice (a grid axis)
    seed = [0, 1, 2]                                    # the same, shorter
    num_actors = 2                                      # a constant

`type = "float"` or `"int"` takes `low`, `high`, and either `log = true`
(sampled on a log scale) or a `step`; `values` is a choice among numbers,
strings and booleans. `seed` is a parameter like the others when the space
names it; when it does not, each trial's seed is its trial number, passed
as `seed=` to a factory that has a parameter of that name.

Everything is checked when the space is read, and every error names the
parameter (and the file) and says what to write instead.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import pathlib
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from launchpad.sweep.errors import SweepError

# The parameter every trial gets, from the space or from its trial number.
SEED = "seed"
# A grid with more points than this is refused: nobody runs it to the end.
MAX_GRID_POINTS = 100_000
Value = bool | int | float | str
_KEYS = {"type", "low", "high", "log", "step", "values"}


class SpaceError(SweepError, ValueError):
  """The space cannot be used as given; the message names the parameter and what to do."""


@dataclasses.dataclass(frozen=True)
class Parameter:
  """One parameter: a float or int range, or a choice among `values`."""

  name: str
  kind: str  # "float", "int" or "choice"
  low: float | int | None = None
  high: float | int | None = None
  log: bool = False
  step: float | int | None = None
  values: tuple[Value, ...] = ()

  def grid(self) -> list[Value] | None:
    """Every value, when there are finitely many (a choice, an int range, a
    float range with a step); None for a continuous range."""
    if self.kind == "choice":
      return list(self.values)
    if self.kind == "int":
      if self.log:
        return list(range(self.low, self.high + 1))
      return list(range(self.low, self.high + 1, self.step or 1))
    if self.step is None:
      return None
    count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
    return [self.low + i * self.step for i in range(count)]

  def describe(self) -> dict[str, Any]:
    """The parameter as the space file gives it (for the sweep's record)."""
    if self.kind == "choice":
      return {"values": list(self.values)}
    fields = {"type": self.kind, "low": self.low, "high": self.high}
    if self.log:
      fields["log"] = True
    if self.step is not None:
      fields["step"] = self.step
    return fields


@dataclasses.dataclass(frozen=True)
class Space:
  """The parameters of a sweep, by name; `source` names where they came from."""

  parameters: dict[str, Parameter]
  source: str = "the space"

  @property
  def names(self) -> list[str]:
    return sorted(self.parameters)

  def grid(self) -> dict[str, list[Value]]:
    """Every parameter's values, for a grid search; SpaceError names a
    parameter that has no finite set of values."""
    grid = {}
    for name in self.names:
      values = self.parameters[name].grid()
      if values is None:
        raise SpaceError(
          f"{self.source}: {name} is a float range without a step, which a grid cannot "
          f"enumerate; give it values = [...] or a step, or use another sampler (random, tpe)."
        )
      grid[name] = values
    points = math.prod(len(values) for values in grid.values())
    if points > MAX_GRID_POINTS:
      raise SpaceError(
        f"{self.source}: the grid has {points:,} points, more than {MAX_GRID_POINTS:,}; give the "
        "ranges steps or fewer values, or use another sampler (random, tpe)."
      )
    return grid

  def grid_size(self) -> int:
    return math.prod(len(values) for values in self.grid().values())

  def describe(self) -> dict[str, Any]:
    return {name: self.parameters[name].describe() for name in self.names}

  def check_factory(self, factory: Callable[..., Any]) -> None:
    """Raises SpaceError unless `factory` takes every parameter of the space
    as a keyword argument and gets every argument it needs from the space."""
    name = getattr(factory, "__qualname__", repr(factory))
    try:
      signature = inspect.signature(factory)
    except (TypeError, ValueError):
      return  # a builtin or extension without a signature: the first trial will tell
    parameters = signature.parameters.values()
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    keywords = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [n for n in self.names if n not in keywords and not takes_any]
    if unknown:
      raise SpaceError(
        f"{self.source} names {_list(unknown)}, which {name}() does not take; its parameters "
        f"are: {', '.join(keywords) or '(none)'}. Rename them in the space, or add them to "
        f"{name}()."
      )
    needed = [
      p.name
      for p in parameters
      if p.default is p.empty
      and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
      and p.name not in self.parameters
      and p.name != SEED
    ]
    if needed:
      raise SpaceError(
        f"{name}() needs {_list(needed)}, which {self.source} does not give; add "
        f"{'them' if len(needed) > 1 else 'it'} to the space (a constant is `name = value`)."
      )

  def passes_seed(self, factory: Callable[..., Any]) -> bool:
    """Whether trials pass their seed to `factory` though the space does not
    name it: the factory has a parameter called `seed`."""
    if SEED in self.parameters:
      return True
    try:
      return SEED in inspect.signature(factory).parameters
    except (TypeError, ValueError):
      return False


def load(space: Mapping[str, Any] | str | pathlib.Path) -> Space:
  """The Space of a TOML file (a path) or of the mapping such a file parses to."""
  if isinstance(space, Space):
    return space
  if isinstance(space, str | pathlib.Path):
    path = pathlib.Path(space)
    try:
      text = path.read_text()
    except OSError as e:
      raise SpaceError(f"cannot read the space file {path} ({e.strerror}).") from None
    try:
      entries = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
      raise SpaceError(f"{path} is not valid TOML: {e}.") from None
    return parse(entries, str(path))
  if isinstance(space, Mapping):
    return parse(space, "the space")
  raise SpaceError(
    f"a space is a mapping of parameter names to their values, or the path of a TOML file; "
    f"got {space!r}."
  )


def parse(entries: Mapping[str, Any], source: str) -> Space:
  """Checks and converts the entries of a space (see the module's docstring)."""
  if not entries:
    raise SpaceError(
      f"{source} defines no parameter; add one, e.g. "
      'learning_rate = {type = "float", low = 1e-4, high = 1e-2, log = true}.'
    )
  parameters = {}
  for name, entry in entries.items():
    if not isinstance(name, str) or not name.isidentifier():
      raise SpaceError(
        f"{source}: {name!r} cannot be a parameter: parameters are keyword arguments of the "
        "program factory, so their names are Python identifiers."
      )
    parameters[name] = _parameter(name, entry, source)
  return Space(parameters, source)


def _parameter(name: str, entry: Any, source: str) -> Parameter:
  where = f"{source}: {name}"
  if isinstance(entry, list):
    return _choice(name, entry, where)
  if _is_value(entry):
    return Parameter(name, "choice", values=(entry,))
  if not isinstance(entry, Mapping):
    raise SpaceError(
      f"{where} is {entry!r}; give a value, a list of values, or a table such as "
      '{type = "float", low = 0.1, high = 1.0}.'
    )
  unknown = sorted(set(entry) - _KEYS)
  if unknown:
    raise SpaceError(
      f"{where}: unknown key {_list(unknown)}; a parameter takes type, low, high, log, step, "
      "or values."
    )
  kind = entry.get("type", "choice" if "values" in entry else None)
  if "values" in entry:
    if kind not in ("choice", "categorical", "float", "int"):
      raise SpaceError(f"{where}.type is {kind!r}; with values, leave type out.")
    extra = sorted(set(entry) - {"type", "values"})
    if extra:
      raise SpaceError(f"{where}: {_list(extra)} do not go with values; give one or the other.")
    return _choice(name, entry["values"], where)
  if kind not in ("float", "int"):
    raise SpaceError(
      f'{where}.type is {kind!r}; use type = "float" or "int" with low and high, or give '
      "values = [...]."
    )
  return _range(name, kind, entry, where)


def _choice(name: str, values: Any, where: str) -> Parameter:
  if not isinstance(values, list) or not values:
    raise SpaceError(f"{where}.values must be a non-empty list, e.g. values = [1, 2, 3].")
  for value in values:
    if not _is_value(value):
      raise SpaceError(f"{where}.values holds {value!r}; values are numbers, strings or booleans.")
  repeated = [v for v, count in _counts(values).items() if count > 1]
  if repeated:
    raise SpaceError(f"{where}.values lists {_list(map(repr, repeated))} more than once.")
  return Parameter(name, "choice", values=tuple(values))


def _range(name: str, kind: str, entry: Mapping[str, Any], where: str) -> Parameter:
  number = int if kind == "int" else (int, float)
  bounds = {}
  for key in ("low", "high"):
    if key not in entry:
      raise SpaceError(f'{where}: type = "{kind}" needs {key}.')
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
      raise SpaceError(f"{where}.{key} is {value!r}; it must be a finite {_kind_noun(kind)}.")
    bounds[key] = value
  low, high = bounds["low"], bounds["high"]
  if low > high:
    raise SpaceError(f"{where}: low ({low!r}) is above high ({high!r}); swap them.")
  log = entry.get("log", False)
  if not isinstance(log, bool):
    raise SpaceError(f"{where}.log is {log!r}; it is true or false.")
  if log and low <= 0:
    raise SpaceError(f"{where}: log = true needs low above 0 (it is {low!r}).")
  step = entry.get("step")
  if step is not None:
    if isinstance(step, bool) or not isinstance(step, number) or not step > 0:
      raise SpaceError(
        f"{where}.step is {step!r}; it must be {'an integer' if kind == 'int' else 'a number'} above 0."
      )
    if log:
      raise SpaceError(f"{where}: give log = true or a step, not both.")
  if kind == "float":
    return Parameter(
      name, kind, float(low), float(high), log, None if step is None else float(step)
    )
  return Parameter(name, kind, low, high, log, step)


def _is_value(value: Any) -> bool:
  return isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value))


def _counts(values: list[Value]) -> dict[Value, int]:
  counts: dict[Value, int] = {}
  for value in values:
    counts[value] = counts.get(value, 0) + 1
  return counts


def _kind_noun(kind: str) -> str:
  return "integer" if kind == "int" else "number"


def _list(names: Any) -> str:
  return ", ".join(str(n) for n in names)
