"""TLS between hosts: a certificate made for each launch, or one you give.

The program secret already authenticates every connection (nobody without
it gets a call served or a reply unpickled), but it does not encrypt: calls
and replies cross the network in clear. TLS adds encryption, so what nodes
send each other cannot be read on the way. Both ends present the launch's certificate and
check the other's against it (mutual TLS), for node-to-node calls and for the
coordinator alike. Calls between nodes of one host go over Unix sockets,
which never leave the kernel, and are not encrypted.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import shutil
import ssl
import subprocess
import tempfile
from typing import TYPE_CHECKING

from launchpad import errors, private_files

if TYPE_CHECKING:  # imported where gRPC credentials are made: courier and programs never load it
  import grpc

# The name in the certificate and the name every client checks it for: nodes
# reach each other by address, and the certificate is the launch's own.
SERVER_NAME = "launchpad"
DAYS = 30


@dataclasses.dataclass(frozen=True)
class TlsConfig:
  """A certificate and key (PEM) every node presents, and the CA (PEM) that
  peers' certificates must be signed by."""

  cert: bytes
  key: bytes = dataclasses.field(repr=False)
  ca: bytes
  server_name: str = SERVER_NAME

  @classmethod
  def generate(cls) -> TlsConfig:
    """A new self-signed certificate, valid for DAYS days, made with `openssl`."""
    if shutil.which("openssl") is None:
      raise errors.LaunchpadError(
        "TLS with a certificate per launch needs the `openssl` command, which is not "
        "installed; install OpenSSL, or give a certificate (TlsConfig.from_files)."
      )
    with tempfile.TemporaryDirectory() as directory:
      cert, key = pathlib.Path(directory, "cert.pem"), pathlib.Path(directory, "key.pem")
      command = (
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        f"-days {DAYS} -subj /CN={SERVER_NAME} -addext subjectAltName=DNS:{SERVER_NAME}"
      ).split()
      made = subprocess.run(
        [*command, "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
        text=True,
        timeout=60,
      )
      if made.returncode != 0:
        raise errors.LaunchpadError(
          f"openssl could not make the launch's TLS certificate ({made.stderr.strip()}); "
          "install OpenSSL 1.1.1 or later, or give a certificate (TlsConfig.from_files)."
        )
      return cls(cert.read_bytes(), key.read_bytes(), cert.read_bytes())

  @classmethod
  def from_files(
    cls, cert: str | os.PathLike, key: str | os.PathLike, ca: str | os.PathLike | None = None
  ) -> TlsConfig:
    """Your own certificate and key; `ca` signs every node's certificate
    (default: the certificate itself, shared by every node). The certificate
    must name SERVER_NAME ('launchpad') among its DNS names."""
    read = lambda p: pathlib.Path(p).read_bytes()  # noqa: E731
    return cls(read(cert), read(key), read(ca or cert))

  @functools.cached_property
  def server_context(self) -> ssl.SSLContext:
    context = self._context(ssl.Purpose.CLIENT_AUTH)
    context.verify_mode = ssl.CERT_REQUIRED
    return context

  @functools.cached_property
  def client_context(self) -> ssl.SSLContext:
    return self._context(ssl.Purpose.SERVER_AUTH)

  @classmethod
  def for_launch(cls, option: bool | TlsConfig | None) -> TlsConfig | None:
    """A launcher's `tls` argument as settings: True makes a certificate."""
    if isinstance(option, TlsConfig):
      return option
    return cls.generate() if option else None

  def __getstate__(self) -> dict:
    """The PEM fields only: the SSL contexts are made again where it lands."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  def __setstate__(self, state: dict) -> None:
    for name, value in state.items():
      object.__setattr__(self, name, value)

  def grpc_server_credentials(self) -> grpc.ServerCredentials:
    import grpc

    return grpc.ssl_server_credentials(
      [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
    )

  def grpc_channel_credentials(self) -> grpc.ChannelCredentials:
    import grpc

    return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)

  def write(self, directory: pathlib.Path) -> None:
    """Keeps the files in `directory` (readable by their owner only), for `lp`
    commands that talk to the running program."""
    for name in ("cert", "key", "ca"):
      private_files.write(directory / f"tls-{name}.pem", getattr(self, name))

  @classmethod
  def read(cls, directory: pathlib.Path) -> TlsConfig | None:
    """What `write` kept; None if the run does not use TLS."""
    paths = [directory / f"tls-{name}.pem" for name in ("cert", "key", "ca")]
    return cls.from_files(*paths) if all(p.exists() for p in paths) else None

  def _context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose, cadata=self.ca.decode())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory() as directory:  # the ssl module loads keys from files
      cert, key = pathlib.Path(directory, "cert.pem"), pathlib.Path(directory, "key.pem")
      key.touch(mode=0o600)
      key.write_bytes(self.key)
      cert.write_bytes(self.cert)
      context.load_cert_chain(cert, key)
    return context
