"""How control-plane calls prove they belong to the program."""

from __future__ import annotations

import hashlib
import hmac

METADATA_KEY = "x-launchpad-token"


def control_token(secret: bytes) -> str:
  """A token derived from the program secret; the secret itself never travels."""
  return hmac.new(secret, b"launchpad-control", hashlib.sha256).hexdigest()
