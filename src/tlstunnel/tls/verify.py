"""Checks on the peer's certificate that run after OpenSSL has verified it.

This module owns stunnel's ``checkHost`` / ``checkIP`` / ``checkEmail`` matching and the
``verifyPeer`` pin set.  Everything here is a pure function of its arguments: no
sockets, no files.  ``context`` reads the trust files and calls in here.

Theory of operation
-------------------
OpenSSL verifies signatures, dates and the chain during the handshake.  What it cannot
do from Python (``ssl.match_hostname`` is gone since 3.12, and ``SSLContext`` has no
hook for ``X509_check_email`` or ``X509_check_ip``) happens here, on the dictionary
``SSLObject.getpeercert()`` returns once the handshake is over.  The rules follow
OpenSSL's ``X509_check_host`` / ``X509_check_ip`` / ``X509_check_email``, which is what
stunnel calls, and RFC 6125:

* Host names: dNSName subjectAltNames; the subject commonName counts only when the
  certificate has no dNSName at all.  Comparison is case-insensitive on A-labels
  (``bücher.example`` is matched as ``xn--bcher-kva.example``), one trailing dot is
  ignored.  A wildcard is honoured only as the whole left-most label (``*.example.com``),
  stands for exactly one non-empty label, and needs at least two labels after it
  (``*.com`` matches nothing).  Partial wildcards (``f*.example.com``) match nothing.
* IP addresses: iPAddress subjectAltNames only (never the commonName), compared as
  parsed addresses, so ``::1`` and ``0:0:0:0:0:0:0:1`` are equal.  An IPv4 address does
  not match its IPv4-mapped IPv6 form, as in OpenSSL.
* E-mail: rfc822Name subjectAltNames; the subject emailAddress counts only when the
  certificate has no rfc822Name.  The local part is compared exactly, the domain
  case-insensitively.

Each option is a category: when a category has values, at least one must match; every
non-empty category must pass.

``verifyPeer`` (pinning) means the peer's own certificate must be one of the
certificates in CAfile/CApath.  ``PinnedCertificates`` holds their DER encodings and
compares the peer's DER encoding byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The keys Python's ``getpeercert()`` uses for subjectAltName entries.
SAN_DNS = "DNS"
SAN_IP = "IP Address"
SAN_EMAIL = "email"


# --- host names -----------------------------------------------------------------------


def normalize_hostname(name: str) -> str:
    """Return ``name`` as lower-case A-labels without a trailing dot.

    Raises ``ValueError`` when the name cannot be a DNS name (empty labels, labels that
    IDNA refuses, spaces).
    """
    text = name.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise ValueError("empty host name")
    if text.isascii():
        ascii_name = text.lower()
        labels = ascii_name.split(".")
        if any(not label or len(label) > 63 for label in labels):
            raise ValueError(f"{name!r} is not a valid host name")
        if any(ch.isspace() for ch in ascii_name):
            raise ValueError(f"{name!r} is not a valid host name")
        return ascii_name
    try:
        return text.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValueError(f"{name!r} is not a valid host name: {exc}") from None


def _is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def hostname_matches(pattern: str, hostname: str) -> bool:
    """True when the certificate name ``pattern`` covers ``hostname``.

    ``hostname`` must already be normalized (``normalize_hostname``).  ``pattern`` is
    taken from the certificate: it must be plain ASCII, anything else never matches.
    """
    if not pattern.isascii():
        return False
    candidate = pattern.lower()
    if candidate.endswith("."):
        candidate = candidate[:-1]
    if "*" not in candidate:
        return candidate == hostname
    # A wildcard counts only as the entire left-most label.
    if not candidate.startswith("*.") or "*" in candidate[2:]:
        return False
    suffix = candidate[2:]
    if suffix.count(".") < 1 or "" in suffix.split("."):
        return False
    if _is_ip_literal(hostname):
        return False
    first, dot, rest = hostname.partition(".")
    return bool(first) and bool(dot) and rest == suffix


def _subject_values(cert: Mapping[str, object], key: str) -> list[str]:
    """Every value of attribute ``key`` (e.g. ``commonName``) in the subject."""
    subject = cert.get("subject", ())
    found: list[str] = []
    if not isinstance(subject, tuple):
        return found
    for rdn in subject:
        if not isinstance(rdn, tuple):
            continue
        for pair in rdn:
            if (
                isinstance(pair, tuple)
                and len(pair) == 2
                and pair[0] == key
                and isinstance(pair[1], str)
            ):
                found.append(pair[1])
    return found


def _san_values(cert: Mapping[str, object], kind: str) -> list[str]:
    """Every subjectAltName value of type ``kind`` (``DNS``, ``IP Address``, ``email``)."""
    sans = cert.get("subjectAltName", ())
    found: list[str] = []
    if not isinstance(sans, tuple):
        return found
    for entry in sans:
        if (
            isinstance(entry, tuple)
            and len(entry) == 2
            and entry[0] == kind
            and isinstance(entry[1], str)
        ):
            found.append(entry[1])
    return found


def certificate_dns_names(cert: Mapping[str, object]) -> list[str]:
    """The names host checks use: dNSName SANs, or the commonName(s) when there are none."""
    names = _san_values(cert, SAN_DNS)
    return names if names else _subject_values(cert, "commonName")


def certificate_matches_host(cert: Mapping[str, object], hostname: str) -> bool:
    """RFC 6125 host check of ``cert`` (a ``getpeercert()`` dict) against ``hostname``."""
    try:
        wanted = normalize_hostname(hostname)
    except ValueError:
        return False
    return any(hostname_matches(name, wanted) for name in certificate_dns_names(cert))


# --- IP addresses ---------------------------------------------------------------------


def parse_ip(text: str) -> IPAddress:
    """Parse an IPv4 or IPv6 address; brackets and an IPv6 zone (``%eth0``) are dropped."""
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    value = value.partition("%")[0]
    return ipaddress.ip_address(value)


def certificate_ip_addresses(cert: Mapping[str, object]) -> list[IPAddress]:
    """The iPAddress SANs of ``cert``, parsed (entries Python could not format are skipped)."""
    found: list[IPAddress] = []
    for text in _san_values(cert, SAN_IP):
        try:
            found.append(parse_ip(text))
        except ValueError:
            continue
    return found


def certificate_matches_ip(cert: Mapping[str, object], address: IPAddress) -> bool:
    """True when one of the certificate's iPAddress SANs is ``address``."""
    return address in certificate_ip_addresses(cert)


# --- e-mail addresses -----------------------------------------------------------------


def split_email(address: str) -> tuple[str, str]:
    """Split ``local@domain``; the domain is normalized like a host name.

    Raises ``ValueError`` when there is no ``@``, or either side is empty or invalid.
    """
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"{address!r} is not an e-mail address")
    return local, normalize_hostname(domain)


def certificate_emails(cert: Mapping[str, object]) -> list[str]:
    """rfc822Name SANs, or the subject emailAddress(es) when there are none."""
    emails = _san_values(cert, SAN_EMAIL)
    return emails if emails else _subject_values(cert, "emailAddress")


def certificate_matches_email(cert: Mapping[str, object], address: str) -> bool:
    """True when the certificate names ``address`` (local part exact, domain any case)."""
    try:
        wanted = split_email(address)
    except ValueError:
        return False
    for presented in certificate_emails(cert):
        try:
            if split_email(presented) == wanted:
                return True
        except ValueError:
            continue
    return False


# --- the three checks together ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubjectChecks:
    """stunnel's checkHost / checkIP / checkEmail for one service, validated.

    Build it with ``SubjectChecks.parse``; ``refusal`` says why a certificate fails.
    """

    hosts: tuple[str, ...] = ()  # normalized A-labels
    ips: tuple[IPAddress, ...] = ()
    emails: tuple[str, ...] = ()  # as written

    @classmethod
    def parse(
        cls, hosts: Iterable[str], ips: Iterable[str], emails: Iterable[str]
    ) -> SubjectChecks:
        """Validate the configured values; ``ValueError`` names the first bad one."""
        parsed_hosts: list[str] = []
        for host in hosts:
            try:
                parsed_hosts.append(normalize_hostname(host))
            except ValueError as exc:
                raise ValueError(f"checkHost = {host}: {exc}") from None
        parsed_ips: list[IPAddress] = []
        for ip in ips:
            try:
                parsed_ips.append(parse_ip(ip))
            except ValueError:
                raise ValueError(f"checkIP = {ip}: not an IPv4 or IPv6 address") from None
        checked_emails: list[str] = []
        for email in emails:
            try:
                split_email(email)
            except ValueError as exc:
                raise ValueError(f"checkEmail = {email}: {exc}") from None
            checked_emails.append(email.strip())
        return cls(tuple(parsed_hosts), tuple(parsed_ips), tuple(checked_emails))

    def __bool__(self) -> bool:
        return bool(self.hosts or self.ips or self.emails)

    def refusal(self, cert: Mapping[str, object]) -> str | None:
        """None when ``cert`` passes every configured category, else the reason it fails."""
        if self.hosts and not any(certificate_matches_host(cert, h) for h in self.hosts):
            names = ", ".join(certificate_dns_names(cert)) or "none"
            return (
                f"the peer's certificate does not match checkHost "
                f"(expected {' or '.join(self.hosts)}; the certificate names {names})"
            )
        if self.ips and not any(certificate_matches_ip(cert, ip) for ip in self.ips):
            found = ", ".join(str(ip) for ip in certificate_ip_addresses(cert)) or "none"
            return (
                f"the peer's certificate does not match checkIP "
                f"(expected {' or '.join(str(ip) for ip in self.ips)}; "
                f"the certificate has {found})"
            )
        if self.emails and not any(certificate_matches_email(cert, e) for e in self.emails):
            found = ", ".join(certificate_emails(cert)) or "none"
            return (
                f"the peer's certificate does not match checkEmail "
                f"(expected {' or '.join(self.emails)}; the certificate has {found})"
            )
        return None


# --- pinning (verifyPeer) ---------------------------------------------------------------

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN (?P<label>(?:X509 |TRUSTED )?CERTIFICATE)-----"
    rb"(?P<body>.*?)"
    rb"-----END (?P=label)-----",
    re.DOTALL,
)


def _first_der_element(data: bytes) -> bytes | None:
    """The first complete DER TLV in ``data`` (a certificate is one SEQUENCE)."""
    if len(data) < 2 or data[0] != 0x30:
        return None
    length = data[1]
    offset = 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            return None
        length = int.from_bytes(data[2 : 2 + count], "big")
        offset = 2 + count
    end = offset + length
    if end > len(data):
        return None
    return data[:end]


def pem_certificates(data: bytes) -> list[bytes]:
    """DER encodings of every certificate in PEM text ``data``; malformed blocks are skipped.

    ``TRUSTED CERTIFICATE`` blocks (OpenSSL's certificate plus trust settings) yield the
    certificate part alone.
    """
    found: list[bytes] = []
    for match in _PEM_CERTIFICATE.finditer(data):
        try:
            decoded = base64.b64decode(b"".join(match.group("body").split()), validate=True)
        except (binascii.Error, ValueError):
            continue
        der = _first_der_element(decoded)
        if der is not None:
            found.append(der)
    return found


@dataclass(frozen=True, slots=True)
class PinnedCertificates:
    """The certificates a ``verifyPeer`` service accepts, as DER encodings."""

    der: frozenset[bytes]

    def __len__(self) -> int:
        return len(self.der)

    def __contains__(self, peer_der: object) -> bool:
        return peer_der in self.der

    def refusal(self, peer_der: bytes | None) -> str | None:
        """None when ``peer_der`` is pinned, else the reason the peer is refused."""
        if peer_der is None:
            return "the peer did not present a certificate"
        if peer_der in self.der:
            return None
        return "the peer's certificate is not one of the certificates in CAfile/CApath (verifyPeer)"
