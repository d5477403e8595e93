"""Identity rules on the verified peer certificate: ``allowCN``, ``allowOU``, ``allowDNS``,
``allowURI`` and ``allowSPKI`` (ghostunnel's ``--allow-*`` flags, in stunnel's spelling).

Theory of operation
-------------------
The rules only ever look at a certificate OpenSSL has already verified (``verifyChain``
or ``verifyPeer`` is required, checked when the configuration is built), so they answer
*who* the peer is, not *whether* its certificate is genuine.  Any rule that matches
admits the peer (an OR across every ``allow*`` line of the service); when none matches,
or the peer presented no certificate at all (server mode with ``requireCert = no``), the
peer is refused and ``PeerACL.refusal`` says why in one sentence.

What each rule compares, exactly:

* ``allowCN`` / ``allowOU``: a commonName / organizationalUnitName attribute of the
  subject, as the whole string, case-sensitively (every one of them counts when the
  subject has several).
* ``allowDNS``: a dNSName subjectAltName, ignoring letter case and one trailing dot.
  The comparison is literal: a wildcard SAN ``*.example.com`` in a certificate matches
  only a rule written ``allowDNS = *.example.com``.
* ``allowURI``: a uniformResourceIdentifier subjectAltName (SPIFFE IDs are these),
  case-sensitively.  In the rule ``*`` matches one or more characters other than
  ``/`` (so within one path segment) and ``**`` matches one or more characters of any
  kind, ``/`` included; every other character matches itself.  ``spiffe://example.org/*``
  admits ``spiffe://example.org/web`` but not ``spiffe://example.org/ns/web`` nor
  ``spiffe://example.org/``; ``spiffe://example.org/**`` admits both of the first two.
* ``allowSPKI``: the SHA-256 of the certificate's DER SubjectPublicKeyInfo (the public
  key with its algorithm: what ``openssl x509 -pubkey -noout | openssl pkey -pubin
  -outform der | openssl dgst -sha256`` hashes, and what HPKP and curl's
  ``--pinnedpubkey sha256//`` pin), written ``sha256:`` followed by 64 hex digits
  (colons allowed) or by standard base64 (44 characters, or 43 without the ``=``).
  Pinning the key survives certificate renewal with the same key.

Everything is read with the standard library: the subject and SANs from
``SSLObject.getpeercert()``, the SubjectPublicKeyInfo by walking the first few DER
elements of the certificate (``subject_public_key_info``), so no rule needs the
optional ``cryptography`` package.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "PeerACL",
    "PeerCertificate",
    "compile_uri_pattern",
    "parse_spki_pin",
    "subject_public_key_info",
]

SPKI_PREFIX = "sha256:"
_SHA256_SIZE = 32


# --- reading the certificate ------------------------------------------------------------


def _element(data: bytes, offset: int) -> tuple[int, int, int]:
    """The DER element at ``offset``: (tag, offset of its contents, offset past its end)."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER element")
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("truncated DER element")
    return tag, start, end


def subject_public_key_info(certificate_der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of an X.509 certificate (RFC 5280, 4.1).

    Certificate = SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ... } ... }
    """
    tag, content, _ = _element(certificate_der, 0)
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    tag, offset, _ = _element(certificate_der, content)
    if tag != 0x30:
        raise ValueError("no tbsCertificate")
    tag, _, end = _element(certificate_der, offset)
    if tag == 0xA0:  # explicit version
        offset = end
    for _skipped in range(5):  # serialNumber, signature, issuer, validity, subject
        _, _, offset = _element(certificate_der, offset)
    tag, _, end = _element(certificate_der, offset)
    if tag != 0x30:
        raise ValueError("no SubjectPublicKeyInfo")
    return certificate_der[offset:end]


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The peer's (verified) leaf certificate, as the rules and the policy hook see it.

    ``subject`` holds (attribute, value) pairs in certificate order with Python's long
    attribute names (``commonName``, ``organizationalUnitName``...); ``alt_names``
    holds subjectAltName (type, value) pairs: ``DNS``, ``URI``, ``IP Address``,
    ``email``...  ``der`` is the whole certificate, for anything else (parse it with
    ``cryptography.x509.load_der_x509_certificate``).
    """

    der: bytes
    subject: tuple[tuple[str, str], ...]
    alt_names: tuple[tuple[str, str], ...]

    @classmethod
    def from_peer(cls, der: bytes, decoded: Mapping[str, object]) -> PeerCertificate:
        """Build it from ``getpeercert(binary_form=True)`` and ``getpeercert()``."""
        subject: list[tuple[str, str]] = []
        rdns = decoded.get("subject", ())
        for rdn in rdns if isinstance(rdns, tuple) else ():
            for pair in rdn:
                subject.append((str(pair[0]), str(pair[1])))
        sans = decoded.get("subjectAltName", ())
        alt_names = tuple((str(k), str(v)) for k, v in (sans if isinstance(sans, tuple) else ()))
        return cls(der, tuple(subject), alt_names)

    @classmethod
    def of(cls, sslobj: ssl.SSLObject | ssl.SSLSocket) -> PeerCertificate | None:
        """The peer's certificate after the handshake, or None when it sent none (or
        it was not verified: Python then decodes nothing, and neither do we)."""
        der = sslobj.getpeercert(binary_form=True)
        decoded = sslobj.getpeercert()
        if der is None or not decoded:
            return None
        return cls.from_peer(der, decoded)

    def _values(self, pairs: Iterable[tuple[str, str]], kind: str) -> tuple[str, ...]:
        return tuple(value for key, value in pairs if key == kind)

    @property
    def common_names(self) -> tuple[str, ...]:
        return self._values(self.subject, "commonName")

    @property
    def organizational_units(self) -> tuple[str, ...]:
        return self._values(self.subject, "organizationalUnitName")

    @property
    def dns_names(self) -> tuple[str, ...]:
        return self._values(self.alt_names, "DNS")

    @property
    def uris(self) -> tuple[str, ...]:
        return self._values(self.alt_names, "URI")

    @property
    def spki_sha256(self) -> bytes:
        """SHA-256 of the DER SubjectPublicKeyInfo (what ``allowSPKI`` pins)."""
        return hashlib.sha256(subject_public_key_info(self.der)).digest()


# --- parsing rule values ------------------------------------------------------------------


def parse_spki_pin(text: str) -> bytes:
    """``sha256:`` + hex or base64 of a SHA-256 digest -> the 32 bytes; ValueError if not."""
    value = text.strip()
    if not value.lower().startswith(SPKI_PREFIX):
        raise ValueError(
            f"{text!r}: write sha256: followed by the hex or base64 SHA-256 of the "
            "DER SubjectPublicKeyInfo"
        )
    digest_text = value[len(SPKI_PREFIX) :].strip()
    hex_text = digest_text.replace(":", "")
    if len(hex_text) == 2 * _SHA256_SIZE and re.fullmatch(r"[0-9A-Fa-f]+", hex_text):
        return bytes.fromhex(hex_text)
    padded = digest_text + "=" * (-len(digest_text) % 4)
    try:
        digest = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != _SHA256_SIZE:
        raise ValueError(
            f"{text!r}: after sha256: comes a SHA-256 digest: 64 hex digits or 44 base64 characters"
        )
    return digest


_URI_TOKEN = re.compile(r"\*\*|\*|[^*]+")


def compile_uri_pattern(pattern: str) -> re.Pattern[str]:
    """An ``allowURI`` value as a regular expression matching whole URIs.

    ``*`` is one or more characters other than ``/``; ``**`` one or more of any; a run
    of three or more stars is refused (it has no clear meaning).
    """
    if not pattern or any(ch.isspace() for ch in pattern):
        raise ValueError(f"{pattern!r} is not a URI (no spaces, not empty)")
    if "***" in pattern:
        raise ValueError(f"{pattern!r}: write * (within one path segment) or ** (across /)")
    parts: list[str] = []
    for token in _URI_TOKEN.findall(pattern):
        if token == "**":
            parts.append(".+")
        elif token == "*":
            parts.append("[^/]+")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts), re.DOTALL)


def _dns_key(name: str) -> str:
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


# --- the rules together -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerACL:
    """A service's ``allow*`` rules; empty means no rule (every verified peer passes)."""

    common_names: frozenset[str] = frozenset()
    organizational_units: frozenset[str] = frozenset()
    dns_names: frozenset[str] = frozenset()  # lower case, no trailing dot
    uri_patterns: tuple[re.Pattern[str], ...] = ()
    spki_digests: frozenset[bytes] = frozenset()

    @classmethod
    def build(
        cls,
        *,
        common_names: Iterable[str] = (),
        organizational_units: Iterable[str] = (),
        dns_names: Iterable[str] = (),
        uris: Iterable[str] = (),
        spki_digests: Iterable[bytes] = (),
    ) -> PeerACL:
        """Compile the configured values; ValueError names a bad ``allowURI`` pattern."""
        return cls(
            frozenset(common_names),
            frozenset(organizational_units),
            frozenset(_dns_key(n) for n in dns_names),
            tuple(compile_uri_pattern(u) for u in uris),
            frozenset(spki_digests),
        )

    def __bool__(self) -> bool:
        return bool(
            self.common_names
            or self.organizational_units
            or self.dns_names
            or self.uri_patterns
            or self.spki_digests
        )

    def rule_names(self) -> list[str]:
        """The options this ACL was built from, for log lines."""
        kinds = (
            ("allowCN", self.common_names),
            ("allowOU", self.organizational_units),
            ("allowDNS", self.dns_names),
            ("allowURI", self.uri_patterns),
            ("allowSPKI", self.spki_digests),
        )
        return [name for name, rules in kinds if rules]

    def admits(self, peer: PeerCertificate) -> bool:
        """True when any rule matches ``peer``."""
        if self.common_names.intersection(peer.common_names):
            return True
        if self.organizational_units.intersection(peer.organizational_units):
            return True
        if self.dns_names and any(_dns_key(n) in self.dns_names for n in peer.dns_names):
            return True
        for uri in peer.uris if self.uri_patterns else ():
            if any(p.fullmatch(uri) for p in self.uri_patterns):
                return True
        if self.spki_digests:
            try:
                return peer.spki_sha256 in self.spki_digests
            except ValueError:
                return False  # OpenSSL accepted it, so this cannot happen; refuse anyway
        return False

    def refusal(self, peer: PeerCertificate | None) -> str | None:
        """None when ``peer`` is admitted (or there are no rules), else why not."""
        if not self:
            return None
        rules = ", ".join(self.rule_names())
        if peer is None:
            return f"no certificate, so no allow rule can match ({rules})"
        if self.admits(peer):
            return None
        return f"no allow rule matched ({rules})"
