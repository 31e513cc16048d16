"""The SSH launcher's hosts file: parsing, placement and its errors."""

from __future__ import annotations

import pytest

import launchpad as lp
from launchpad.launch import hosts as hosts_lib
from launchpad.launch import plan as plan_lib


def program_with(groups: dict[str, int]) -> lp.Program:
  program = lp.Program("placed")
  for label, count in groups.items():
    with program.group(label):
      for _ in range(count):
        program.add_node(lp.PyNode(print))
  return program


def place(hosts: dict, groups: dict[str, int]) -> dict[str, list[str]]:
  plan = plan_lib.make_plan(program_with(groups), serialize=True)
  placed = hosts_lib.load(hosts).place(plan.workers)
  return {host: [node.name for node in nodes] for host, nodes in placed.items()}


def test_a_file_with_every_option(tmp_path):
  path = tmp_path / "hosts.toml"
  path.write_text(
    """
coordinator = "10.0.0.1"
[hosts.gpu]
ssh = "alice@gpu.example.com"
python = "/opt/venv/bin/python -X dev"
workdir = "/scratch/agent"
env = { CUDA_VISIBLE_DEVICES = "0" }
ssh_options = ["-p", "2222"]
address = "10.0.0.2"
[hosts]
cpu = "cpu.example.com"
[groups]
learner = "gpu"
"*" = ["cpu", "gpu"]
"""
  )
  hosts = hosts_lib.load(path)
  assert hosts.coordinator == "10.0.0.1"
  gpu = hosts.hosts["gpu"]
  assert gpu.python_command() == ["/opt/venv/bin/python", "-X", "dev"]
  assert gpu.env == {"CUDA_VISIBLE_DEVICES": "0"} and gpu.ssh_options == ("-p", "2222")
  assert gpu.address == "10.0.0.2" and gpu.workdir == "/scratch/agent"
  assert hosts.hosts["cpu"] == hosts_lib.Host(name="cpu", ssh="cpu.example.com")
  assert hosts.groups == {"learner": ("gpu",), "*": ("cpu", "gpu")}


def test_groups_take_turns_over_their_hosts():
  hosts = {"hosts": {"a": "a", "b": "b"}, "groups": {"learner": "b", "*": ["a", "b"]}}
  placed = place(hosts, {"learner": 1, "actor": 3})
  assert placed == {"b": ["learner[0]", "actor[1]"], "a": ["actor[0]", "actor[2]"]}


def test_without_groups_every_group_spreads_over_every_host():
  assert place({"hosts": {"a": "a", "b": "b"}}, {"actor": 2}) == {
    "a": ["actor[0]"],
    "b": ["actor[1]"],
  }


@pytest.mark.parametrize(
  ("contents", "message"),
  [
    ({"groups": {"*": "a"}}, "no \\[hosts\\] are defined"),
    ({"hosts": {"a": {"python": "python3"}}}, "host 'a' needs ssh"),
    ({"hosts": {"a": {"ssh": "a", "pyhton": "x"}}}, "unknown keys \\['pyhton'\\]"),
    ({"hosts": {"a": "a"}, "groups": {"actor": "b"}}, "group 'actor' names hosts \\['b'\\]"),
    ({"hosts": {"a": {"ssh": "a", "env": {"N": 1}}}}, "env must map names to strings"),
    ({"hosts": {"a": "a"}, "host": {}}, "unknown top-level keys \\['host'\\]"),
  ],
)
def test_bad_contents_are_named(contents, message):
  with pytest.raises(lp.ProgramError, match=message):
    hosts_lib.load(contents)


def test_a_group_without_a_host_names_the_node():
  hosts = {"hosts": {"a": "a"}, "groups": {"learner": "a"}}
  with pytest.raises(lp.ProgramError, match=r"group 'actor' \(node actor\[0\]\)"):
    place(hosts, {"learner": 1, "actor": 1})


def test_a_missing_or_broken_file_is_named(tmp_path):
  with pytest.raises(lp.ProgramError, match="does not exist"):
    hosts_lib.load(tmp_path / "nope.toml")
  broken = tmp_path / "broken.toml"
  broken.write_text("[hosts\n")
  with pytest.raises(lp.ProgramError, match=r"broken\.toml is not valid TOML"):
    hosts_lib.load(broken)


def test_the_ssh_launch_type_needs_hosts():
  with pytest.raises(lp.ProgramError, match="needs hosts"):
    lp.launch(program_with({"actor": 1}), launch_type="ssh")


def test_shipped_files_are_named_relative_to_the_hosts_file(tmp_path):
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "tool").write_text("#!/bin/sh\n")
  path = tmp_path / "hosts.toml"
  path.write_text('ship = ["bin", "missing.cfg"]\n[hosts]\na = "a"\n')
  with pytest.raises(lp.ProgramError, match=r"missing\.cfg"):
    hosts_lib.load(path)
  path.write_text('ship = ["bin"]\n[hosts]\na = "a"\n')
  assert hosts_lib.load(path).ship == (tmp_path / "bin",)
