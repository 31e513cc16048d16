"""What a process on the control plane's network can and cannot do to a program.

Real coordinators over real gRPC, real launched programs and, for the flood,
a separate attacking process. The attacker of the forged-report test holds
the control token (the worst case: it read the run directory); the others do
not, or only saw calls go by.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import pickle
import re
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest

import launchpad as lp
from launchpad import errors, runs
from launchpad.control import auth, control_pb2, failures
from launchpad.control.client import ControlClient
from launchpad.control.coordinator import SERVICE, Coordinator
from tests.child_process import Child

from . import programs

TIMEOUT = 30.0
ROOT = pathlib.Path(__file__).resolve().parents[2]
FLOOD = pathlib.Path(__file__).resolve().parent / "flood.py"
Event = control_pb2.NodeEvent


@pytest.fixture(autouse=True)
def launchpad_home(tmp_path, monkeypatch):
  """Run directories go to a temporary home, never the real one."""
  monkeypatch.setenv("LAUNCHPAD_HOME", str(tmp_path / "lphome"))


@pytest.fixture
def coordinator():
  secret = os.urandom(32)
  instance = Coordinator("prog", ["learner[0]", "actor[0]"], secret)
  instance.start()
  instance.secret = secret
  yield instance
  instance.close()


@pytest.fixture
def launched():
  controllers = []

  def _launch(program):
    controllers.append(lp.launch(program, launch_type="local_mp", terminal="output_to_files"))
    return controllers[-1]

  yield _launch
  for controller in controllers:
    controller.stop(timeout=TIMEOUT)


class Raw:
  """A gRPC channel to a coordinator that sends bytes as they are given."""

  def __init__(self, address: str):
    self.channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])

  def call(self, method: str, body: bytes, metadata=(), timeout: float = TIMEOUT) -> bytes:
    rpc = self.channel.unary_unary(
      f"/{SERVICE}/{method}", request_serializer=bytes, response_deserializer=bytes
    )
    return rpc(body, timeout=timeout, metadata=metadata)

  def refusal(self, method: str, body: bytes, metadata=(), timeout: float = TIMEOUT) -> str:
    """The details of the coordinator's refusal of this call (fails if it was served)."""
    with pytest.raises(grpc.RpcError) as info:
      self.call(method, body, metadata, timeout)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value
    return info.value.details()

  def close(self):
    self.channel.close()


def proof(token: str, method: str, body: bytes):
  return auth.Prover(token).metadata(f"/{SERVICE}/{method}", body)


def stop_state(address: str, token: str) -> control_pb2.StopState:
  client = ControlClient(address, token=token)
  try:
    return client.wait_stop(timeout=0.0)
  finally:
    client.close()


# Failure reports carry data, never code.


class MakesAFile:
  """Unpickling this creates `path`: what a launcher that unpickled reports would run."""

  def __init__(self, path: pathlib.Path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, "w"))


def with_field_7(body: bytes, payload: bytes) -> bytes:
  """`body` with bytes field 7 (where reports once carried a pickled exception)."""
  length, size = bytearray(), len(payload)
  while size >= 0x80:
    length.append(size & 0x7F | 0x80)
    size >>= 7
  length.append(size)
  return body + bytes([7 << 3 | 2]) + bytes(length) + payload


def test_a_forged_failure_report_runs_nothing_in_the_launcher(launched, tmp_path, monkeypatch):
  made = tmp_path / "made-by-unpickling"
  imported = tmp_path / "made-by-importing"
  # A module the launcher could import, and whose import would create a file.
  (tmp_path / "lp_forged_trap.py").write_text(f"open({str(imported)!r}, 'w').close()\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  payload = pickle.dumps(MakesAFile(made))
  text_payload = pickle.dumps(MakesAFile(made), protocol=0).decode("ascii")
  controller = launched(programs.idle_program())
  run = runs.Run(controller.run_dir)
  forged = Event(
    node="idle[0]",
    kind=Event.FAILED,
    description="Trap: forged",
    traceback=text_payload,
    exception=control_pb2.ExceptionInfo(
      module="lp_forged_trap",
      qualname="Trap",
      message=text_payload,
      args=[text_payload],
      notes=[text_payload],
    ),
  )
  body = with_field_7(forged.SerializeToString(), payload)
  raw = Raw(run.info()["coordinator"])
  try:
    raw.call("Report", body, proof(run.token(), "Report", body))
  finally:
    raw.close()
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  error = info.value
  assert not made.exists() and not imported.exists()
  assert "lp_forged_trap" not in sys.modules
  # The failure is reported as the data it came as.
  assert error.node == "idle[0]"
  assert error.description == "Trap: forged"
  assert error.remote_traceback == text_payload
  cause = error.__cause__
  assert isinstance(cause, errors.RemoteError)
  assert cause.type_name == "lp_forged_trap.Trap"
  assert text_payload in str(cause)
  assert cause.__notes__ == [text_payload]
  # The payloads were live: unpickling or importing them does create the files.
  pickle.loads(payload)
  importlib.import_module("lp_forged_trap")
  sys.modules.pop("lp_forged_trap")
  assert made.exists() and imported.exists()


def test_a_received_name_is_rebuilt_only_as_an_exception_class_already_imported(tmp_path):
  def info(module, qualname, *args):
    return control_pb2.ExceptionInfo(
      module=module, qualname=qualname, message=args[0] if args else "", args=args
    )

  marker = tmp_path / "made"
  for module, qualname in [
    ("os", "system"),  # imported, but not an exception class
    ("builtins", "open"),
    ("builtins", "__import__"),
    ("lp_never_imported_anywhere", "Error"),
    ("launchpad.errors", "RemoteError"),  # a launchpad error that wants four arguments
    ("builtins", "<locals>.ValueError"),
  ]:
    rebuilt = failures.rebuild(info(module, qualname, f"touch {marker}"), "n[0]", "tb")
    assert type(rebuilt) is errors.RemoteError, (module, qualname)
    assert qualname in rebuilt.type_name and "raised in node n[0]" in str(rebuilt)
    assert rebuilt.remote_traceback == "tb"
  assert not marker.exists()
  assert "lp_never_imported_anywhere" not in sys.modules
  key_error = failures.rebuild(failures.describe(KeyError(3)), "n[0]", "")
  assert type(key_error) is KeyError and key_error.args == ("3",)
  oserror = failures.rebuild(failures.describe(FileNotFoundError(2, "gone")), "n[0]", "")
  assert type(oserror) is FileNotFoundError and "gone" in str(oserror)
  program_error = failures.rebuild(info("launchpad.errors", "ProgramError", "bad graph"), "n", "")
  assert type(program_error) is errors.ProgramError and str(program_error) == "bad graph"


@pytest.mark.parametrize(
  ("function", "kind", "message"),
  [
    (programs.raise_value_error, ValueError, "bad value 99"),
    (
      programs.raise_launchpad_error,
      errors.CallTimeoutError,
      "the replay table took too long (from the node)",
    ),
    (programs.raise_node_error, programs.NodeError, "a NodeError 7"),
  ],
)
def test_a_node_failure_comes_back_as_its_own_type(launched, function, kind, message):
  controller = launched(programs.failing_program(function))
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  error = info.value
  assert error.node == "failer[0]"
  assert type(error.__cause__) is kind
  assert str(error.__cause__) == message
  assert "Traceback (most recent call last)" in error.remote_traceback
  assert f"in {function.__name__}" in error.remote_traceback
  assert message in str(error)
  if function is programs.raise_value_error:
    assert error.__cause__.__notes__ == ["a note from the node"]
    assert "a note from the node" in error.remote_traceback


def test_a_type_the_launcher_never_imported_comes_back_named(launched):
  controller = launched(
    programs.failing_program(programs.raise_error_of_a_module_only_the_node_has)
  )
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  cause = info.value.__cause__
  assert isinstance(cause, errors.RemoteError)
  assert cause.type_name == "lp_node_only_module.NodeOnlyError"
  assert "only the node knows this type" in str(cause)
  assert "failer[0]" in str(cause)
  assert "raise_error_of_a_module_only_the_node_has" in cause.remote_traceback
  assert "lp_node_only_module" not in sys.modules


def test_an_exception_whose_str_raises_is_reported_all_the_same(launched):
  controller = launched(programs.failing_program(programs.raise_unprintable))
  with pytest.raises(lp.NodeFailedError) as info:
    controller.wait(TIMEOUT)
  error = info.value
  assert error.description == "Unprintable: <str() of the exception raised RuntimeError>"
  assert type(error.__cause__) is programs.Unprintable
  assert "in raise_unprintable" in error.remote_traceback


# Proofs: a call seen on the network can be neither replayed nor altered.


class RecordingProxy:
  """A man in the middle: forwards calls to `upstream` as they are and keeps
  each one's method, metadata and body."""

  def __init__(self, upstream: str):
    self.calls: list[tuple[str, tuple, bytes]] = []
    self._upstream = grpc.insecure_channel(upstream, options=[("grpc.enable_http_proxy", 0)])
    self._server = grpc.server(futures.ThreadPoolExecutor(4))
    self._server.add_generic_rpc_handlers((self,))
    self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
    self._server.start()

  def service(self, details):
    method = details.method

    def forward(body, context):
      metadata = tuple((k, v) for k, v in context.invocation_metadata() if k.startswith("x-"))
      self.calls.append((method, metadata, body))
      rpc = self._upstream.unary_unary(
        method, request_serializer=bytes, response_deserializer=bytes
      )
      return rpc(body, timeout=TIMEOUT, metadata=metadata)

    return grpc.unary_unary_rpc_method_handler(
      forward, request_deserializer=bytes, response_serializer=bytes
    )

  def close(self):
    self._server.stop(None)
    self._upstream.close()


def test_a_recorded_call_is_refused_when_replayed(coordinator):
  proxy = RecordingProxy(coordinator.address)
  client = ControlClient(proxy.address, coordinator.secret)
  raw = Raw(coordinator.address)
  try:
    assert client.status().program == "prog"  # served through the proxy
    client.register("actor[0]", ["127.0.0.1:9"])
    (status_call, register_call) = proxy.calls
    for method, metadata, body in (status_call, register_call):
      assert auth.METADATA_KEY in dict(metadata)
      assert coordinator.secret.hex() not in str(metadata)
      assert auth.control_token(coordinator.secret) not in str(metadata)
      details = raw.refusal(method.rsplit("/", 1)[1], body, metadata)
      assert "used before" in details and "replayed" in details
    # A recorded proof does not serve another method, nor another body.
    _, metadata, body = status_call
    stop = control_pb2.StopRequest(reason="replayed").SerializeToString()
    assert "proof was not made" in raw.refusal("Stop", stop, metadata)
    _, metadata, body = register_call
    hijack = control_pb2.RegisterRequest(
      endpoint=control_pb2.Endpoint(node="actor[0]", addresses=["10.0.0.66:1"])
    ).SerializeToString()
    fresh = proof(auth.control_token(coordinator.secret), "Register", body)
    assert "body is not the one" in raw.refusal("Register", hijack, fresh)
    status = coordinator.status()
    assert not status.stopping
    assert {n.node: list(n.addresses) for n in status.nodes}["actor[0]"] == ["127.0.0.1:9"]
  finally:
    raw.close()
    client.close()
    proxy.close()


def test_a_call_without_a_valid_proof_is_refused_before_any_handler_work(coordinator):
  raw = Raw(coordinator.address)
  token = auth.control_token(coordinator.secret)
  # Not a protobuf at all: refused, not parsed (a parse failure would be INTERNAL).
  garbage = b"\xff\xff\xff\xff"
  wait = control_pb2.WaitStopRequest(timeout=TIMEOUT).SerializeToString()
  stop = control_pb2.StopRequest(reason="intruder").SerializeToString()
  wrong = auth.control_token(os.urandom(32))
  try:
    for method, body in [("WaitStop", garbage), ("WaitStop", wait), ("Stop", stop)]:
      assert "no proof" in raw.refusal(method, body)
      assert "not made with this program's control token" in raw.refusal(
        method, body, proof(wrong, method, body)
      )
      assert "malformed" in raw.refusal(method, body, ((auth.METADATA_KEY, "1 2 3"),))
      assert "malformed" in raw.refusal(method, body, ((auth.METADATA_KEY, "nan a b c"),))
    # A call whose body never comes is refused all the same: nothing waits for it.
    sent = threading.Event()

    def never_sends():
      release.wait(TIMEOUT)
      sent.set()
      yield wait

    release = threading.Event()
    rpc = raw.channel.stream_unary(
      f"/{SERVICE}/WaitStop", request_serializer=bytes, response_deserializer=bytes
    )
    with pytest.raises(grpc.RpcError) as info:
      rpc(never_sends(), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value
    assert not sent.is_set()
    release.set()
    # The WaitStop calls were answered without waiting: the program runs on.
    assert not coordinator.status().stopping
    assert coordinator.stop_reason is None
    # The same calls with a proof are served.
    state = control_pb2.StopState.FromString(
      raw.call("WaitStop", b"", proof(token, "WaitStop", b""))
    )
    assert state.stopping is False
  finally:
    raw.close()


def test_the_client_names_the_refusal(coordinator):
  intruder = ControlClient(coordinator.address, os.urandom(32))
  try:
    with pytest.raises(errors.AuthenticationError) as info:
      intruder.stop("intruder")
    message = str(info.value)
    assert coordinator.address in message and "Stop" in message
    assert "another launch" in message
  finally:
    intruder.close()
  assert coordinator.stop_reason is None


def test_a_proof_is_accepted_once_and_only_within_the_window():
  token = auth.control_token(os.urandom(32))
  now = [time.time()]
  verifier = auth.Verifier(token, window=10.0, clock=lambda: now[0])
  prover = auth.Prover(token)
  body = b"body"
  first = prover.metadata("/s/M", body)
  assert verifier.check("/s/M", first) == auth.body_digest(body)
  with pytest.raises(auth.ProofError, match="used before"):
    verifier.check("/s/M", first)
  late = prover.metadata("/s/M", body)
  now[0] += 11.0  # a recorded call sent again after the window
  with pytest.raises(auth.ProofError, match=r"\+1[01] s from the coordinator's clock.*NTP"):
    verifier.check("/s/M", late)
  now[0] -= 22.0  # or a host whose clock is ahead
  with pytest.raises(auth.ProofError, match=r"-1[01] s"):
    verifier.check("/s/M", prover.metadata("/s/M", body))
  now[0] = time.time() + 9.0  # within the window: accepted, once
  fresh = prover.metadata("/s/M", body)
  assert verifier.check("/s/M", fresh)
  with pytest.raises(auth.ProofError, match="used before"):
    verifier.check("/s/M", fresh)


# Floods and overload.


def test_long_polls_are_bounded_and_clients_retry_past_the_bound():
  secret = os.urandom(32)
  coordinator = Coordinator("prog", ["a[0]"], secret, max_long_polls=2)
  coordinator.start()
  waiters = [ControlClient(coordinator.address, secret) for _ in range(3)]
  pool = futures.ThreadPoolExecutor(3)
  raw = Raw(coordinator.address)
  token = auth.control_token(secret)
  try:
    waiters[2].register("a[0]", ["127.0.0.1:9"])
    held = [pool.submit(w.wait_stop, TIMEOUT) for w in waiters[:2]]
    # A long poll that a registered node answers at once: it holds its slot
    # only for an instant, so it does not keep the held polls out.
    probe = control_pb2.ResolveRequest(node="a[0]", timeout=TIMEOUT).SerializeToString()
    deadline = time.monotonic() + TIMEOUT
    while True:  # until both held polls wait in the coordinator
      try:
        raw.call("Resolve", probe, proof(token, "Resolve", probe))
      except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        assert "2 waiting calls" in e.details()
        break
      assert time.monotonic() < deadline, "the long polls never filled the bound"
    assert waiters[2].status().program == "prog"  # calls that do not wait are served
    third = pool.submit(waiters[2].wait_stop, TIMEOUT)
    with pytest.raises(futures.TimeoutError):
      third.result(timeout=0.5)  # refused, and retrying, not failed
    coordinator.request_stop("test")
    assert all(f.result(timeout=TIMEOUT).stopping for f in held)
    assert third.result(timeout=TIMEOUT).stopping
  finally:
    raw.close()
    for waiter in waiters:
      waiter.close()
    pool.shutdown()
    coordinator.close()


LAUNCH_SCRIPT = """
import sys
import launchpad as lp
from tests.control import programs
work, run_dir = sys.argv[1:]
controller = lp.launch(programs.calling_program(work), launch_type="local_mp", log_dir=run_dir)
controller.wait()  # raises, and the exit status is 1, if a node failed
print("PROGRAM ENDED", flush=True)
"""
IN_FLIGHT = 2000
FLOOD_TOTAL = 20000


def test_a_flood_of_unauthenticated_calls_does_not_stop_a_program(tmp_path):
  work, run_dir = tmp_path / "work", tmp_path / "run"
  work.mkdir()
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
  program = Child(
    [sys.executable, "-c", LAUNCH_SCRIPT, str(work), str(run_dir)], 120, cwd=ROOT, env=env
  )
  flooder = None
  try:
    program.wait_for(re.compile(r"^caller\[0\].*CALLING$"))
    address = runs.Run(run_dir).info()["coordinator"]
    flooder = Child([sys.executable, str(FLOOD), address, str(IN_FLIGHT), str(FLOOD_TOTAL)], 120)
    flooder.wait_for_line("FLOODING")
    (flooded,) = flooder.wait_for(re.compile(r"^FLOODED (.*)$"))
    codes = json.loads(flooded.group(1))
    assert flooder.finish() == 0, flooder.output()
    # Every flood call was answered, none served.
    assert sum(codes.values()) == FLOOD_TOTAL, codes
    assert codes.get("OK", 0) == 0 and codes.get("UNAUTHENTICATED", 0) > 0, codes
    (work / "finish").touch()
    assert program.finish() == 0, program.output()
    assert "PROGRAM ENDED" in program.out()
    assert re.search(r"CALLED \d+", program.out()), program.output()
  finally:
    if flooder is not None:
      flooder.kill()
    program.kill()
