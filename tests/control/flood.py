"""A process without the program's token that floods a coordinator with WaitStop calls.

    python flood.py ADDRESS IN_FLIGHT TOTAL

Keeps IN_FLIGHT calls in flight, each answered one replaced by a new one,
until TOTAL calls were answered. Prints FLOODING once the first IN_FLIGHT are
sent, then FLOODED and a JSON count of the status codes it got.
"""

from __future__ import annotations

import json
import sys
import threading

import grpc

from launchpad.control import control_pb2

# Bound on the whole flood, and on each call.
FLOOD_SECONDS = 120.0
CALL_SECONDS = 30.0


def flood(address: str, in_flight: int, total: int) -> dict[str, int]:
  channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
  wait_stop = channel.unary_unary(
    "/launchpad.control.Coordinator/WaitStop",
    request_serializer=lambda m: m.SerializeToString(),
    response_deserializer=control_pb2.StopState.FromString,
  )
  request = control_pb2.WaitStopRequest(timeout=CALL_SECONDS)
  codes: dict[str, int] = {}
  lock = threading.Lock()
  done = threading.Event()
  counts = {"sent": 0, "answered": 0}

  def send() -> None:
    with lock:
      if counts["sent"] == total:
        return
      counts["sent"] += 1
    wait_stop.future(request, timeout=CALL_SECONDS).add_done_callback(answered)

  def answered(call) -> None:
    code = call.code().name
    with lock:
      codes[code] = codes.get(code, 0) + 1
      counts["answered"] += 1
      if counts["answered"] == total:
        done.set()
    send()

  for _ in range(in_flight):
    send()
  print("FLOODING", flush=True)
  done.wait(FLOOD_SECONDS)
  channel.close()
  return codes


if __name__ == "__main__":
  address, in_flight, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
  print("FLOODED", json.dumps(flood(address, in_flight, total)), flush=True)
