"""A real OpenSSH server on loopback addresses: two "hosts" on one machine.

Every address of 127.0.0.0/8 is local on Linux, so one sshd listening on
127.0.0.2 and 127.0.0.3 gives two hosts that nodes bind and advertise
separately. The server, its keys and the client configuration live in a
directory of their own; nothing outside it is read or changed, except the
privilege-separation directory sshd needs when run as root.
"""

from __future__ import annotations

import getpass
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading

import pytest

HOSTS = {"alpha": "127.0.0.2", "beta": "127.0.0.3"}
# Set by CI: a missing sshd fails the tests instead of skipping them.
REQUIRED = "LAUNCHPAD_TEST_REQUIRE_SSHD"


def find_sshd() -> str:
  """sshd's path; skips the test (fails it under CI) when it is not installed."""
  path = shutil.which("sshd") or next(
    (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None
  )
  if path is None:
    message = "OpenSSH's sshd is not installed (apt-get install openssh-server)"
    if os.environ.get(REQUIRED):
      pytest.fail(message)
    pytest.skip(message)
  return path


class LoopbackSshd:
  """sshd on the HOSTS addresses, with a client configuration naming each host."""

  def __init__(self, directory: pathlib.Path):
    self.directory = directory
    self.port = 0
    self.ssh_config = directory / "ssh_config"
    self._process: subprocess.Popen | None = None
    self._listening = threading.Semaphore(0)
    self.log: list[str] = []

  def start(self, timeout: float = 30.0) -> None:
    sshd = find_sshd()
    self._make_keys()
    self.port = _free_port(HOSTS["alpha"])
    config = self.directory / "sshd_config"
    config.write_text(self._server_config())
    self.ssh_config.write_text(self._client_config())
    if os.geteuid() == 0:
      os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    self._process = subprocess.Popen(
      [sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True
    )
    threading.Thread(target=self._read_log, daemon=True).start()
    for _ in HOSTS:
      if not self._listening.acquire(timeout=timeout):
        self.stop()
        pytest.fail(f"sshd did not start listening within {timeout} s: {self.log}")

  def stop(self) -> None:
    if self._process is not None and self._process.poll() is None:
      self._process.terminate()
      self._process.wait(10)

  def hosts(self, **per_host) -> dict:
    """Hosts-file contents for lp.launch(hosts=...): both hosts, with this
    interpreter and the client configuration; `per_host` adds keys to each."""
    return {
      "hosts": {
        name: {
          "ssh": name,
          "python": sys.executable,
          "ssh_options": ["-F", str(self.ssh_config)],
          **per_host,
        }
        for name in HOSTS
      }
    }

  def _make_keys(self) -> None:
    for key in ("host_key", "client_key"):
      subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.directory / key)],
        check=True,
      )
    authorized = self.directory / "authorized_keys"
    authorized.write_text((self.directory / "client_key.pub").read_text())
    authorized.chmod(0o600)

  def _server_config(self) -> str:
    listen = "\n".join(f"ListenAddress {address}:{self.port}" for address in HOSTS.values())
    return f"""{listen}
HostKey {self.directory / "host_key"}
PidFile {self.directory / "sshd.pid"}
AuthorizedKeysFile {self.directory / "authorized_keys"}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
LogLevel INFO
"""

  def _client_config(self) -> str:
    entries = []
    for name, address in HOSTS.items():
      entries.append(f"""Host {name}
  HostName {address}
  Port {self.port}
  User {getpass.getuser()}
  IdentityFile {self.directory / "client_key"}
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
""")
    return "\n".join(entries)

  def _read_log(self) -> None:
    for line in self._process.stderr:
      self.log.append(line.rstrip())
      if line.startswith("Server listening on"):
        self._listening.release()


def _free_port(address: str) -> int:
  with socket.socket() as probe:
    probe.bind((address, 0))
    return probe.getsockname()[1]
