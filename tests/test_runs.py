"""Tests of run directories (runs.py) and owner-only files (private_files.py),
on real files, directories and sockets.

Tests run as root here, so "another user" is uid 65534 (nobody): files and
directories are handed to it with os.chown. Each test runs with umask 0, so
the modes seen are the ones the code asks for, not the ones a umask leaves.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from launchpad import private_files, runs
from launchpad.control import auth
from launchpad.tls import TlsConfig

OTHER_UID = 65534
SECRET = b"s" * 32
# Generous bound on a query that must give up by itself.
TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def open_umask():
  """umask 0 for the test: nothing masks a mode the code gets wrong."""
  old = os.umask(0)
  yield
  os.umask(old)


@pytest.fixture
def lp_home(tmp_path, monkeypatch):
  home = tmp_path / "lphome"
  monkeypatch.setenv("LAUNCHPAD_HOME", str(home))
  return home


def mode(path: pathlib.Path) -> int:
  return stat.S_IMODE(path.lstat().st_mode)


def needs_root() -> None:
  if os.geteuid() != 0:
    pytest.skip("handing a file to another user needs root")


def other_users_directory(path: pathlib.Path, permissions: int = 0o755) -> pathlib.Path:
  path.mkdir(mode=permissions)
  os.chmod(path, permissions)
  os.chown(path, OTHER_UID, OTHER_UID)
  return path


# Modes of what a launch creates.


def test_run_directories_and_their_files_are_readable_by_the_owner_only(lp_home):
  run = runs.create("prog")
  assert run.path.parent == lp_home / "runs"
  assert mode(run.path) == 0o700
  assert mode(lp_home / "runs") == 0o700
  run.write("127.0.0.1:1", SECRET, TlsConfig.generate())
  names = {"token", "run.json", "tls-cert.pem", "tls-key.pem", "tls-ca.pem"}
  assert {p.name for p in run.path.iterdir()} == names  # no temporary file is left
  for name in names:
    assert mode(run.path / name) == 0o600, name
  assert run.token() == auth.control_token(SECRET)
  run.finish()
  assert mode(run.path / "run.json") == 0o600
  assert "ended" in run.info()


def test_a_new_log_dir_is_made_private(tmp_path):
  run = runs.create("prog", tmp_path / "a" / "logs")
  assert run.path == tmp_path / "a" / "logs"
  assert mode(run.path) == 0o700


def test_log_files_are_created_private_and_an_old_log_is_made_private(tmp_path):
  new = tmp_path / "new.log"
  with private_files.open_append(new) as log:
    log.write(b"one\n")
  assert mode(new) == 0o600
  old = tmp_path / "old.log"
  old.write_text("before\n")
  os.chmod(old, 0o644)
  with private_files.open_append(old) as log:
    log.write(b"after\n")
  assert mode(old) == 0o600
  assert old.read_text() == "before\nafter\n"


# Files someone else planted.


@pytest.mark.parametrize("name", ["token", "run.json", "tls-key.pem"])
def test_a_planted_world_writable_file_is_replaced_not_written_into(tmp_path, name):
  needs_root()
  run = runs.create("prog", tmp_path / "run")
  planted = run.path / name
  planted.write_text("planted")
  os.chmod(planted, 0o666)
  os.chown(planted, OTHER_UID, OTHER_UID)
  # The planter's own name for the file: it sees what is written into it.
  theirs = tmp_path / "planters-link"
  os.link(planted, theirs)
  run.write("127.0.0.1:1", SECRET, TlsConfig.generate())
  assert theirs.read_text() == "planted"
  assert not os.path.samefile(planted, theirs)
  assert planted.stat().st_uid == os.geteuid()
  assert mode(planted) == 0o600
  assert run.token() == auth.control_token(SECRET)


@pytest.mark.parametrize("name", ["token", "run.json", "tls-key.pem"])
def test_a_planted_symlink_is_replaced_not_followed(tmp_path, name):
  run = runs.create("prog", tmp_path / "run")
  victim = tmp_path / "victim.txt"
  victim.write_text("precious")
  (run.path / name).symlink_to(victim)
  run.write("127.0.0.1:1", SECRET, TlsConfig.generate())
  assert victim.read_text() == "precious"
  assert not (run.path / name).is_symlink()
  assert mode(run.path / name) == 0o600


def test_a_log_file_that_is_a_symlink_or_another_users_is_refused(tmp_path):
  victim = tmp_path / "victim.txt"
  victim.write_text("precious")
  link = tmp_path / "node[0].log"
  link.symlink_to(victim)
  with pytest.raises(private_files.PrivateFileError) as raised:
    private_files.open_append(link)
  assert str(raised.value) == (
    f"cannot open {link} (it is a symbolic link); remove it or choose another directory."
  )
  assert victim.read_text() == "precious"
  needs_root()
  planted = tmp_path / "other[0].log"
  planted.write_text("")
  os.chown(planted, OTHER_UID, OTHER_UID)
  with pytest.raises(private_files.PrivateFileError, match="is not a file of yours"):
    private_files.open_append(planted)
  assert planted.read_text() == ""


# Directories that are not private.


def test_a_log_dir_of_another_user_is_refused(tmp_path):
  needs_root()
  directory = other_users_directory(tmp_path / "theirs")
  with pytest.raises(private_files.PrivateFileError) as raised:
    runs.create("prog", directory)
  message = str(raised.value)
  assert message.startswith(f"the directory {directory} belongs to user nobody (uid 65534)")
  assert message.endswith("choose a directory of your own.")
  assert list(directory.iterdir()) == []


@pytest.mark.parametrize("permissions", [0o777, 0o770, 0o1777], ids=["others", "group", "sticky"])
def test_a_log_dir_others_can_write_is_refused(tmp_path, permissions):
  directory = tmp_path / "shared"
  directory.mkdir()
  os.chmod(directory, permissions)
  with pytest.raises(private_files.PrivateFileError) as raised:
    runs.create("prog", directory)
  assert str(raised.value) == (
    f"the directory {directory} can be written by other users (mode {permissions:o}): they "
    f"could replace the program's token; make it private (chmod 700 {directory}) or choose "
    "another directory."
  )


def test_a_log_dir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / "file"
  path.write_text("")
  with pytest.raises(private_files.PrivateFileError, match=f"^{path} is not a directory"):
    runs.create("prog", path)


def test_a_runs_home_others_can_write_is_refused(lp_home):
  (lp_home / "runs").mkdir(parents=True)
  os.chmod(lp_home / "runs", 0o777)
  with pytest.raises(private_files.PrivateFileError, match="can be written by other users"):
    runs.create("prog")


# Which runs `lp` lists, and what it says of runs it cannot query.


def fake_run(home: pathlib.Path, name: str, info: dict | str | None, token: bool = True):
  path = home / "runs" / name
  path.mkdir(parents=True, mode=0o700)
  os.chmod(home / "runs", 0o700)
  if info is not None:
    (path / "run.json").write_text(info if isinstance(info, str) else json.dumps(info))
  if token:
    (path / "token").write_text("token")
  return runs.Run(path)


def ended_pid() -> int:
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait(timeout=TIMEOUT)
  return process.pid


def test_runs_known_to_be_over_are_not_listed_and_unreadable_ones_are(lp_home):
  alive = {"coordinator": "127.0.0.1:1", "launcher_pid": os.getpid()}
  fake_run(lp_home, "a-live", alive)
  fake_run(lp_home, "b-ended", {**alive, "ended": time.time()})
  fake_run(lp_home, "c-launcher-gone", {**alive, "launcher_pid": ended_pid()})
  fake_run(lp_home, "d-no-run-json", None)
  fake_run(lp_home, "e-bad-json", "{not json")
  fake_run(lp_home, "f-no-pid", {"coordinator": "127.0.0.1:1"})
  assert [run.name for run in runs.current()] == ["a-live", "e-bad-json", "f-no-pid"]


def query_error(run: runs.Run, timeout: float = runs.QUERY_SECONDS) -> runs.RunError:
  with pytest.raises(runs.RunError) as raised:
    run.status(timeout)
  return raised.value


def test_a_run_that_cannot_be_queried_says_why(lp_home):
  closed = socket.socket()
  closed.bind(("127.0.0.1", 0))
  address = f"127.0.0.1:{closed.getsockname()[1]}"
  closed.close()
  alive = {"coordinator": address, "launcher_pid": os.getpid()}

  error = query_error(fake_run(lp_home, "gone", alive))
  assert error.state == runs.UNREACHABLE
  assert str(error).startswith(
    f"gone: nothing answers at the coordinator's address {address} ([Errno 111] Connection "
    "refused): the program has ended or its launcher died"
  )

  run = fake_run(lp_home, "tokenless", alive, token=False)
  error = query_error(run)
  assert error.state == runs.NO_TOKEN
  assert str(error) == (
    f"tokenless: {run.path / 'token'} is missing, so `lp` cannot reach the program: it is "
    f"ending, or the file was removed; stop the launcher (pid {os.getpid()}) with a signal."
  )

  run = fake_run(lp_home, "garbled", "{not json")
  error = query_error(run)
  assert error.state == runs.BROKEN
  assert str(error).startswith(f"garbled: {run.path / 'run.json'} cannot be read (")
  assert str(error).endswith(f"if the program has ended, remove {run.path}.")

  run = fake_run(lp_home, "open", alive)
  os.chmod(run.path, 0o777)
  error = query_error(run)
  assert error.state == runs.UNSAFE
  assert f"the directory {run.path} can be written by other users" in str(error)


def test_a_coordinator_that_never_answers_is_given_up_on_after_the_timeout(lp_home):
  with socket.socket() as black_hole:  # listens, never accepts: connections hang
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(1)
    address = f"127.0.0.1:{black_hole.getsockname()[1]}"
    run = fake_run(lp_home, "stuck", {"coordinator": address, "launcher_pid": os.getpid()})
    start = time.monotonic()
    error = query_error(run, timeout=0.5)
    assert time.monotonic() - start < TIMEOUT
  assert error.state == runs.NOT_ANSWERING
  assert str(error).startswith(f"stuck: the coordinator at {address} did not answer within 0.5 s")


@pytest.fixture
def stand_in_launcher():
  """A live process of this host that listens nowhere: the launcher of a run
  whose coordinator's address is not its own."""
  process = subprocess.Popen(
    [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
  )
  yield process.pid
  process.kill()
  process.wait(TIMEOUT)


def test_a_silent_address_is_given_up_on_at_the_first_bound(lp_home, stand_in_launcher):
  with socket.socket() as black_hole:  # listens, never accepts: connections hang
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(1)
    address = f"127.0.0.1:{black_hole.getsockname()[1]}"
    info = {"coordinator": address, "launcher_pid": stand_in_launcher}
    run = fake_run(lp_home, "hole", info)
    assert not run.looks_alive(info, connected=True)
    start = time.monotonic()
    error = query_error(run, timeout=TIMEOUT)
    elapsed = time.monotonic() - start
  assert error.state == runs.NOT_ANSWERING
  first = runs.FIRST_QUERY_SECONDS
  assert str(error).startswith(
    f"hole: the coordinator at {address} did not answer within {first:g} s"
  )
  assert first <= elapsed < TIMEOUT


def test_a_silent_coordinator_of_a_live_launcher_gets_the_whole_timeout(lp_home):
  # The launcher (this process) listens at the address: it may only be slow.
  timeout = runs.FIRST_QUERY_SECONDS + 1.5
  with socket.socket() as black_hole:
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(1)
    address = f"127.0.0.1:{black_hole.getsockname()[1]}"
    info = {"coordinator": address, "launcher_pid": os.getpid()}
    run = fake_run(lp_home, "stuck", info)
    assert run.looks_alive(info, connected=True)
    start = time.monotonic()
    error = query_error(run, timeout=timeout)
    elapsed = time.monotonic() - start
  assert error.state == runs.NOT_ANSWERING
  assert str(error).startswith(
    f"stuck: the coordinator at {address} did not answer within {timeout:g} s"
  )
  assert timeout <= elapsed < TIMEOUT


def test_a_run_of_another_host_looks_alive_once_its_address_accepted_a_connection():
  info = {"coordinator": "127.0.0.1:1", "launcher_pid": 1, "launcher_host": "elsewhere"}
  run = runs.Run(pathlib.Path("unused"))
  assert run.looks_alive(info, connected=True)
  assert not run.looks_alive(info, connected=False)


COORDINATOR = """
import sys
from launchpad import runs
from launchpad.control.coordinator import Coordinator

secret = bytes.fromhex(sys.argv[1])
coordinator = Coordinator("slowpoke", ["node[0]"], secret)
run = runs.create("slowpoke")
run.write(coordinator.start(), secret)
print(run.path, flush=True)
sys.stdin.read()
"""


def test_a_live_coordinator_that_answers_past_the_first_bound_is_shown(lp_home):
  launcher = subprocess.Popen(
    [sys.executable, "-c", COORDINATOR, SECRET.hex()],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
    env={**os.environ, "LAUNCHPAD_HOME": str(lp_home)},
  )
  try:
    run = runs.Run(pathlib.Path(launcher.stdout.readline().strip()))
    assert run.status(TIMEOUT).program == "slowpoke"
    # A launcher that cannot answer for longer than the first bound (a
    # loaded machine; here, a stopped process) is still waited for.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      os.kill(launcher.pid, signal.SIGSTOP)
      start = time.monotonic()
      try:
        answer = pool.submit(run.status, TIMEOUT)
        time.sleep(runs.FIRST_QUERY_SECONDS + 0.5)  # past the first bound, whatever the load
        assert not answer.done()
      finally:
        os.kill(launcher.pid, signal.SIGCONT)
      assert answer.result(TIMEOUT).program == "slowpoke"
    assert time.monotonic() - start > runs.FIRST_QUERY_SECONDS
  finally:
    launcher.kill()
    launcher.wait(TIMEOUT)
