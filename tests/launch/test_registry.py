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


def _lp(plugin_path: pathlib.Path, cwd: pathlib.Path, *args: str):
  """`lp ARGS` where the relay package is installed."""
  lp_command = pathlib.Path(sys.executable).parent / "lp"
  return _run([str(lp_command), *args], plugin_path, cwd)


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


def relayed_script(tmp_path) -> pathlib.Path:
  """The test program, for a launch whose banner comes from elsewhere."""
  script = tmp_path / "relayed.py"
  script.write_text(PROGRAM.replace("{banner}", "unused"))
  return script


def test_lp_launch_runs_a_plugin_launcher_by_its_name(plugin_path, tmp_path):
  script = relayed_script(tmp_path)
  result = _lp(plugin_path, tmp_path, "launch", "--mode=relay", f"{script}:make_program")
  assert result.returncode == 0, result.stderr
  assert "relay: launching relayed" in result.stdout
  assert "answer 42" in result.stdout


def test_lp_launch_gives_a_plugin_launcher_its_own_option(plugin_path, tmp_path):
  script = relayed_script(tmp_path)
  result = _lp(
    plugin_path,
    tmp_path,
    "launch",
    "--mode=relay",
    "--banner=from the command line",
    f"{script}:make_program",
  )
  assert result.returncode == 0, result.stderr
  assert "from the command line: launching relayed" in result.stdout
  assert "answer 42" in result.stdout


def test_a_mistyped_option_is_refused_naming_the_mode_and_the_option(plugin_path, tmp_path):
  script = relayed_script(tmp_path)
  result = _lp(
    plugin_path, tmp_path, "launch", "--mode=relay", "--baner=hi", f"{script}:make_program"
  )
  assert result.returncode == 2
  assert result.stderr == (
    "lp launch: --mode=relay has no option --baner (did you mean --banner?); its own options "
    "are --banner; `lp launch --help` lists every option.\n"
  )
  assert "launching" not in result.stdout


def test_lp_launch_help_lists_each_launchers_options_under_it(plugin_path, tmp_path):
  result = _lp(plugin_path, tmp_path, "launch", "--help")
  assert result.returncode == 0, result.stderr
  sections = {}
  for section in result.stdout.split("\n\n"):
    title, _, body = section.partition("\n")
    sections[title] = body
  relay = sections["--mode=relay (from launchpad-relay):"]
  assert "--banner BANNER" in relay and "the start of the line the launch prints" in relay
  assert "--hosts HOSTS.toml" in sections["--mode=ssh (nodes on the hosts of a hosts file):"]
  assert "--ray-address RAY_ADDRESS" in sections["--mode=ray (every node a Ray actor):"]
  slurm = sections["--mode=slurm (every node a Slurm task):"]
  for name in ("--detach", "--no-shared-filesystem", "--preempt-signal SIG@SECONDS", "--requeue"):
    assert name in slurm
  assert "--grace-period" in sections["options:"] and "--banner" not in sections["options:"]


def test_a_launcher_declares_its_flags_in_its_options_fields():
  flags = {flag.name: flag for flag in registry.find("slurm").flags()}
  assert sorted(flags) == ["--detach", "--no-shared-filesystem", "--preempt-signal", "--requeue"]
  assert flags["--detach"].switch is True and flags["--detach"].option == "detach"
  assert flags["--no-shared-filesystem"].switch is False
  assert flags["--no-shared-filesystem"].option == "shared_filesystem"
  assert flags["--preempt-signal"].switch is None
  assert flags["--preempt-signal"].metavar == "SIG@SECONDS"
  assert not flags["--detach"].in_sweeps and flags["--preempt-signal"].in_sweeps
  assert registry.find("threads").flags() == []
