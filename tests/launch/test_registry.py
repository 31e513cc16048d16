"""Launchers as plug-ins: one table of names, and a package that adds one.

The package (tests/launch/plugin/launchpad_relay) is built into a real wheel
here and installed by pip into a directory of its own, which the launching
process then has on its path: exactly how an installed package's entry
point is found.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

import launchpad as lp
from launchpad.launch import registry

PLUGIN = pathlib.Path(__file__).parent / "plugin" / "launchpad_relay"
PROGRAM = """
import launchpad as lp

class Echo:
  def echo(self, x):
    return x

def ask(echo):
  print("answer", echo.echo(41) + 1, flush=True)
  lp.stop()

def make_program():
  program = lp.Program("relayed")
  echo = program.add_node(lp.CourierNode(Echo), label="echo")
  program.add_node(lp.PyNode(ask, echo), label="ask")
  return program

if __name__ == "__main__":
  lp.launch(make_program(), launch_type="relay", banner="{banner}").wait()
"""


def _wheel(directory: pathlib.Path) -> pathlib.Path:
  """A wheel of the relay package, with its entry point."""
  dist = "launchpad_relay-0.1.dist-info"
  files = {
    "launchpad_relay/__init__.py": (PLUGIN / "__init__.py").read_bytes(),
    f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: launchpad-relay\nVersion: 0.1\n",
    f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    f"{dist}/entry_points.txt": b"[launchpad.launchers]\nrelay = launchpad_relay:LAUNCHER\n",
  }
  record = []
  for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(data)}")
  record.append(f"{dist}/RECORD,,")
  files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
  path = directory / "launchpad_relay-0.1-py3-none-any.whl"
  with zipfile.ZipFile(path, "w") as wheel:
    for name, data in files.items():
      wheel.writestr(name, data)
  return path


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> pathlib.Path:
  """A directory where pip installed the relay package."""
  directory = tmp_path_factory.mktemp("plugin")
  target = directory / "site"
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "install",
      "-q",
      "--no-index",
      "--no-deps",
      "--target",
      str(target),
      str(_wheel(directory)),
    ],
    check=True,
    timeout=120,
  )
  return target


def _run(command: list[str], plugin_path: pathlib.Path, cwd: pathlib.Path):
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]),
  }
  return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_every_launch_type_answers_to_one_table():
  names = registry.names()
  for name in (
    "threads",
    "local_mt",
    "test_mt",
    "multiprocess",
    "local_mp",
    "test_mp",
    "ssh",
    "ray",
    "slurm",
  ):
    assert name in names
  assert registry.find("local_mp").name == "multiprocess"
  assert registry.find("test_mp").testing and not registry.find("local_mp").testing
  assert "vertex_ai" not in names and "vertex_ai" in registry.names(runnable=False)


def test_an_unknown_launch_type_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"unknown launch type 'warp'; use one of: .*local_mp"):
    lp.launch(lp.Program("p"), launch_type="warp")


def test_an_option_the_launcher_does_not_take_is_refused_naming_its_options():
  with pytest.raises(TypeError, match=r"launch type 'threads' takes no option 'banner'"):
    lp.launch(lp.Program("p"), launch_type="threads", banner="x")


def test_an_installed_package_adds_a_launcher_with_options_of_its_own(plugin_path, tmp_path):
  script = tmp_path / "relayed.py"
  script.write_text(PROGRAM.replace("{banner}", "hello from the relay"))
  result = _run([sys.executable, str(script)], plugin_path, tmp_path)
  assert result.returncode == 0, result.stderr
  assert "hello from the relay: launching relayed" in result.stdout
  assert "answer 42" in result.stdout


def test_lp_launch_runs_a_plugin_launcher_by_its_name(plugin_path, tmp_path):
  script = tmp_path / "relayed.py"
  script.write_text(PROGRAM.replace("{banner}", "unused"))
  lp_command = pathlib.Path(sys.executable).parent / "lp"
  result = _run(
    [str(lp_command), "launch", "--mode=relay", f"{script}:make_program"], plugin_path, tmp_path
  )
  assert result.returncode == 0, result.stderr
  assert "relay: launching relayed" in result.stdout
  assert "answer 42" in result.stdout
