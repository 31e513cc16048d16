"""`lp.Address`: a network address a node's own server binds, fixed at launch.

Launchpad's way for nodes that run a server of their own (not courier): the
program gives the node an Address (`address.assign(node)`), passes the same
Address to the nodes that call it, and every node reads `address.resolve()`
('localhost:PORT') at run time. The port is chosen when the program is
launched and travels inside the Address, so the owner binds it and the
others connect to it without asking anyone.

Courier nodes do not need this: they bind a free port themselves and register
it with the coordinator, which is race-free and works across hosts. Addresses
are therefore only bound by single-host launchers (local_mt, test_mt,
local_mp); SSH and Ray launches refuse programs that use them.
"""

from __future__ import annotations

import abc
import os
import re
import socket
from typing import TYPE_CHECKING, Any

from launchpad import errors

if TYPE_CHECKING:
  from launchpad.program import Program

_NAME = re.compile(r"[a-z][a-z0-9]*")


class AbstractAddressBuilder(abc.ABC):
  """Makes the address string of an Address when the program launches."""

  @abc.abstractmethod
  def build(self) -> str:
    """The address, 'host:port'."""


class SimpleLocalAddressBuilder(AbstractAddressBuilder):
  """'localhost:PORT' with a port that was free on loopback when this was made."""

  def __init__(self):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
      probe.bind(("127.0.0.1", 0))
      self._address = f"localhost:{probe.getsockname()[1]}"

  def build(self) -> str:
    return self._address


class Address:
  """A network address, fixed when the program launches; `resolve()` gives it.

  Args:
    name: optional name: lowercase letters and digits, starting with a letter.
  """

  def __init__(self, name: str | None = None):
    if name is not None and not (isinstance(name, str) and _NAME.fullmatch(name)):
      raise ValueError(
        f"lp.Address name {name!r}: use lowercase letters and digits, starting with a letter."
      )
    self.name = name
    self._builder: AbstractAddressBuilder | None = None
    self._owner: Any = None  # the node, or its description once pickled

  def bind(self, builder: AbstractAddressBuilder) -> None:
    """Sets what makes the address; launchers call it when the program launches."""
    self._builder = builder

  def assign(self, node: Any) -> None:
    """Makes `node` the owner: the node whose server binds this address."""
    if self._owner is node:
      return
    if self._owner is not None:
      raise errors.ProgramError(
        f"lp.Address {self._description()} already belongs to {self._owner_name()}; make a new "
        "lp.Address for each node that serves."
      )
    addresses = getattr(node, "addresses", None)
    if not isinstance(addresses, list):
      raise TypeError(
        f"lp.Address.assign takes a lp.PyNode (or a node derived from it), got {node!r}."
      )
    self._owner = node
    addresses.append(self)

  @property
  def bound(self) -> bool:
    return self._builder is not None

  def resolve(self) -> str:
    """The address, 'host:port'; inside a node of the launched program."""
    if self._builder is None:
      if self._owner is None:
        raise errors.ProgramError(
          f"lp.Address {self._description()} belongs to no node, so no launcher gives it a "
          "port; call address.assign(node) (or node.allocate_address(address)) first."
        )
      raise errors.ProgramError(
        f"lp.Address {self._description()} of node {self._owner_name()} has no port yet: lp.launch "
        "gives it one. Call resolve() inside a node, at run time."
      )
    return self._builder.build()

  def _owner_name(self) -> str:
    if isinstance(self._owner, str):
      return self._owner
    return getattr(self._owner, "name", None) or f"a {type(self._owner).__name__}"

  def _description(self) -> str:
    return repr(self.name) if self.name else "(unnamed)"

  def __getstate__(self) -> dict[str, Any]:
    # The owner stays behind (it would drag the program graph along); its
    # description is enough for error messages.
    state = dict(self.__dict__)
    if self._owner is not None and not isinstance(self._owner, str):
      state["_owner"] = self._owner_name()
    return state

  def __repr__(self) -> str:
    return (
      f"lp.Address({self._description()}, {self._builder.build() if self.bound else 'unbound'})"
    )


def get_port_from_address(address: str) -> int:
  """The port of 'host:port'; a named port 'host:NAME' is read from $LP_PORT_NAME,
  as in Launchpad."""
  if not isinstance(address, str) or ":" not in address:
    raise ValueError(
      f"get_port_from_address({address!r}): give 'host:port', e.g. lp.Address().resolve()."
    )
  port = address.rsplit(":", 1)[1]
  if port.isdigit():
    return int(port)
  variable = f"LP_PORT_{port}"
  if variable not in os.environ:
    raise ValueError(
      f"get_port_from_address({address!r}): {port!r} is neither a port number nor a named "
      f"port (${variable} is not set)."
    )
  return int(os.environ[variable])


def bind_local(program: Program, single_host: bool) -> None:
  """Gives every unbound Address of `program` a free local port; refuses them
  when the nodes may run on several hosts (`single_host` False)."""
  for node in program.get_all_nodes():
    for inner in (node, *node.inner_nodes()):
      for address in getattr(inner, "addresses", ()):
        if address.bound:
          continue
        if not single_host:
          raise errors.ProgramError(
            f"node {inner.name} owns an lp.Address, which only single-host launches "
            "(local_mt, test_mt, local_mp) can fix in advance; serve it from a "
            "lp.CourierNode instead, whose address the coordinator tracks on any host."
          )
        address.bind(SimpleLocalAddressBuilder())
