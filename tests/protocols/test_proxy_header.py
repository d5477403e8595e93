"""PROXY header v1/v2: the specification's examples, every refusal, round trips, fuzzing."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlstunnel.protocols.proxy_header import (
    DEFAULT_MAX_V2_BODY,
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_SSL,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_SSL,
    TLV,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    Command,
    Family,
    ProxyHeader,
    ProxyHeaderError,
    SSLInfo,
    Transport,
    crc32c_of,
    encode_v1,
    encode_v2,
    header_for,
    parse,
)

# --- v1 -------------------------------------------------------------------------------------


def test_v1_example_from_the_specification() -> None:
    data = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n"
    parsed = parse(data)
    assert parsed is not None
    assert parsed.version == 1
    assert data[parsed.length :] == b"GET / HTTP/1.1\r\n"
    assert parsed.header.client_address == ("192.168.0.1", 56324)
    assert parsed.header.server_address == ("192.168.0.11", 443)


def test_v1_ipv6_is_canonicalised() -> None:
    parsed = parse(b"PROXY TCP6 2001:DB8:0:0::1 ::1 1 65535\r\n")
    assert parsed is not None
    assert parsed.header.client_address == ("2001:db8::1", 1)
    assert parsed.header.family is Family.INET6


@pytest.mark.parametrize(
    "line",
    [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n"],
)
def test_v1_unknown_keeps_no_address(line: bytes) -> None:
    parsed = parse(line + b"rest")
    assert parsed is not None
    assert parsed.length == len(line)
    assert parsed.header.client_address is None


def test_v1_longest_line_is_accepted() -> None:
    longest = b"PROXY UNKNOWN " + b"f" * 39 + b" " + b"f" * 39 + b" 65535 65535\r\n"
    assert len(longest) == V1_MAX_LENGTH
    assert parse(longest) is not None


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"PROXY UNKNOWN " + b"x" * 100, "longer than 107"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR not followed"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "4 fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "4 fields"),
        (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", "not an INET address"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", "not an INET address"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an INET6 address"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "not an INET6 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "leading zeros"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "out of range"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "not a port"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4"),
        (b"PROXY\r\n", "space after PROXY"),
        (b"PROXY \r\n", "not TCP4"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00\r\n", "printable"),
        (b"GET / HTTP/1.1\r\n", "the text 'GET / HTTP/1.1"),
        (b"\x16\x03\x01\x02\x00", "TLS handshake"),
        (b"proxy TCP4", "no PROXY header"),
    ],
)
def test_v1_refusals(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse(data)


@pytest.mark.parametrize("cut", range(0, 30))
def test_v1_partial_asks_for_more(cut: int) -> None:
    line = b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"
    assert parse(line[:cut]) is None


# --- v2 -------------------------------------------------------------------------------------


def _v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def test_v2_ipv4_layout_by_hand() -> None:
    body = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack("!HH", 50123, 443)
    parsed = parse(_v2(1, 0x11, body) + b"\x16rest")
    assert parsed is not None
    assert parsed.version == 2
    assert parsed.length == 16 + 12
    assert parsed.header.client_address == ("192.0.2.7", 50123)
    assert parsed.header.server_address == ("198.51.100.1", 443)


def test_v2_local_ignores_the_address_block() -> None:
    body = bytes(12) + bytes([PP2_TYPE_AUTHORITY, 0, 1]) + b"x"
    parsed = parse(_v2(0, 0x11, body))
    assert parsed is not None
    assert parsed.header.command is Command.LOCAL
    assert parsed.header.client_address is None
    assert parsed.header.authority == "x"


def test_v2_unspec_and_udp_and_unix_give_no_client() -> None:
    for family in (0x00, 0x12, 0x31):
        size = {0x00: 0, 0x12: 12, 0x31: 216}[family]
        parsed = parse(_v2(1, family, bytes(size)))
        assert parsed is not None
        assert parsed.header.client_address is None or family == 0x12


def test_v2_encoding_of_an_ssl_tlv_by_hand() -> None:
    """The layout section 2.2.6 gives: client byte, 32-bit verify, then sub-TLVs."""
    info = SSLInfo(PP2_CLIENT_SSL, 0, (TLV(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"),))
    tlv = info.to_tlv()
    assert tlv.type == PP2_TYPE_SSL
    assert tlv.value == b"\x01\x00\x00\x00\x00" + b"\x21\x00\x07TLSv1.3"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version 1"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "command 2"),
        (V2_SIGNATURE + b"\x21\x41\x00\x00", "family/transport byte 0x41"),
        (V2_SIGNATURE + b"\x21\x13\x00\x0c" + bytes(12), "family/transport byte 0x13"),
        (V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8), "8 address bytes"),
        (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "12 address bytes"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0e" + bytes(14), "stray byte"),
        (V2_SIGNATURE + b"\x21\x11\x00\x10" + bytes(12) + b"\x01\x00\x05x", "runs past"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "the limit is 4096"),
        (
            V2_SIGNATURE + b"\x21\x11\x00\x13" + bytes(12) + b"\x20\x00\x04" + bytes(4),
            "fewer than its 5-byte head",
        ),
        (
            V2_SIGNATURE
            + b"\x21\x11\x00\x17"
            + bytes(12)
            + b"\x20\x00\x08"
            + bytes(5)
            + b"\x21\x00\x09",
            "SSL sub-TLV",
        ),
        (V2_SIGNATURE + b"\x21\x11\x00\x13" + bytes(12) + b"\x03\x00\x04" + bytes(4), "CRC32C"),
    ],
)
def test_v2_refusals(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse(data)


def test_v2_limit_is_configurable() -> None:
    data = _v2(1, 0x11, bytes(12) + bytes([0x04, 0x10, 0x00]) + bytes(0x1000))
    with pytest.raises(ProxyHeaderError, match="limit"):
        parse(data)
    parsed = parse(data, max_v2_body=0xFFFF)
    assert parsed is not None
    assert parsed.length == len(data)


@pytest.mark.parametrize("cut", range(0, 28))
def test_v2_partial_asks_for_more(cut: int) -> None:
    data = encode_v2(header_for(("192.0.2.1", 1), ("192.0.2.2", 2)))
    assert len(data) == 28
    assert parse(data[:cut]) is None


def test_crc32c_known_value() -> None:
    # RFC 3720 B.4: 32 bytes of zeros → 0x8A9136AA.
    assert crc32c_of(bytes(32)) == 0x8A9136AA


def test_v2_crc32c_is_checked() -> None:
    data = encode_v2(header_for(("192.0.2.1", 1), ("192.0.2.2", 2)), crc32c=True)
    parsed = parse(data)
    assert parsed is not None
    assert parsed.header.tlv(PP2_TYPE_CRC32C) is not None
    broken = data[:16] + b"\x01" + data[17:]  # another source address
    with pytest.raises(ProxyHeaderError, match="CRC32C does not match"):
        parse(broken)


# --- building -----------------------------------------------------------------------------


def test_mixed_families_are_written_as_ipv6() -> None:
    header = header_for(("2001:db8::7", 5), ("192.0.2.1", 443))
    assert encode_v1(header) == b"PROXY TCP6 2001:db8::7 ::ffff:192.0.2.1 5 443\r\n"


def test_unix_socket_peer_is_unknown() -> None:
    header = header_for(None, ("127.0.0.1", 1))
    assert encode_v1(header) == b"PROXY UNKNOWN\r\n"
    assert encode_v2(header) == V2_SIGNATURE + b"\x21\x00\x00\x00"


def test_scope_id_is_dropped() -> None:
    assert encode_v1(header_for(("fe80::1%eth0", 1), ("fe80::2%eth0", 2))) == (
        b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"
    )


def test_ssl_tlv_accessors() -> None:
    info = SSLInfo(
        PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN,
        0,
        (
            TLV(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.2"),
            TLV(PP2_SUBTYPE_SSL_CN, b"client.example.com"),
            TLV(PP2_SUBTYPE_SSL_CIPHER, b"ECDHE-RSA-AES128-GCM-SHA256"),
        ),
    )
    tlvs = (TLV(PP2_TYPE_ALPN, b"h2"), TLV(PP2_TYPE_AUTHORITY, b"example.com"), info.to_tlv())
    parsed = parse(encode_v2(header_for(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs)))
    assert parsed is not None
    header = parsed.header
    assert header.alpn == b"h2"
    assert header.authority == "example.com"
    assert header.ssl == info
    assert (info.version, info.cn, info.cipher) == (
        "TLSv1.2",
        "client.example.com",
        "ECDHE-RSA-AES128-GCM-SHA256",
    )


def test_encoder_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="port"):
        encode_v1(header_for(("192.0.2.1", 70000), ("192.0.2.2", 2)))
    with pytest.raises(ValueError, match="cannot hold"):
        encode_v2(ProxyHeader(tlvs=(TLV(4, bytes(0xFFFF)),)))
    with pytest.raises(ValueError, match="needs both"):
        encode_v2(ProxyHeader(family=Family.INET, transport=Transport.STREAM))


# --- round trips (hypothesis) ---------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 0xFFFF)
tlv_values = st.binary(max_size=64)
plain_tlvs = st.builds(TLV, st.sampled_from([0x01, 0x02, 0x04, 0x05, 0x30, 0xE0]), tlv_values)
ssl_tlvs = st.builds(
    lambda client, verify, subs: SSLInfo(client, verify, tuple(subs)).to_tlv(),
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFFFFFF),
    st.lists(st.builds(TLV, st.integers(0x21, 0x25), tlv_values), max_size=4),
)
tlv_lists = st.lists(st.one_of(plain_tlvs, ssl_tlvs), max_size=5).map(tuple)


@st.composite
def inet_headers(draw: st.DrawFn) -> ProxyHeader:
    family = draw(st.sampled_from([Family.INET, Family.INET6]))
    addresses = ipv4 if family is Family.INET else ipv6
    return ProxyHeader(
        command=Command.PROXY,
        family=family,
        transport=Transport.STREAM,
        source=draw(addresses),
        destination=draw(addresses),
        source_port=draw(ports),
        destination_port=draw(ports),
    )


unix_paths = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)


@st.composite
def v2_headers(draw: st.DrawFn) -> ProxyHeader:
    kind = draw(st.sampled_from(["inet", "unix", "unspec", "local", "udp", "no-transport"]))
    tlvs = draw(tlv_lists)
    if kind == "inet":
        return replace(draw(inet_headers()), tlvs=tlvs)
    if kind == "udp":
        return replace(draw(inet_headers()), transport=Transport.DGRAM, tlvs=tlvs)
    if kind == "unix":
        return ProxyHeader(
            Command.PROXY,
            Family.UNIX,
            draw(st.sampled_from([Transport.STREAM, Transport.DGRAM])),
            draw(unix_paths),
            draw(unix_paths),
            tlvs=tlvs,
        )
    if kind == "no-transport":
        family = draw(st.sampled_from([Family.INET, Family.INET6, Family.UNIX]))
        return ProxyHeader(Command.PROXY, family, Transport.UNSPEC, tlvs=tlvs)
    command = Command.LOCAL if kind == "local" else Command.PROXY
    return ProxyHeader(command, tlvs=tlvs)


@given(st.one_of(inet_headers(), st.just(ProxyHeader())), st.binary(max_size=40))
def test_v1_round_trip(header: ProxyHeader, rest: bytes) -> None:
    data = encode_v1(header)
    assert len(data) <= V1_MAX_LENGTH
    parsed = parse(data + rest)
    assert parsed is not None
    assert parsed.header == header
    assert (data + rest)[parsed.length :] == rest


@given(v2_headers(), st.binary(max_size=40))
def test_v2_round_trip(header: ProxyHeader, rest: bytes) -> None:
    data = encode_v2(header)
    parsed = parse(data + rest, max_v2_body=0xFFFF)
    assert parsed is not None
    assert parsed.header == header
    assert parsed.version == 2
    assert (data + rest)[parsed.length :] == rest


@given(v2_headers())
def test_v2_round_trip_with_crc(header: ProxyHeader) -> None:
    parsed = parse(encode_v2(header, crc32c=True), max_v2_body=0xFFFF)
    assert parsed is not None
    assert parsed.header.tlvs[:-1] == header.tlvs
    assert parsed.header.tlvs[-1].type == PP2_TYPE_CRC32C


@given(st.ip_addresses(), ports, st.ip_addresses(), ports)
def test_header_for_always_encodes(
    source: ipaddress.IPv4Address | ipaddress.IPv6Address,
    source_port: int,
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address,
    destination_port: int,
) -> None:
    header = header_for((str(source), source_port), (str(destination), destination_port))
    for data in (encode_v1(header), encode_v2(header)):
        parsed = parse(data)
        assert parsed is not None
        assert parsed.header == header


# --- fuzzing --------------------------------------------------------------------------------


def _feed(chunks: list[bytes]) -> None:
    """Feed a growing buffer as a reader would; only ProxyHeaderError may escape, and the
    parser must have decided before the buffer outgrows the largest acceptable header."""
    received = b""
    for chunk in chunks:
        received += chunk
        try:
            parsed = parse(received)
        except ProxyHeaderError:
            return
        if parsed is not None:
            assert parsed.length <= len(received)
            return
        assert len(received) < 16 + DEFAULT_MAX_V2_BODY


@settings(max_examples=300)
@given(st.lists(st.binary(min_size=1, max_size=64), max_size=20))
def test_fuzz_arbitrary_bytes(chunks: list[bytes]) -> None:
    _feed(chunks)


@settings(max_examples=300)
@given(
    st.sampled_from([V2_SIGNATURE, b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN"]),
    st.lists(st.binary(min_size=1, max_size=64), max_size=20),
)
def test_fuzz_after_a_signature(prefix: bytes, chunks: list[bytes]) -> None:
    _feed([prefix, *chunks])


@settings(max_examples=300)
@given(v2_headers(), st.integers(0, 200), st.binary(min_size=1, max_size=3))
def test_fuzz_mutated_v2(header: ProxyHeader, position: int, junk: bytes) -> None:
    data = bytearray(encode_v2(header))
    index = position % len(data)
    data[index : index + len(junk)] = junk
    _feed([bytes(data)])
