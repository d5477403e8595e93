"""The SOCKS 4, 4a and 5 wire formats: parsing requests and replies, building both.

Pure functions over bytes, no state: each ``parse_*`` takes everything received so far
and returns the message with the number of bytes it used, or None when more bytes are
needed.  A malformed message raises ``NegotiationError``; a well-formed request the
server must answer with an error (a BIND command, an unknown address type, a bad host
name) raises ``BadRequest`` carrying the reply code, so the caller can tell the client
why before closing.

References: SOCKS 4 and 4a (openssh.com/txt/socks4.protocol, socks4a.protocol),
RFC 1928 (SOCKS 5), RFC 1929 (its username/password authentication).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

from tlstunnel.protocols.base import NegotiationError

SOCKS4 = 4
SOCKS5 = 5
CMD_CONNECT = 1

# SOCKS 4 reply codes.
SOCKS4_GRANTED = 0x5A
SOCKS4_REJECTED = 0x5B

# SOCKS 5 (RFC 1928 section 6) reply codes and what they mean.
SOCKS5_SUCCEEDED = 0x00
SOCKS5_GENERAL_FAILURE = 0x01
SOCKS5_NOT_ALLOWED = 0x02
SOCKS5_NETWORK_UNREACHABLE = 0x03
SOCKS5_HOST_UNREACHABLE = 0x04
SOCKS5_CONNECTION_REFUSED = 0x05
SOCKS5_TTL_EXPIRED = 0x06
SOCKS5_COMMAND_NOT_SUPPORTED = 0x07
SOCKS5_ADDRESS_TYPE_NOT_SUPPORTED = 0x08
SOCKS5_MEANINGS = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}

# SOCKS 5 authentication methods.
METHOD_NO_AUTH = 0x00
METHOD_USERNAME_PASSWORD = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF

ATYP_IPV4 = 1
ATYP_DOMAIN = 3
ATYP_IPV6 = 4

# SOCKS 4 USERID and 4a host name end at a NUL; neither may run on for ever.
MAX_FIELD = 255
_HOST_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,255}")


class BadRequest(NegotiationError):
    """A request the server answers with the error ``code`` (in the request's SOCKS
    version) before giving up."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True, slots=True)
class Request:
    """A CONNECT request: where the client wants to go."""

    version: int  # 4 (4a too) or 5
    host: str  # an IP address as text, or a name
    port: int


@dataclass(frozen=True, slots=True)
class Greeting:
    """SOCKS 5's opening: the authentication methods the client offers."""

    methods: bytes


# --- server side: reading the client --------------------------------------------------------


def parse_socks4_request(data: bytes | bytearray) -> tuple[Request, int] | None:
    """VN CD DSTPORT DSTIP USERID NUL [HOST NUL]: the USERID is ignored (as stunnel
    does); DSTIP 0.0.0.x with x > 0 means SOCKS 4a: a host name follows."""
    if data and data[0] != SOCKS4:
        raise NegotiationError(f"not a SOCKS 4 request (version byte {data[0]:#04x})")
    if len(data) < 8:
        return None
    command = data[1]
    (port,) = struct.unpack("!H", data[2:4])
    raw_ip = bytes(data[4:8])
    user_end = _find_nul(data, 8, "SOCKS 4 user id")
    if user_end is None:
        return None
    used = user_end + 1
    if raw_ip[:3] == b"\0\0\0" and raw_ip[3] != 0:
        host_end = _find_nul(data, used, "SOCKS 4a host name")
        if host_end is None:
            return None
        host = _host_name(bytes(data[used:host_end]), SOCKS4_REJECTED)
        used = host_end + 1
    else:
        host = str(ipaddress.IPv4Address(raw_ip))
    if command != CMD_CONNECT:
        raise BadRequest(f"SOCKS 4 command {command} is not supported", SOCKS4_REJECTED)
    if port == 0:
        raise BadRequest("SOCKS 4 request for port 0", SOCKS4_REJECTED)
    return Request(SOCKS4, host, port), used


def parse_greeting(data: bytes | bytearray) -> tuple[Greeting, int] | None:
    """VER NMETHODS METHODS..."""
    if data and data[0] != SOCKS5:
        raise NegotiationError(f"not a SOCKS 5 greeting (version byte {data[0]:#04x})")
    if len(data) < 2:
        return None
    count = data[1]
    if len(data) < 2 + count:
        return None
    return Greeting(bytes(data[2 : 2 + count])), 2 + count


def parse_socks5_request(data: bytes | bytearray) -> tuple[Request, int] | None:
    """VER CMD RSV ATYP DST.ADDR DST.PORT."""
    if data and data[0] != SOCKS5:
        raise NegotiationError(f"not a SOCKS 5 request (version byte {data[0]:#04x})")
    if len(data) < 4:
        return None
    command, address_type = data[1], data[3]
    address = _parse_address(data, 4, address_type)
    if address is None:
        return None
    host, used = address
    if len(data) < used + 2:
        return None
    (port,) = struct.unpack("!H", data[used : used + 2])
    if command != CMD_CONNECT:
        raise BadRequest(
            f"SOCKS 5 command {command} is not supported", SOCKS5_COMMAND_NOT_SUPPORTED
        )
    if port == 0:
        raise BadRequest("SOCKS 5 request for port 0", SOCKS5_GENERAL_FAILURE)
    return Request(SOCKS5, host, port), used + 2


def _parse_address(data: bytes | bytearray, at: int, address_type: int) -> tuple[str, int] | None:
    """DST.ADDR (or BND.ADDR) at ``at``: (host text, offset past it), None if short."""
    if address_type == ATYP_IPV4:
        end = at + 4
        return (str(ipaddress.IPv4Address(bytes(data[at:end]))), end) if len(data) >= end else None
    if address_type == ATYP_IPV6:
        end = at + 16
        return (str(ipaddress.IPv6Address(bytes(data[at:end]))), end) if len(data) >= end else None
    if address_type == ATYP_DOMAIN:
        if len(data) <= at:
            return None
        end = at + 1 + data[at]
        if len(data) < end:
            return None
        return _host_name(bytes(data[at + 1 : end]), SOCKS5_GENERAL_FAILURE), end
    raise BadRequest(
        f"SOCKS 5 address type {address_type} is unknown", SOCKS5_ADDRESS_TYPE_NOT_SUPPORTED
    )


def _find_nul(data: bytes | bytearray, start: int, what: str) -> int | None:
    end = data.find(b"\0", start)
    if end < 0:
        if len(data) - start > MAX_FIELD:
            raise NegotiationError(f"a {what} longer than {MAX_FIELD} bytes")
        return None
    if end - start > MAX_FIELD:
        raise NegotiationError(f"a {what} longer than {MAX_FIELD} bytes")
    return end


def _host_name(raw: bytes, code: int) -> str:
    """A host name from the wire: letters, digits and ``_.-:`` (an IP literal passes
    and is judged after resolving, like any name)."""
    text = raw.decode("ascii", errors="replace")
    if not _HOST_NAME.fullmatch(text):
        raise BadRequest(f"the SOCKS request names no valid host ({text[:80]!r})", code)
    return text


# --- server side: answering ---------------------------------------------------------------


def socks4_reply(code: int) -> bytes:
    """VN=0 CD DSTPORT DSTIP; the address fields are ignored by clients: zeros."""
    return bytes([0, code]) + b"\0" * 6


def socks5_reply(code: int) -> bytes:
    """VER REP RSV ATYP BND.ADDR BND.PORT, bound address 0.0.0.0:0 (clients of a
    CONNECT ignore it; the outgoing socket's address is none of their business)."""
    return bytes([SOCKS5, code, 0, ATYP_IPV4]) + b"\0" * 6


def method_choice(method: int) -> bytes:
    return bytes([SOCKS5, method])


# --- client side: asking a SOCKS 5 server -----------------------------------------------------


def greeting(with_password: bool) -> bytes:
    methods = [METHOD_NO_AUTH] + ([METHOD_USERNAME_PASSWORD] if with_password else [])
    return bytes([SOCKS5, len(methods), *methods])


def password_request(username: str, password: str) -> bytes:
    """RFC 1929: VER=1 ULEN UNAME PLEN PASSWD."""
    user, secret = username.encode(), password.encode()
    if not 0 < len(user) < 256 or len(secret) > 255:
        raise NegotiationError("SOCKS 5 user names and passwords are at most 255 bytes")
    return bytes([1, len(user)]) + user + bytes([len(secret)]) + secret


def connect_request(host: str, port: int) -> bytes:
    """A CONNECT for ``host``: IP literals as addresses, anything else as a name for
    the SOCKS server to resolve."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        if len(name) > 255:
            raise NegotiationError(f"host name too long for SOCKS 5: {host}") from None
        target = bytes([ATYP_DOMAIN, len(name)]) + name
    else:
        kind = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
        target = bytes([kind]) + address.packed
    return bytes([SOCKS5, CMD_CONNECT, 0]) + target + struct.pack("!H", port)


def parse_method_choice(data: bytes | bytearray) -> tuple[int, int] | None:
    if data and data[0] != SOCKS5:
        raise NegotiationError(f"not a SOCKS 5 server (its answer starts {bytes(data[:2])!r})")
    if len(data) < 2:
        return None
    return data[1], 2


def parse_password_reply(data: bytes | bytearray) -> tuple[int, int] | None:
    """RFC 1929: VER STATUS, status 0 = success."""
    if data and data[0] != 1:
        raise NegotiationError(f"a broken SOCKS 5 authentication answer {bytes(data[:2])!r}")
    if len(data) < 2:
        return None
    return data[1], 2


def parse_socks5_reply(data: bytes | bytearray) -> tuple[int, int] | None:
    """VER REP RSV ATYP BND.ADDR BND.PORT → (REP, length)."""
    if data and data[0] != SOCKS5:
        raise NegotiationError(f"not a SOCKS 5 reply (version byte {data[0]:#04x})")
    if len(data) < 4:
        return None
    try:
        address = _parse_address(data, 4, data[3])
    except BadRequest as exc:
        raise NegotiationError(f"a SOCKS 5 reply with {exc}") from None
    if address is None or len(data) < address[1] + 2:
        return None
    return data[1], address[1] + 2
