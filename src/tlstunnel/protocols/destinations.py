"""Which destinations a proxying negotiator may reach: SOCKS and CONNECT servers.

A server-mode ``protocol = socks`` (or ``connect``) service connects wherever its
client asks.  Left open, that lets anyone who can complete the TLS handshake reach
the tunnel host's own services (a database on 127.0.0.1, a cloud metadata service on
169.254.169.254) as if they were local.  stunnel refuses nothing; tlstunnel refuses
these by default:

* loopback (127.0.0.0/8, ::1), the unspecified addresses (0.0.0.0, ::) and the rest of
  0.0.0.0/8 (Linux connects those to the host itself);
* link-local (169.254.0.0/16, fe80::/10), multicast and the IPv4 broadcast address;
* IPv4-compatible IPv6 (::/96, deprecated);
* every address of the host's own interfaces.

IPv4-mapped IPv6 (``::ffff:127.0.0.1``) is judged as the IPv4 address it carries, so it
cannot smuggle a loopback target past the rules.  ``socksAllow = NETWORK`` lines
permit chosen networks (say 127.0.0.1/32 for one service on the host).

The policy is a predicate on one *resolved* address, handed to the driver with the
``Connect`` step: the service applies it to every address a name resolves to, so a
name that resolves to 127.0.0.1 is refused like the literal.  Telling "an address of
this host" uses a bind test (binding to an address succeeds only when the host owns
it), the one portable way without a platform interface list; it is a system call,
not traffic, and runs on the driver's side when the predicate is called.  Where the
system lets any address be bound (``ip_nonlocal_bind``) the test is skipped and only
the fixed ranges apply.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_BROADCAST = ipaddress.ip_address("255.255.255.255")


def parse_address(text: str) -> IPAddress:
    """An address as the resolver gives it (a scope id is dropped), IPv4-mapped IPv6
    turned into the IPv4 address it carries.  ``ValueError`` if it is not one."""
    address = ipaddress.ip_address(text.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def local_reason(address: IPAddress) -> str | None:
    """Why ``address`` is off limits by default, or None: the fixed ranges only."""
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address (this host)"
    if address.version == 4 and address in _THIS_NETWORK:
        return "in 0.0.0.0/8 (this host)"
    if address.version == 6 and address in _IPV4_COMPATIBLE:
        return "an IPv4-compatible IPv6 address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address == _BROADCAST:
        return "the broadcast address"
    return None


# Documentation addresses no host owns: if binding one works, the system binds any
# address (Linux ip_nonlocal_bind, freebind) and the bind test tells nothing.
_FOREIGN = {4: "203.0.113.254", 6: "2001:db8:ffff:ffff::fe"}


@functools.cache
def _bind_test_works(version: int) -> bool:
    return not _can_bind(version, _FOREIGN[version])


def is_own_address(address: IPAddress) -> bool:
    """True when this host has ``address`` on one of its interfaces (it can bind it)."""
    return _bind_test_works(address.version) and _can_bind(address.version, str(address))


def _can_bind(version: int, text: str) -> bool:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    try:
        probe = socket.socket(family, socket.SOCK_DGRAM)
    except OSError:
        return False  # no such family here: nothing of ours to reach over it
    with contextlib.closing(probe):
        try:
            probe.bind((text, 0))
        except OSError as exc:
            return exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EINVAL)
        return True


@dataclass(slots=True)
class DestinationPolicy:
    """The refusal predicate for one service's ``socksAllow`` networks.

    ``refusals`` and ``permitted`` count what the predicate answered, so the
    negotiator can tell "every address was refused" from "connecting failed"."""

    allowed: tuple[IPNetwork, ...] = ()
    refusals: list[str] = field(default_factory=list)
    permitted: int = 0

    @classmethod
    def from_networks(cls, networks: Iterable[str]) -> DestinationPolicy:
        return cls(tuple(ipaddress.ip_network(text, strict=False) for text in networks))

    def reason_to_refuse(self, text: str) -> str | None:
        """The predicate for ``Connect.refuse_address``: why not ``text``, or None."""
        reason = self._judge(text)
        if reason is None:
            self.permitted += 1
        else:
            self.refusals.append(reason)
        return reason

    def _judge(self, text: str) -> str | None:
        try:
            address = parse_address(text)
        except ValueError:
            return f"{text} is not an IP address"
        if any(address.version == net.version and address in net for net in self.allowed):
            return None
        reason = local_reason(address)
        if reason is None and is_own_address(address):
            reason = "an address of this host"
        if reason is None:
            return None
        return f"{address} is {reason} (socksAllow = NETWORK permits it)"

    @property
    def refused_everything(self) -> bool:
        return bool(self.refusals) and self.permitted == 0
