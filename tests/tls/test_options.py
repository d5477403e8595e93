"""``options =`` lines: the OpenSSL 3.0 table, and what each kind of name does."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest

from tlstunnel.tls import TLSSetupError, build_service_tls
from tlstunnel.tls.options import (
    OPENSSL3_ONLY_OPTIONS,
    OPENSSL_OPTIONS,
    option_value,
    resolve_options,
    supported_option_names,
)

from .conftest import PKI, ServiceFactory
from .helpers import handshake

SSL_H = Path("/usr/include/openssl/ssl.h")

# What ``stunnel -options`` prints (stunnel 5.68 built with OpenSSL 3.0), in its order.
STUNNEL_OUTPUT = """
ALL ALLOW_CLIENT_RENEGOTIATION ALLOW_NO_DHE_KEX ALLOW_UNSAFE_LEGACY_RENEGOTIATION
CIPHER_SERVER_PREFERENCE CISCO_ANYCONNECT CLEANSE_PLAINTEXT COOKIE_EXCHANGE
CRYPTOPRO_TLSEXT_BUG DISABLE_TLSEXT_CA_NAMES DONT_INSERT_EMPTY_FRAGMENTS ENABLE_KTLS
ENABLE_MIDDLEBOX_COMPAT EPHEMERAL_RSA IGNORE_UNEXPECTED_EOF LEGACY_SERVER_CONNECT
MICROSOFT_BIG_SSLV3_BUFFER MICROSOFT_SESS_ID_BUG MSIE_SSLV2_RSA_PADDING NETSCAPE_CA_DN_BUG
NETSCAPE_CHALLENGE_BUG NETSCAPE_DEMO_CIPHER_CHANGE_BUG NETSCAPE_REUSE_CIPHER_CHANGE_BUG
NO_ANTI_REPLAY NO_COMPRESSION NO_DTLS_MASK NO_DTLSv1 NO_DTLSv1_2 NO_ENCRYPT_THEN_MAC
NO_EXTENDED_MASTER_SECRET NO_QUERY_MTU NO_RENEGOTIATION NO_SESSION_RESUMPTION_ON_RENEGOTIATION
NO_SSL_MASK NO_SSLv2 NO_SSLv3 NO_TICKET NO_TLSv1 NO_TLSv1_1 NO_TLSv1_2 NO_TLSv1_3
PKCS1_CHECK_1 PKCS1_CHECK_2 PRIORITIZE_CHACHA SAFARI_ECDHE_ECDSA_BUG SINGLE_DH_USE
SINGLE_ECDH_USE SSLEAY_080_CLIENT_DH_BUG SSLREF2_REUSE_CERT_TYPE_BUG TLS_BLOCK_PADDING_BUG
TLS_D5_BUG TLSEXT_PADDING TLS_ROLLBACK_BUG
"""
STUNNEL_NAMES = STUNNEL_OUTPUT.split()


def test_table_has_every_name_stunnel_knows_in_its_order() -> None:
    assert supported_option_names() == STUNNEL_NAMES
    assert set(OPENSSL_OPTIONS) == set(STUNNEL_NAMES)


def test_table_agrees_with_python_where_python_exports_a_name() -> None:
    for name, value in OPENSSL_OPTIONS.items():
        exported = getattr(ssl, f"OP_{name}", None)
        if exported is not None:
            assert int(exported) == value, name


@pytest.mark.skipif(not SSL_H.exists(), reason="OpenSSL headers not installed")
def test_table_agrees_with_openssl_header() -> None:
    text = SSL_H.read_text()
    for name, value in OPENSSL3_ONLY_OPTIONS.items():
        if name.endswith("_MASK"):
            continue
        match = re.search(rf"#\s*define\s+SSL_OP_{name}\s+(SSL_OP_BIT\((\d+)\)|0x0)\s", text)
        assert match, name
        expected = 0 if match.group(1) == "0x0" else 1 << int(match.group(2))
        assert value == expected, name


def test_names_are_case_insensitive_and_may_carry_the_prefix() -> None:
    assert option_value("no_ticket") == option_value("SSL_OP_NO_TICKET") == int(ssl.OP_NO_TICKET)
    with pytest.raises(KeyError):
        option_value("NO_SUCH_OPTION")


def test_set_bits_reach_the_context(pki: PKI, service: ServiceFactory) -> None:
    tls = build_service_tls(
        service(
            cert=pki.server,
            options_set=("NO_TICKET", "LEGACY_SERVER_CONNECT", "PRIORITIZE_CHACHA", "ALL"),
        )
    )
    options = int(tls.context.options)
    for name in ("NO_TICKET", "LEGACY_SERVER_CONNECT", "PRIORITIZE_CHACHA", "ALL"):
        assert options & OPENSSL_OPTIONS[name] == OPENSSL_OPTIONS[name], name
    assert options & int(ssl.OP_NO_COMPRESSION)


def test_clear_removes_a_default(pki: PKI, service: ServiceFactory) -> None:
    default = build_service_tls(service(cert=pki.server))
    assert default.context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    cleared = build_service_tls(
        service(cert=pki.server, options_clear=("CIPHER_SERVER_PREFERENCE",))
    )
    assert not cleared.context.options & ssl.OP_CIPHER_SERVER_PREFERENCE


def test_clear_wins_over_set() -> None:
    changes = resolve_options(("NO_TICKET", "NO_TLSv1_3"), ("NO_TICKET", "NO_TLSv1_3"))
    assert not changes.set_bits & int(ssl.OP_NO_TICKET)
    assert changes.clear_bits & int(ssl.OP_NO_TICKET)
    assert not changes.disabled_versions


@pytest.mark.parametrize("name", ["SINGLE_DH_USE", "SINGLE_ECDH_USE", "NO_SSLv2", "TLS_D5_BUG"])
def test_obsolete_names_change_nothing(pki: PKI, service: ServiceFactory, name: str) -> None:
    default = build_service_tls(service(cert=pki.server))
    tls = build_service_tls(service(cert=pki.server, options_set=(name,)))
    assert tls.context.options == default.context.options


def test_no_tlsv1_3_lowers_the_maximum_version(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.server, options_set=("NO_TLSv1_3",)))
    assert server.context.maximum_version == ssl.TLSVersion.TLSv1_2
    assert not server.context.options & ssl.OP_NO_TLSv1_3  # no deprecated flag
    outcome = handshake(server, build_service_tls(service(client=True)))
    assert outcome.ok and outcome.client.version() == "TLSv1.2"


def test_no_tlsv1_2_raises_the_minimum_version(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.server, options_set=("NO_TLSv1_2",)))
    assert server.context.minimum_version == ssl.TLSVersion.TLSv1_3
    client = build_service_tls(service(client=True, max_version=ssl.TLSVersion.TLSv1_2))
    assert not handshake(server, client).ok


def test_no_version_alias_of_dtls_acts_on_tls(pki: PKI, service: ServiceFactory) -> None:
    tls = build_service_tls(
        service(cert=pki.server, min_version=ssl.TLSVersion.TLSv1, options_set=("NO_DTLSv1",))
    )
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_1


def test_gap_between_versions_is_refused(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="gap"):
        build_service_tls(
            service(cert=pki.server, min_version=ssl.TLSVersion.TLSv1, options_set=("NO_TLSv1_1",))
        )


def test_disabling_every_version_is_refused(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="every protocol version"):
        build_service_tls(service(cert=pki.server, options_set=("NO_TLSv1_2", "NO_TLSv1_3")))


def test_unknown_option_is_refused(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="options = NO_SUCH_THING: unknown option"):
        build_service_tls(service(cert=pki.server, options_set=("NO_SUCH_THING",)))
