"""The pure matchers in ``tlstunnel.tls.verify``, on ``getpeercert()``-shaped dicts."""

from __future__ import annotations

import base64
import ipaddress
import ssl
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlstunnel.tls.verify import (
    PinnedCertificates,
    SubjectChecks,
    certificate_matches_email,
    certificate_matches_host,
    certificate_matches_ip,
    hostname_matches,
    normalize_hostname,
    pem_certificates,
)

from .conftest import PKI

Cert = dict[str, object]


def cert(*sans: tuple[str, str], cn: str | None = None, email: str | None = None) -> Cert:
    """A dict shaped like ``SSLObject.getpeercert()``."""
    subject: list[tuple[tuple[str, str], ...]] = [(("organizationName", "Test"),)]
    if cn is not None:
        subject.append((("commonName", cn),))
    if email is not None:
        subject.append((("emailAddress", email),))
    result: Cert = {"subject": tuple(subject)}
    if sans:
        result["subjectAltName"] = tuple(sans)
    return result


@pytest.mark.parametrize(
    ("pattern", "hostname", "expected"),
    [
        ("example.com", "example.com", True),
        ("Example.COM", "example.com", True),
        ("example.com.", "example.com", True),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.com", "example.com", False),
        ("f*.example.com", "foo.example.com", False),
        ("*oo.example.com", "foo.example.com", False),
        ("a.*.example.com", "a.b.example.com", False),
        ("*.*.example.com", "a.b.example.com", False),
        ("*", "localhost", False),
        ("*.xn--bcher-kva.example", "a.xn--bcher-kva.example", True),
        ("bücher.example", "xn--bcher-kva.example", False),  # names in certificates are ASCII
        ("*.2.3.4", "1.2.3.4", False),  # wildcards never cover an IP address
    ],
)
def test_hostname_matches(pattern: str, hostname: str, expected: bool) -> None:
    assert hostname_matches(pattern, hostname) is expected


def test_normalize_hostname() -> None:
    assert normalize_hostname("Bücher.Example.") == "xn--bcher-kva.example"
    assert normalize_hostname("WWW.Example.com") == "www.example.com"
    for bad in ("", ".", "a..b", "a b.example", "x" * 64 + ".example"):
        with pytest.raises(ValueError):
            normalize_hostname(bad)


def test_unicode_host_matches_its_a_label() -> None:
    assert certificate_matches_host(cert(("DNS", "xn--bcher-kva.example")), "bücher.example")


def test_common_name_counts_only_without_dns_names() -> None:
    assert certificate_matches_host(cert(cn="legacy.example"), "legacy.example")
    assert certificate_matches_host(
        cert(("IP Address", "10.0.0.1"), cn="legacy.example"), "legacy.example"
    )
    with_san = cert(("DNS", "new.example"), cn="legacy.example")
    assert certificate_matches_host(with_san, "new.example")
    assert not certificate_matches_host(with_san, "legacy.example")


def test_ip_addresses_compare_as_addresses() -> None:
    c = cert(("IP Address", "0:0:0:0:0:0:0:1"), ("IP Address", "192.0.2.7"), cn="192.0.2.8")
    assert certificate_matches_ip(c, ipaddress.ip_address("::1"))
    assert certificate_matches_ip(c, ipaddress.ip_address("192.0.2.7"))
    assert not certificate_matches_ip(c, ipaddress.ip_address("192.0.2.8"))  # never the CN
    assert not certificate_matches_ip(c, ipaddress.ip_address("::ffff:192.0.2.7"))
    assert not certificate_matches_host(c, "192.0.2.7")  # IP SANs are not DNS names


def test_email_local_part_exact_domain_any_case() -> None:
    c = cert(("email", "Alice@Example.COM"))
    assert certificate_matches_email(c, "Alice@example.com")
    assert not certificate_matches_email(c, "alice@example.com")
    assert not certificate_matches_email(c, "Alice@example.org")


def test_email_subject_counts_only_without_rfc822_names() -> None:
    assert certificate_matches_email(cert(email="bob@example.com"), "bob@example.com")
    with_san = cert(("email", "carol@example.com"), email="bob@example.com")
    assert not certificate_matches_email(with_san, "bob@example.com")


def test_subject_checks_need_every_configured_category() -> None:
    c = cert(("DNS", "a.example.com"), ("IP Address", "192.0.2.1"), ("email", "x@example.com"))
    assert not SubjectChecks()
    assert SubjectChecks().refusal(c) is None
    assert SubjectChecks.parse(["b.example.com", "a.example.com"], [], []).refusal(c) is None
    both = SubjectChecks.parse(["a.example.com"], ["192.0.2.2"], [])
    reason = both.refusal(c)
    assert reason is not None and "checkIP" in reason and "192.0.2.1" in reason
    assert SubjectChecks.parse([], [], ["x@example.com"]).refusal(c) is None
    email_reason = SubjectChecks.parse([], [], ["y@example.com"]).refusal(c)
    assert email_reason is not None and "checkEmail" in email_reason


def test_subject_check_values_are_validated() -> None:
    checks = SubjectChecks.parse(["Bücher.example"], ["[::1]", "fe80::1%eth0"], [" a@b.c "])
    assert checks.hosts == ("xn--bcher-kva.example",)
    assert checks.ips == (ipaddress.ip_address("::1"), ipaddress.ip_address("fe80::1"))
    assert checks.emails == ("a@b.c",)
    with pytest.raises(ValueError, match="checkIP"):
        SubjectChecks.parse([], ["300.1.1.1"], [])


def test_odd_alt_name_entries_are_ignored() -> None:
    c: Cert = {
        "subject": ((("commonName", "x.example"),),),
        "subjectAltName": (("DirName", ((("commonName", "y"),),)), ("othername", "<unsupported>")),
    }
    assert certificate_matches_host(c, "x.example")  # no DNS SAN: the CN counts


# Labels start with a letter: all-digit names could be IP addresses, which wildcards never cover.
labels = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(st.lists(labels, min_size=2, max_size=5))
def test_a_name_matches_itself_and_its_wildcard(parts: list[str]) -> None:
    name = ".".join(parts)
    assert hostname_matches(name, normalize_hostname(name))
    wildcard = "*." + ".".join(parts[1:])
    assert hostname_matches(wildcard, name) is (len(parts) >= 3)


@given(st.lists(labels, min_size=3, max_size=6), st.integers(min_value=1, max_value=3))
def test_a_wildcard_covers_exactly_one_label(parts: list[str], extra: int) -> None:
    suffix = ".".join(parts[1:])
    deeper = ".".join(["x"] * (extra + 1)) + "." + suffix
    assert not hostname_matches("*." + suffix, deeper)


# --- PEM and pinning ------------------------------------------------------------------------


def test_pem_certificates_reads_every_block(pki: PKI) -> None:
    data = pki.ca.read_bytes() + b"\njunk\n" + pki.server.read_bytes()
    ders = pem_certificates(data)
    assert len(ders) == 2
    assert ders[0] == ssl.PEM_cert_to_DER_cert(pki.ca.read_text())


def test_pem_certificates_skips_damaged_blocks() -> None:
    bad = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"
    not_der = (
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.b64encode(b"hello")
        + b"\n-----END CERTIFICATE-----\n"
    )
    assert pem_certificates(bad + not_der) == []


def test_trusted_certificate_blocks_yield_the_certificate(pki: PKI) -> None:
    der = ssl.PEM_cert_to_DER_cert(pki.ca.read_text())
    aux = bytes([0x30, 0x03, 0x0C, 0x01, 0x41])  # trust settings follow the certificate
    body = base64.encodebytes(der + aux)
    block = b"-----BEGIN TRUSTED CERTIFICATE-----\n" + body + b"-----END TRUSTED CERTIFICATE-----\n"
    assert pem_certificates(block) == [der]


def test_pinned_certificates(pki: PKI, tmp_path: Path) -> None:
    der = ssl.PEM_cert_to_DER_cert(pki.self_signed_cert.read_text())
    pins = PinnedCertificates(frozenset([der]))
    assert der in pins and len(pins) == 1
    assert pins.refusal(der) is None
    assert pins.refusal(None) == "the peer did not present a certificate"
    assert pins.refusal(b"other") is not None
