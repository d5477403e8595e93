"""HAProxy's PROXY protocol header, versions 1 and 2: build it, parse it.  No I/O.

The PROXY header is what a proxy puts in front of a connection it relays so that the
next hop learns who the real client was (``doc/proxy-protocol.txt`` in HAProxy's
sources is the specification).  Two spellings exist:

* **v1**, one line of ASCII: ``PROXY TCP4 192.0.2.7 198.51.100.1 50123 443\\r\\n``
  (``TCP6`` for IPv6, ``PROXY UNKNOWN\\r\\n`` when the sender cannot say).  At most
  107 bytes with its CRLF.
* **v2**, binary: a 12-byte signature that no other protocol starts with, a version
  and command byte, an address family and transport byte, a 16-bit length, then the
  addresses and any number of TLVs (type, 16-bit length, value) carrying extras: the
  ALPN protocol, the SNI (``AUTHORITY``), and a ``SSL`` TLV holding the TLS version,
  cipher and the client certificate's CN as sub-TLVs.  ``LOCAL`` (the proxy's own
  health check) says "use the socket's addresses".

Theory of operation.  ``ProxyHeader`` is the one model both spellings map to;
``encode_v1``/``encode_v2`` turn it into bytes and ``parse`` turns bytes back into
it, so ``parse(encode_vN(h)).header == h`` for every header version N can express
(the tests check exactly that with hypothesis).  ``parse`` is incremental the way a
reader needs it: hand it everything received so far and it answers ``None`` (need
more bytes), a ``Parsed`` (the header and how many bytes it took; the rest belongs to
the stream behind it), or raises ``ProxyHeaderError`` with a sentence for the log.
It never asks for more than it will accept: a v1 line is refused once 107 bytes hold
no CRLF, a v2 header once its length field exceeds ``max_v2_body`` (HAProxy's own
limit is its buffer; hitch and ghostunnel send a few hundred bytes), so a reader's
buffer stays bounded whatever the peer sends.

Parsing is strict where the specification is (exactly one space between v1 fields,
no leading zeros, CRLF and never a bare LF, only version 2, only the LOCAL and PROXY
commands, only the defined family and transport values, every TLV inside the header,
a CRC32C TLV that must match) because anything else is either a broken proxy or
someone probing; it is lenient where the specification asks (the rest of an UNKNOWN
line, the address block of a LOCAL header, TLV types it does not know).
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # "PROXY UNKNOWN ffff:...:ffff ffff:...:ffff 65535 65535\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16  # signature, version/command, family/transport, length
V2_MAX_BODY = 0xFFFF  # what the 16-bit length field can say
# What a receiver accepts by default after the 16 fixed bytes: addresses (216 bytes at
# most, for Unix paths) and TLVs.  Real senders stay far below; a peer announcing
# more is not a proxy we want to wait for.
DEFAULT_MAX_V2_BODY = 4096

# TLV types (section 2.2 of the specification).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30

# Flags of the SSL TLV's ``client`` byte.
PP2_CLIENT_SSL = 0x01  # the client connected over TLS
PP2_CLIENT_CERT_CONN = 0x02  # ...and presented a certificate on this connection
PP2_CLIENT_CERT_SESS = 0x04  # ...or at least once in the TLS session it resumed

_UNIX_PATH_LENGTH = 108
_TLV_HEAD = struct.Struct("!BH")
_V2_HEAD = struct.Struct("!12sBBH")
_SSL_HEAD = struct.Struct("!BI")


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY header this parser accepts; the message says why."""


class Command(enum.IntEnum):
    LOCAL = 0x0  # the proxy's own connection (a health check): use the socket's addresses
    PROXY = 0x1  # relayed on behalf of the client the addresses name


class Family(enum.IntEnum):
    UNSPEC = 0x0
    INET = 0x1
    INET6 = 0x2
    UNIX = 0x3


class Transport(enum.IntEnum):
    UNSPEC = 0x0
    STREAM = 0x1
    DGRAM = 0x2


# Bytes the address block takes for each family (v2), ports included.
_ADDRESS_LENGTH = {Family.UNSPEC: 0, Family.INET: 12, Family.INET6: 36, Family.UNIX: 216}


@dataclass(frozen=True, slots=True)
class TLV:
    """One type-length-value item of a v2 header (or of its SSL TLV)."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class SSLInfo:
    """The value of a ``PP2_TYPE_SSL`` TLV: flags, verify result and sub-TLVs."""

    client: int  # PP2_CLIENT_* flags
    verify: int  # 0: the client's certificate was presented and verified
    tlvs: tuple[TLV, ...] = ()

    def text(self, subtype: int) -> str | None:
        for tlv in self.tlvs:
            if tlv.type == subtype:
                return tlv.value.decode("utf-8", "replace")
        return None

    @property
    def version(self) -> str | None:
        return self.text(PP2_SUBTYPE_SSL_VERSION)

    @property
    def cn(self) -> str | None:
        return self.text(PP2_SUBTYPE_SSL_CN)

    @property
    def cipher(self) -> str | None:
        return self.text(PP2_SUBTYPE_SSL_CIPHER)

    def to_tlv(self) -> TLV:
        body = b"".join(_encode_tlv(t) for t in self.tlvs)
        return TLV(PP2_TYPE_SSL, _SSL_HEAD.pack(self.client, self.verify) + body)

    @classmethod
    def from_value(cls, value: bytes) -> SSLInfo:
        if len(value) < _SSL_HEAD.size:
            raise ProxyHeaderError(
                f"the SSL TLV holds {len(value)} byte(s), fewer than its 5-byte head"
            )
        client, verify = _SSL_HEAD.unpack_from(value)
        return cls(client, verify, _parse_tlvs(value[_SSL_HEAD.size :], "SSL sub-TLV"))


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a PROXY header says, whichever version spelled it.

    ``source``/``destination`` are IP addresses in their canonical text form (or Unix
    paths for ``Family.UNIX``); None when the header carries no usable addresses
    (UNKNOWN, UNSPEC, LOCAL).  Ports are 0 where there are none.
    """

    command: Command = Command.PROXY
    family: Family = Family.UNSPEC
    transport: Transport = Transport.UNSPEC
    source: str | None = None
    destination: str | None = None
    source_port: int = 0
    destination_port: int = 0
    tlvs: tuple[TLV, ...] = ()

    @property
    def client_address(self) -> tuple[str, int] | None:
        """The real client's IP address and port, if this header names one."""
        if self.command is Command.PROXY and self.family in (Family.INET, Family.INET6):
            assert self.source is not None
            return self.source, self.source_port
        return None

    @property
    def server_address(self) -> tuple[str, int] | None:
        """Where the real client connected to, if this header says."""
        if self.command is Command.PROXY and self.family in (Family.INET, Family.INET6):
            assert self.destination is not None
            return self.destination, self.destination_port
        return None

    def tlv(self, tlv_type: int) -> bytes | None:
        for tlv in self.tlvs:
            if tlv.type == tlv_type:
                return tlv.value
        return None

    @property
    def alpn(self) -> bytes | None:
        return self.tlv(PP2_TYPE_ALPN)

    @property
    def authority(self) -> str | None:
        value = self.tlv(PP2_TYPE_AUTHORITY)
        return value.decode("utf-8", "replace") if value is not None else None

    @property
    def ssl(self) -> SSLInfo | None:
        value = self.tlv(PP2_TYPE_SSL)
        return SSLInfo.from_value(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class Parsed:
    """A complete header: what it said, its version, and how many bytes it took."""

    header: ProxyHeader
    version: int
    length: int


# --- building -------------------------------------------------------------------------------


def header_for(
    client: tuple[str, int] | None,
    local: tuple[str, int] | None,
    tlvs: tuple[TLV, ...] = (),
) -> ProxyHeader:
    """The header a sender writes for a TCP connection from ``client`` to ``local``.

    Either address missing (a Unix socket) gives an UNSPEC header (v1: ``UNKNOWN``).
    An IPv4 and an IPv6 address together are both written as IPv6 (the IPv4 one
    mapped, ``::ffff:a.b.c.d``), as HAProxy does: one header has one family."""
    if client is None or local is None:
        return ProxyHeader(tlvs=tlvs)
    # A link-local IPv6 address's scope (fe80::1%eth0) means nothing to the receiver.
    source = ipaddress.ip_address(client[0].split("%", 1)[0])
    destination = ipaddress.ip_address(local[0].split("%", 1)[0])
    if source.version != destination.version:
        source, destination = _as_ipv6(source), _as_ipv6(destination)
    return ProxyHeader(
        command=Command.PROXY,
        family=Family.INET if source.version == 4 else Family.INET6,
        transport=Transport.STREAM,
        source=str(source),
        destination=str(destination),
        source_port=client[1],
        destination_port=local[1],
        tlvs=tlvs,
    )


def _as_ipv6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + address.packed)


def encode_v1(header: ProxyHeader) -> bytes:
    """The v1 line.  Anything but a relayed TCP connection over IPv4 or IPv6 is
    ``PROXY UNKNOWN`` (v1 has no LOCAL, no UDP, no Unix, no TLVs)."""
    if (
        header.command is not Command.PROXY
        or header.transport is not Transport.STREAM
        or header.family not in (Family.INET, Family.INET6)
    ):
        return b"PROXY UNKNOWN\r\n"
    source = _text(_ip(header.source, header.family))
    destination = _text(_ip(header.destination, header.family))
    name = "TCP4" if header.family is Family.INET else "TCP6"
    _check_port(header.source_port)
    _check_port(header.destination_port)
    line = f"PROXY {name} {source} {destination} {header.source_port} {header.destination_port}\r\n"
    return line.encode("ascii")


def encode_v2(header: ProxyHeader, *, crc32c: bool = False) -> bytes:
    """The binary header, TLVs included (and a CRC32C TLV over it all if asked)."""
    family = Family.UNSPEC if header.command is Command.LOCAL else header.family
    transport = Transport.UNSPEC if header.command is Command.LOCAL else header.transport
    addresses = b""
    if family in (Family.INET, Family.INET6) and transport is not Transport.UNSPEC:
        _check_port(header.source_port)
        _check_port(header.destination_port)
        addresses = (
            _ip(header.source, family).packed
            + _ip(header.destination, family).packed
            + struct.pack("!HH", header.source_port, header.destination_port)
        )
    elif family is Family.UNIX and transport is not Transport.UNSPEC:
        addresses = _unix_path(header.source) + _unix_path(header.destination)
    elif family is not Family.UNSPEC:
        addresses = bytes(_ADDRESS_LENGTH[family])  # room the receiver skips
    tlvs = b"".join(_encode_tlv(t) for t in header.tlvs)
    if crc32c:
        tlvs += _TLV_HEAD.pack(PP2_TYPE_CRC32C, 4) + b"\x00\x00\x00\x00"
    body = addresses + tlvs
    if len(body) > V2_MAX_BODY:
        raise ValueError(f"a PROXY v2 header cannot hold {len(body)} bytes of addresses and TLVs")
    head = _V2_HEAD.pack(V2_SIGNATURE, 0x20 | header.command, (family << 4) | transport, len(body))
    data = head + body
    if crc32c:
        data = data[:-4] + struct.pack("!I", crc32c_of(data))
    return data


def _encode_tlv(tlv: TLV) -> bytes:
    if not 0 <= tlv.type <= 0xFF or len(tlv.value) > 0xFFFF:
        raise ValueError(f"TLV type {tlv.type} with {len(tlv.value)} bytes cannot be encoded")
    return _TLV_HEAD.pack(tlv.type, len(tlv.value)) + tlv.value


def _ip(text: str | None, family: Family) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if text is None:
        raise ValueError(f"a {family.name} header needs both addresses")
    address = ipaddress.ip_address(text)
    if address.version != (4 if family is Family.INET else 6):
        raise ValueError(f"{text} is not an {family.name} address")
    return address


def _text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address as inet_ntop writes it (what stunnel and HAProxy send): the same on
    every Python (3.13 changed how ``ipaddress`` prints IPv4-mapped addresses)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    return socket.inet_ntop(family, address.packed)


def _unix_path(path: str | None) -> bytes:
    raw = (path or "").encode("utf-8", "surrogateescape")
    if len(raw) > _UNIX_PATH_LENGTH or b"\x00" in raw:
        raise ValueError(f"{path!r} does not fit a PROXY v2 Unix address")
    return raw.ljust(_UNIX_PATH_LENGTH, b"\x00")


def _check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is out of range")


# --- parsing --------------------------------------------------------------------------------


def parse(data: bytes, *, max_v2_body: int = DEFAULT_MAX_V2_BODY) -> Parsed | None:
    """Parse the header at the start of ``data`` (v1 or v2, told apart by signature).

    None: ``data`` is a valid beginning, more bytes are needed.  Raises
    ``ProxyHeaderError`` when ``data`` cannot begin a header this parser accepts."""
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _parse_v2(data, max_v2_body)
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _parse_v1(data)
    if data.startswith(b"PROXY"):
        raise ProxyHeaderError("a PROXY v1 line needs a space after PROXY")
    raise ProxyHeaderError(f"no PROXY header: the connection starts with {_looks_like(data)}")


def _looks_like(data: bytes) -> str:
    """A few words on what a peer sent instead of a header, for the log."""
    if data[:1] == b"\x16":
        return "a TLS handshake (the peer sends no PROXY header)"
    line = data[:32].split(b"\r", 1)[0].split(b"\n", 1)[0]
    if line and all(32 <= byte < 127 for byte in line):
        return f"the text {line.decode('ascii')!r}"
    return f"the bytes {data[:16].hex(' ')}"


def _parse_v1(data: bytes) -> Parsed | None:
    end = data.find(b"\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"a PROXY v1 line longer than {V1_MAX_LENGTH} bytes")
        if b"\r" in data[:-1]:
            raise ProxyHeaderError("a PROXY v1 line with a CR not followed by LF")
        return None
    line = data[: end + 1]
    if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
        raise ProxyHeaderError("a PROXY v1 line must end with CRLF, and hold no other CR or LF")
    text = line[:-2]
    if not all(32 <= byte < 127 for byte in text):
        raise ProxyHeaderError("a PROXY v1 line with bytes that are not printable ASCII")
    fields = text.decode("ascii").split(" ")
    if len(fields) < 2:
        raise ProxyHeaderError("a PROXY v1 line without a protocol")
    protocol = fields[1]
    if protocol == "UNKNOWN":  # the rest of the line is to be ignored
        return Parsed(ProxyHeader(), 1, len(line))
    if protocol not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"PROXY v1 protocol {protocol[:10]!r} is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 6:
        raise ProxyHeaderError(
            f"a PROXY v1 {protocol} line needs 4 fields after it, separated by one space"
        )
    family = Family.INET if protocol == "TCP4" else Family.INET6
    header = ProxyHeader(
        command=Command.PROXY,
        family=family,
        transport=Transport.STREAM,
        source=_v1_address(fields[2], family),
        destination=_v1_address(fields[3], family),
        source_port=_v1_port(fields[4]),
        destination_port=_v1_port(fields[5]),
    )
    return Parsed(header, 1, len(line))


def _v1_address(text: str, family: Family) -> str:
    try:
        if family is Family.INET:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(text)
        else:
            if "%" in text:
                raise ValueError("scope")
            address = ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyHeaderError(f"{text[:45]!r} is not an {family.name} address") from None
    return str(address)


def _v1_port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"{text[:10]!r} is not a port number (no leading zeros)")
    port = int(text)
    if port > 0xFFFF:
        raise ProxyHeaderError(f"port {port} is out of range")
    return port


def _parse_v2(data: bytes, max_body: int) -> Parsed | None:
    if len(data) < V2_FIXED_LENGTH:
        return None
    _, version_command, family_transport, body_length = _V2_HEAD.unpack_from(data)
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 signature with version {version_command >> 4}")
    command_value = version_command & 0x0F
    if command_value not in (Command.LOCAL, Command.PROXY):
        raise ProxyHeaderError(f"PROXY v2 command {command_value} is neither LOCAL nor PROXY")
    if body_length > max_body:
        raise ProxyHeaderError(
            f"a PROXY v2 header announcing {body_length} bytes of addresses and TLVs "
            f"(the limit is {max_body})"
        )
    total = V2_FIXED_LENGTH + body_length
    if len(data) < total:
        return None
    body = data[V2_FIXED_LENGTH:total]
    command = Command(command_value)
    family_value, transport_value = family_transport >> 4, family_transport & 0x0F
    known = family_value <= Family.UNIX and transport_value <= Transport.DGRAM
    if command is Command.LOCAL:
        # Addresses are to be ignored; skip them if their size is known, so TLVs can be read.
        skip = _ADDRESS_LENGTH[Family(family_value)] if known else len(body)
        tlvs = _parse_tlvs(body[skip:], "TLV") if skip <= len(body) else ()
        _check_crc(data[:total], tlvs)
        return Parsed(ProxyHeader(command=Command.LOCAL, tlvs=tlvs), 2, total)
    if not known:
        raise ProxyHeaderError(f"PROXY v2 address family/transport byte 0x{family_transport:02x}")
    family, transport = Family(family_value), Transport(transport_value)
    needed = _ADDRESS_LENGTH[family]
    if len(body) < needed:
        raise ProxyHeaderError(
            f"a PROXY v2 {family.name} header with {len(body)} address bytes ({needed} needed)"
        )
    tlvs = _parse_tlvs(body[needed:], "TLV")
    _check_crc(data[:total], tlvs)
    header = ProxyHeader(command=command, family=family, transport=transport, tlvs=tlvs)
    if transport is Transport.UNSPEC or family is Family.UNSPEC:
        return Parsed(header, 2, total)  # address information is to be ignored
    if family is Family.UNIX:
        source, destination = (_unix_text(body[:108]), _unix_text(body[108:216]))
        return Parsed(_with(header, source, destination, 0, 0), 2, total)
    size = 4 if family is Family.INET else 16
    source_ip = ipaddress.ip_address(body[:size])
    destination_ip = ipaddress.ip_address(body[size : 2 * size])
    source_port, destination_port = struct.unpack_from("!HH", body, 2 * size)
    return Parsed(
        _with(header, str(source_ip), str(destination_ip), source_port, destination_port),
        2,
        total,
    )


def _with(
    header: ProxyHeader, source: str, destination: str, source_port: int, destination_port: int
) -> ProxyHeader:
    return ProxyHeader(
        header.command,
        header.family,
        header.transport,
        source,
        destination,
        source_port,
        destination_port,
        header.tlvs,
    )


def _unix_text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _parse_tlvs(data: bytes, what: str) -> tuple[TLV, ...]:
    tlvs: list[TLV] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _TLV_HEAD.size:
            raise ProxyHeaderError(f"{len(data) - offset} stray byte(s) where a {what} should be")
        tlv_type, length = _TLV_HEAD.unpack_from(data, offset)
        offset += _TLV_HEAD.size
        if offset + length > len(data):
            raise ProxyHeaderError(
                f"a {what} of type 0x{tlv_type:02x} announcing {length} bytes runs past "
                "the end of the header"
            )
        value = data[offset : offset + length]
        offset += length
        if tlv_type == PP2_TYPE_SSL and what == "TLV":
            SSLInfo.from_value(value)  # its sub-TLVs must be well formed too
        tlvs.append(TLV(tlv_type, value))
    return tuple(tlvs)


def _check_crc(header: bytes, tlvs: tuple[TLV, ...]) -> None:
    """A CRC32C TLV, if present, must match the header with its own value zeroed."""
    crc_tlvs = [t for t in tlvs if t.type == PP2_TYPE_CRC32C]
    if not crc_tlvs:
        return
    if len(crc_tlvs) > 1 or len(crc_tlvs[0].value) != 4:
        raise ProxyHeaderError("a PROXY v2 header with a malformed CRC32C TLV")
    expected = crc_tlvs[0].value
    # Find the CRC value in place: its TLV head (type 0x03, length 4) precedes it.
    marker = _TLV_HEAD.pack(PP2_TYPE_CRC32C, 4) + expected
    position = _tlv_position(header, marker)
    zeroed = header[: position + 3] + b"\x00\x00\x00\x00" + header[position + 7 :]
    if struct.pack("!I", crc32c_of(zeroed)) != expected:
        raise ProxyHeaderError("a PROXY v2 header whose CRC32C does not match")


def _tlv_position(header: bytes, marker: bytes) -> int:
    """Where the CRC TLV starts (walking the TLVs, so a look-alike in a value is skipped)."""
    _, _, family_transport, _ = _V2_HEAD.unpack_from(header)
    family = family_transport >> 4
    offset = V2_FIXED_LENGTH + (
        _ADDRESS_LENGTH[Family(family)] if family <= Family.UNIX else len(header)
    )
    while offset + _TLV_HEAD.size <= len(header):
        tlv_type, length = _TLV_HEAD.unpack_from(header, offset)
        if tlv_type == PP2_TYPE_CRC32C and header[offset : offset + 7] == marker:
            return offset
        offset += _TLV_HEAD.size + length
    raise ProxyHeaderError("a PROXY v2 header with a malformed CRC32C TLV")


def _make_crc32c_table() -> tuple[int, ...]:
    table = []
    for index in range(256):
        value = index
        for _ in range(8):
            value = (value >> 1) ^ 0x82F63B78 if value & 1 else value >> 1
        table.append(value)
    return tuple(table)


_CRC32C_TABLE = _make_crc32c_table()


def crc32c_of(data: bytes) -> int:
    """CRC32C (Castagnoli, RFC 4960 appendix B), as PP2_TYPE_CRC32C carries it."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFFFFFF
