"""absl logging from nodes reaches the terminal and the node's log, as absl
formats it, at INFO unless the launcher chose another verbosity.

The node is tests/launch/programs/absl_logs.py; it logs one line at DEBUG,
INFO and WARNING.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from absl import flags
from absl import logging as absl_logging

import launchpad as lp
from tests.launch import test_ssh
from tests.launch.programs import absl_logs
from tests.launch.test_processes import log_lines
from tests.launch.test_ssh import REPO, assert_none_left
from tests.launching import launching

TIMEOUT = 60.0
# What absl writes: level letter, date, time, thread, file:line] message.
PREFIX = r"\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ absl_logs\.py:\d+\] "
INFO = re.compile(rf"I{PREFIX}absl info from the node")
WARNING = re.compile(rf"W{PREFIX}absl warning from the node")
DEBUG = re.compile(rf"I{PREFIX}absl debug from the node")

# The SSH tests' fixtures: a real sshd, both hosts, a marker of each test.
sshd, hosts, marker = test_ssh.sshd, test_ssh.hosts, test_ssh.marker
multiprocess = launching(launch_type="local_mp", grace_period=5.0)


def matching(pattern: re.Pattern, lines: list[str], prefix: str = "") -> list[str]:
  return [line for line in lines if re.fullmatch(re.escape(prefix) + pattern.pattern, line)]


@pytest.fixture
def verbosity():
  """Puts absl's verbosity of this process back as it was."""
  flag = flags.FLAGS["verbosity"]
  value, default = flag.value, flag.using_default_value
  yield
  flag.value, flag.using_default_value = value, default


def test_multiprocess_nodes_show_absl_info_on_the_terminal_and_in_their_log(
  multiprocess, verbosity, capsys
):
  flags.FLAGS["verbosity"].using_default_value = True  # no -v: absl's default
  controller = multiprocess(absl_logs.make_program())
  assert controller.wait(TIMEOUT) is True
  terminal = capsys.readouterr().out.splitlines()
  assert len(matching(INFO, terminal, "talker[0] | ")) == 1, terminal
  assert len(matching(WARNING, terminal, "talker[0] | ")) == 1, terminal
  assert not matching(DEBUG, terminal, "talker[0] | ")
  log = log_lines(controller, "talker[0]")
  assert len(matching(INFO, log)) == 1 and len(matching(WARNING, log)) == 1, log
  assert "Logging before flag parsing" not in "\n".join(log)


def test_multiprocess_nodes_take_the_launchers_chosen_verbosity(multiprocess, verbosity, capsys):
  absl_logging.set_verbosity(absl_logging.DEBUG)
  controller = multiprocess(absl_logs.make_program())
  assert controller.wait(TIMEOUT) is True
  log = log_lines(controller, "talker[0]")
  assert len(matching(DEBUG, log)) == 1 and len(matching(INFO, log)) == 1, log


def run_script(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  return subprocess.run(
    [sys.executable, absl_logs.__file__, *args],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
  )


@pytest.mark.parametrize("args", [[], ["app"]], ids=["plain_script", "under_app_run"])
def test_thread_nodes_show_absl_info_on_stderr(args, tmp_path):
  done = run_script(*args, "local_mt")
  assert done.returncode == 0, done.stderr
  lines = done.stderr.splitlines()
  assert len(matching(INFO, lines)) == 1 and len(matching(WARNING, lines)) == 1, done.stderr
  assert not matching(DEBUG, lines)


def test_an_explicit_verbosity_of_the_launcher_reaches_node_processes(tmp_path):
  done = run_script("app", "local_mp", "--verbosity=1")
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  assert len(matching(DEBUG, lines, "talker[0] | ")) == 1, done.stdout


def test_ssh_nodes_show_absl_info(hosts, marker, capfd):
  hosts["groups"] = {"talker": "alpha"}
  controller = lp.launch(absl_logs.make_program(), launch_type="ssh", hosts=hosts)
  assert controller.wait(TIMEOUT) is True
  terminal = capfd.readouterr().out.splitlines()
  assert len(matching(INFO, terminal, "talker[0]@alpha | ")) == 1, terminal
  assert len(matching(INFO, log_lines(controller, "talker[0]"))) == 1
  assert_none_left(marker)
