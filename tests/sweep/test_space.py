"""The search space: what a TOML file may hold, and what a bad one is told."""

from __future__ import annotations

import pytest

from launchpad.sweep import space as space_lib
from launchpad.sweep.space import SpaceError
from tests.sweep import programs


def parse(text: str, tmp_path) -> space_lib.Space:
  path = tmp_path / "space.toml"
  path.write_text(text)
  return space_lib.load(path)


def test_every_kind_of_parameter(tmp_path):
  space = parse(
    """
learning_rate = {type = "float", low = 1e-4, high = 1e-2, log = true}
batch_size = {type = "int", low = 32, high = 128, step = 32}
gamma = {type = "float", low = 0.9, high = 0.99, step = 0.03}
period = {values = [50, 250]}
seed = [0, 1, 2]
num_actors = 2
""",
    tmp_path,
  )
  p = space.parameters
  assert (p["learning_rate"].kind, p["learning_rate"].log) == ("float", True)
  assert p["batch_size"].grid() == [32, 64, 96, 128]
  assert p["gamma"].grid() == pytest.approx([0.9, 0.93, 0.96, 0.99])
  assert p["period"].grid() == [50, 250]
  assert p["seed"].grid() == [0, 1, 2]
  assert p["num_actors"].grid() == [2]
  assert p["learning_rate"].grid() is None
  with pytest.raises(SpaceError, match=r"learning_rate is a float range without a step.*values"):
    space.grid()
  without = space_lib.parse(
    {k: v for k, v in space.describe().items() if k != "learning_rate"}, "s"
  )
  assert without.grid_size() == 4 * 4 * 2 * 3 * 1


@pytest.mark.parametrize(
  ("text", "message"),
  [
    ("", r"space.toml defines no parameter; add one"),
    ("x = [1, 2", r"space.toml is not valid TOML"),
    ('x = {type = "float", low = 1}', r'space.toml: x: type = "float" needs high'),
    ('x = {type = "float", lo = 1, high = 2}', r"space.toml: x: unknown key lo; a parameter takes"),
    ('x = {type = "float", low = 2, high = 1}', r"x: low \(2\) is above high \(1\); swap them"),
    ('x = {type = "float", low = 0, high = 1, log = true}', r"x: log = true needs low above 0"),
    ('x = {type = "int", low = 1.5, high = 3}', r"x.low is 1.5; it must be a finite integer"),
    (
      'x = {type = "int", low = 1, high = 9, step = 0}',
      r"x.step is 0; it must be an integer above 0",
    ),
    ('x = {type = "float", low = 1, high = 9, step = 1, log = true}', r"log = true or a step"),
    ('x = {type = "bool"}', r'x.type is \'bool\'; use type = "float" or "int"'),
    ("x = {values = []}", r"x.values must be a non-empty list"),
    ("x = {values = [1, 1]}", r"x.values lists 1 more than once"),
    ("x = {values = [[1]]}", r"x.values holds \[1\]; values are numbers, strings or booleans"),
    ("x = {values = [1], low = 0}", r"x: low do not go with values"),
    ("x = {}", r"x.type is None"),
    ('"not a name" = 1', r"'not a name' cannot be a parameter"),
  ],
)
def test_a_bad_space_names_the_parameter_and_what_to_write(tmp_path, text, message):
  with pytest.raises(SpaceError, match=message):
    parse(text, tmp_path)


def test_a_missing_file_is_named(tmp_path):
  with pytest.raises(SpaceError, match=r"cannot read the space file .*nowhere.toml"):
    space_lib.load(tmp_path / "nowhere.toml")


def test_the_factory_must_take_every_parameter_and_get_what_it_needs():
  space = space_lib.parse({"x": [1.0], "y": [2], "runs_dir": "/tmp"}, "space.toml")
  with pytest.raises(SpaceError) as caught:
    space.check_factory(programs.make_program)
  message = str(caught.value)
  assert "space.toml names y, which make_program() does not take" in message
  assert "its parameters are: x, runs_dir, seed, steps, gate_x, gate, fail_x" in message
  needs = space_lib.parse({"x": [1.0]}, "space.toml")
  with pytest.raises(SpaceError, match=r"make_program\(\) needs runs_dir, which space.toml does"):
    needs.check_factory(programs.make_program)
  fine = space_lib.parse({"x": [1.0], "runs_dir": "/tmp"}, "space.toml")
  fine.check_factory(programs.make_program)
  assert fine.passes_seed(programs.make_program)
  assert not fine.passes_seed(programs.make_without_seed)
