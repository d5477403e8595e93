"""A tiny, strict BER reader and writer: just what LDAP's StartTLS exchange needs.

LDAP messages are BER (X.690) with the restrictions of RFC 4511 section 5.1: only the
definite form of length, so every element is ``identifier, length, contents`` and its
size is known as soon as its header has arrived.  That is the whole theory of this
module:

* ``frame_size(buffer, limit)`` looks only at the header of the first element and
  says how many bytes the whole element takes, None while the header is incomplete.
  It refuses (``NegotiationError``) anything a peer could use to make us buffer or
  loop without bound: the indefinite form (``0x80``), the reserved length ``0xFF``,
  lengths of more than four octets, high-tag-number identifiers (LDAP never needs
  them) and any element larger than ``limit``.  A caller therefore buffers at most
  ``limit`` bytes before it either has a whole element or has given up.
* ``parse(data)`` turns bytes that hold exactly one element into an ``Element``
  (identifier octet + contents); ``children(element)`` splits a constructed element's
  contents into its elements.  Both check that every length stays inside its parent.
* ``integer(element)`` reads INTEGER and ENUMERATED contents (two's complement, at most
  eight octets), ``encode(tag, contents)`` writes one element with minimal length octets.

It knows nothing about LDAP: the tag numbers live with the LDAP negotiator.
"""

from __future__ import annotations

from dataclasses import dataclass

from tlstunnel.protocols.base import NegotiationError

# Identifier octet: two class bits, the "constructed" bit, five tag-number bits.
CONSTRUCTED = 0x20
_HIGH_TAG_NUMBER = 0x1F  # tag numbers >= 31 follow in more octets: never used by LDAP
_INDEFINITE = 0x80
_RESERVED_LENGTH = 0xFF
_MAX_LENGTH_OCTETS = 4  # 4 GiB: far beyond any limit a caller passes

# Universal tags LDAP uses.
INTEGER = 0x02
OCTET_STRING = 0x04
ENUMERATED = 0x0A
SEQUENCE = 0x30  # universal 16, constructed


class BERError(NegotiationError):
    """The peer sent something that is not (restricted) BER."""


@dataclass(frozen=True, slots=True)
class Element:
    """One element: its identifier octet and its contents octets."""

    tag: int
    contents: bytes

    @property
    def constructed(self) -> bool:
        return bool(self.tag & CONSTRUCTED)


def _header(data: bytes | bytearray, offset: int, end: int) -> tuple[int, int, int] | None:
    """``(tag, header_size, contents_length)`` of the element at ``offset``, or None
    when ``data[offset:end]`` does not hold the whole header yet."""
    if end - offset < 2:
        return None
    tag = data[offset]
    if tag & _HIGH_TAG_NUMBER == _HIGH_TAG_NUMBER:
        raise BERError(f"a multi-octet tag (identifier 0x{tag:02x}), which LDAP never uses")
    first = data[offset + 1]
    if first < _INDEFINITE:
        return tag, 2, first
    if first == _INDEFINITE:
        raise BERError("an indefinite length, which LDAP forbids")
    if first == _RESERVED_LENGTH:
        raise BERError("the reserved length octet 0xff")
    count = first & 0x7F
    if count > _MAX_LENGTH_OCTETS:
        raise BERError(f"a length of {count} octets")
    if end - offset < 2 + count:
        return None
    length = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
    return tag, 2 + count, length


def frame_size(data: bytes | bytearray, limit: int) -> int | None:
    """Size of the first element in ``data`` (header included) once its header is
    complete, else None.  Raises ``BERError`` if it is malformed or over ``limit``."""
    header = _header(data, 0, len(data))
    if header is None:
        return None
    _tag, header_size, length = header
    size = header_size + length
    if size > limit:
        raise BERError(f"a message of {size} bytes (the limit is {limit})")
    return size


def parse(data: bytes) -> Element:
    """The one element that ``data`` holds, exactly."""
    elements = _split(data)
    if len(elements) != 1:
        raise BERError(f"{len(elements)} elements where one was expected")
    return elements[0]


def children(element: Element) -> list[Element]:
    """The elements inside a constructed element, in order."""
    if not element.constructed:
        raise BERError(f"a primitive element (0x{element.tag:02x}) where a constructed one belongs")
    return _split(element.contents)


def _split(data: bytes) -> list[Element]:
    found: list[Element] = []
    offset = 0
    while offset < len(data):
        header = _header(data, offset, len(data))
        if header is None:
            raise BERError("an element cut short inside its parent")
        tag, header_size, length = header
        start = offset + header_size
        if start + length > len(data):
            raise BERError("an element longer than its parent")
        found.append(Element(tag, data[start : start + length]))
        offset = start + length
    return found


def integer(element: Element) -> int:
    """The value of an INTEGER or ENUMERATED element (any tag: LDAP tags them)."""
    contents = element.contents
    if not 1 <= len(contents) <= 8:
        raise BERError(f"an integer of {len(contents)} octets")
    return int.from_bytes(contents, "big", signed=True)


def encode(tag: int, contents: bytes) -> bytes:
    """One element with the shortest length encoding."""
    length = len(contents)
    if length < _INDEFINITE:
        return bytes((tag, length)) + contents
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, _INDEFINITE | len(octets))) + octets + contents
