"""How control-plane calls prove they belong to the program.

Every process of a program holds the control token, an HMAC of the program
secret (`lp` commands read it from the run directory). The token never
travels: each call carries a proof made with it, an HMAC over the method, the
caller's clock, a nonce (a random client id and a per-client counter) and the
SHA-256 of the request body. The coordinator accepts a proof once, and only
while its time is within PROOF_WINDOW_SECONDS of its own clock, so a call seen
on the network can be neither replayed nor altered, and its proof says
nothing of the token.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Sequence

METADATA_KEY = "x-launchpad-proof"
# How far a proof's time may be from the coordinator's clock: it covers the
# clock difference between hosts, and a proof is remembered (to refuse it a
# second time) until its time is this far in the past.
PROOF_WINDOW_SECONDS = 120.0
_CONTEXT = b"launchpad-control-call"


class ProofError(Exception):
  """A call's proof is missing, wrong, stale or used before; says which."""


def control_token(secret: bytes) -> str:
  """The control token of the program whose secret is `secret`."""
  return hmac.new(secret, b"launchpad-control", hashlib.sha256).hexdigest()


def body_digest(body: bytes) -> str:
  return hashlib.sha256(body).hexdigest()


def _mac(key: bytes, method: str, stamp: str, nonce: str, digest: str) -> str:
  message = b"\0".join([_CONTEXT, *(part.encode() for part in (method, stamp, nonce, digest))])
  return hmac.new(key, message, hashlib.sha256).hexdigest()


class Prover:
  """Makes the proofs of one client's calls."""

  def __init__(self, token: str):
    self._key = token.encode()
    self._client = os.urandom(8).hex()
    self._counter = itertools.count()
    self._lock = threading.Lock()  # threads of a process share its client

  def metadata(self, method: str, body: bytes) -> tuple[tuple[str, str], ...]:
    """The metadata of one call of `method` (its full name) with `body`; make
    new metadata for every attempt, a proof is accepted only once."""
    stamp = f"{time.time():.6f}"
    with self._lock:
      nonce = f"{self._client}.{next(self._counter)}"
    digest = body_digest(body)
    proof = f"{stamp} {nonce} {digest} {_mac(self._key, method, stamp, nonce, digest)}"
    return ((METADATA_KEY, proof),)


class Verifier:
  """Checks proofs on the coordinator, remembering the nonces it accepted.

  Args:
    token: the program's control token.
    window: PROOF_WINDOW_SECONDS.
    clock: the wall clock (time.time); a test may give another.
  """

  def __init__(
    self,
    token: str,
    window: float = PROOF_WINDOW_SECONDS,
    clock: Callable[[], float] = time.time,
  ):
    self._key = token.encode()
    self._window = window
    self._clock = clock
    self._lock = threading.Lock()
    self._seen: set[str] = set()
    self._expiries: list[tuple[float, str]] = []  # a heap of (when to forget, nonce)

  def check(self, method: str, metadata: Sequence[tuple[str, str | bytes]]) -> str:
    """Accepts the proof in `metadata` for a call of `method` and returns the
    body digest it commits to; raises ProofError otherwise."""
    stamp, nonce, digest, mac = self._proof(metadata)
    if not hmac.compare_digest(mac, _mac(self._key, method, stamp, nonce, digest)):
      raise ProofError(
        "the call's proof was not made with this program's control token for this call: the "
        "caller holds the token or secret of another launch, or the call was altered"
      )
    now = self._clock()
    offset = now - float(stamp)
    if abs(offset) > self._window:
      raise ProofError(
        f"the call's proof was made {offset:+.0f} s from the coordinator's clock, more than the "
        f"{self._window:.0f} s allowed: a recorded call, or this host's clock is off "
        "(synchronise the hosts' clocks, e.g. with NTP)"
      )
    with self._lock:
      while self._expiries and self._expiries[0][0] < now:
        self._seen.discard(heapq.heappop(self._expiries)[1])
      if nonce in self._seen:
        raise ProofError("the call's proof was used before: a replayed call")
      self._seen.add(nonce)
      heapq.heappush(self._expiries, (float(stamp) + self._window, nonce))
    return digest

  @staticmethod
  def _proof(metadata: Sequence[tuple[str, str | bytes]]) -> list[str]:
    values = [value for key, value in metadata if key == METADATA_KEY]
    if not values:
      raise ProofError("the call carries no proof of the program's control token")
    parts = values[0].split(" ") if isinstance(values[0], str) else []
    if len(parts) != 4:
      raise ProofError("the call's proof is malformed")
    try:
      finite = math.isfinite(float(parts[0]))
    except ValueError:
      finite = False
    if not finite:
      raise ProofError("the call's proof is malformed")
    return parts
