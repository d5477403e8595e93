"""build_service_tls: handshakes, protocol versions, ciphers, curves, SNI, log lines."""

from __future__ import annotations

import ssl

import pytest

from tlstunnel.tls import ServiceTLS, TLSSetupError, build_service_tls, describe_tls_error
from tlstunnel.tls.context import DEFAULT_CIPHERS

from .conftest import PKI, ServiceFactory
from .helpers import handshake


@pytest.fixture
def server(pki: PKI, service: ServiceFactory) -> ServiceTLS:
    return build_service_tls(service(cert=pki.server))


@pytest.fixture
def client(pki: PKI, service: ServiceFactory) -> ServiceTLS:
    return build_service_tls(service(client=True, verify_chain=True, ca_file=pki.ca))


def test_server_and_client_contexts_use_their_protocols(
    server: ServiceTLS, client: ServiceTLS
) -> None:
    assert server.server_side and server.context.protocol == ssl.PROTOCOL_TLS_SERVER
    assert not client.server_side and client.context.protocol == ssl.PROTOCOL_TLS_CLIENT
    assert not client.context.check_hostname  # host checks are ours
    assert client.context.verify_mode == ssl.CERT_REQUIRED
    assert server.context.verify_mode == ssl.CERT_NONE  # no client certificate asked for


@pytest.mark.parametrize(
    ("version", "expected"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
def test_handshake_each_version(
    pki: PKI, service: ServiceFactory, version: ssl.TLSVersion, expected: str
) -> None:
    server = build_service_tls(service(cert=pki.server, min_version=version, max_version=version))
    client = build_service_tls(
        service(client=True, verify_chain=True, ca_file=pki.ca, check_host=("localhost",))
    )
    outcome = handshake(server, client)
    assert outcome.ok, outcome
    assert outcome.client.version() == expected
    assert outcome.server.version() == expected
    assert client.check_peer(outcome.client) is None
    assert server.check_peer(outcome.server) is None


def test_default_minimum_is_tls12_and_tls13_is_preferred(
    server: ServiceTLS, client: ServiceTLS
) -> None:
    assert server.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert handshake(server, client).client.version() == "TLSv1.3"


def test_tls12_client_cannot_reach_tls13_only_server(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.server, min_version=ssl.TLSVersion.TLSv1_3))
    client = build_service_tls(service(client=True, max_version=ssl.TLSVersion.TLSv1_2))
    outcome = handshake(server, client)
    assert outcome.server_error is not None and outcome.client_error is not None
    assert outcome.server_error.reason == "UNSUPPORTED_PROTOCOL"
    assert outcome.client_error.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


def test_legacy_minimum_version_builds_without_deprecation_warning(
    pki: PKI, service: ServiceFactory
) -> None:
    # pytest turns warnings into errors: Python warns when TLSv1 is set directly.
    tls = build_service_tls(service(cert=pki.server, min_version=ssl.TLSVersion.TLSv1))
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1
    assert "Protocol versions: TLSv1 to TLSv1.3" in tls.describe_settings()


def test_minimum_above_maximum_is_refused(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match=r"sslVersionMin .* above sslVersionMax"):
        build_service_tls(
            service(
                cert=pki.server,
                min_version=ssl.TLSVersion.TLSv1_3,
                max_version=ssl.TLSVersion.TLSv1_2,
            )
        )


def test_default_ciphers_are_ecdhe_with_aead_only(server: ServiceTLS) -> None:
    tls12 = [c for c in server.context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for cipher in tls12:
        name = cipher["name"]
        assert name.startswith("ECDHE-"), name
        assert "GCM" in name or "CHACHA20" in name, name
        assert cipher["aead"], name
    assert {c["name"] for c in tls12} == set(DEFAULT_CIPHERS.split(":"))


def test_ciphers_restrict_the_negotiated_tls12_suite(pki: PKI, service: ServiceFactory) -> None:
    only = "ECDHE-ECDSA-CHACHA20-POLY1305"
    server = build_service_tls(
        service(cert=pki.server, ciphers=only, max_version=ssl.TLSVersion.TLSv1_2)
    )
    client = build_service_tls(service(client=True))
    outcome = handshake(server, client)
    assert outcome.ok
    cipher = outcome.client.cipher()
    assert cipher is not None and cipher[0] == only
    assert f"Ciphers: {only}" in server.describe_settings()


def test_ciphers_without_common_suite_fail(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(
        service(
            cert=pki.server,
            ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
            max_version=ssl.TLSVersion.TLSv1_2,
        )
    )
    client = build_service_tls(service(client=True, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384"))
    outcome = handshake(server, client)
    assert outcome.server_error is not None
    assert describe_tls_error(outcome.server_error, server_side=True).startswith(
        "no cipher in common with the peer"
    )


def test_unknown_cipher_string_is_refused(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="ciphers = NOT-A-CIPHER"):
        build_service_tls(service(cert=pki.server, ciphers="NOT-A-CIPHER"))


def test_security_level_is_applied(pki: PKI, service: ServiceFactory) -> None:
    tls = build_service_tls(service(cert=pki.server, security_level=3))
    assert tls.context.security_level == 3
    assert "OpenSSL security level is used: 3" in tls.describe_settings()
    assert "User-specified security level set: 3" in tls.describe_settings()


def test_security_level_defaults_to_two(server: ServiceTLS) -> None:
    assert server.context.security_level == 2
    assert "OpenSSL security level is used: 2" in server.describe_settings()


def test_security_level_decides_whether_a_weak_key_loads(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="too small for the security level"):
        build_service_tls(service(cert=pki.weak_rsa))
    weak = build_service_tls(service(cert=pki.weak_rsa, security_level=0))
    assert weak.context.security_level == 0


def test_security_level_out_of_range_is_refused(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="securityLevel = 6"):
        build_service_tls(service(cert=pki.server, security_level=6))


# --- TLS 1.3 ciphersuites -------------------------------------------------------------------


@pytest.mark.parametrize(
    "suites",
    [
        "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
        # stunnel's documented default: the same set, another order
        "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
    ],
)
def test_ciphersuites_equal_to_openssl_default_are_accepted(
    pki: PKI, service: ServiceFactory, suites: str
) -> None:
    tls = build_service_tls(service(cert=pki.server, ciphersuites=suites))
    line = next(s for s in tls.describe_settings() if s.startswith("TLSv1.3 ciphersuites: "))
    assert "TLS_AES_256_GCM_SHA384" in line


def test_ciphersuites_other_than_default_are_refused(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match=r"cannot restrict TLSv1\.3") as info:
        build_service_tls(service(cert=pki.server, ciphersuites="TLS_AES_256_GCM_SHA384"))
    assert "sslVersionMax = TLSv1.2" in info.value.message


def test_ciphersuites_are_free_when_tls13_is_off(pki: PKI, service: ServiceFactory) -> None:
    tls = build_service_tls(
        service(
            cert=pki.server,
            ciphersuites="TLS_AES_256_GCM_SHA384",
            max_version=ssl.TLSVersion.TLSv1_2,
        )
    )
    assert any("unused: TLSv1.3 is disabled" in line for line in tls.describe_settings())


def test_unknown_ciphersuite_is_refused(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match=r"not a TLSv1\.3 ciphersuite"):
        build_service_tls(
            service(
                cert=pki.server,
                ciphersuites="TLS_RC4_SHA",
                max_version=ssl.TLSVersion.TLSv1_2,
            )
        )


# --- curves ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["P-256", "prime256v1", "secp256r1", "p-256"])
def test_stunnel_curve_spellings(pki: PKI, service: ServiceFactory, name: str) -> None:
    tls = build_service_tls(service(cert=pki.server, curves=name))
    assert "ECDH initialized with curves prime256v1" in tls.describe_settings()


def test_single_curve_restricts_tls13_key_exchange(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.server, curves="X25519"))
    p384_client = build_service_tls(service(client=True, curves="P-384"))
    outcome = handshake(server, p384_client)
    assert outcome.server_error is not None
    assert outcome.server_error.reason == "NO_SUITABLE_KEY_SHARE"
    assert "no key exchange group" in describe_tls_error(outcome.server_error, server_side=True)
    x25519_client = build_service_tls(service(client=True, curves="x25519"))
    assert handshake(server, x25519_client).ok


def test_single_curve_meets_default_peer(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.server))
    for curve in ("P-384", "P-521", "X448", "ffdhe2048"):
        client = build_service_tls(service(client=True, curves=curve))
        assert handshake(server, client).ok, curve


def test_stunnel_default_curve_list_is_accepted(pki: PKI, service: ServiceFactory) -> None:
    tls = build_service_tls(service(cert=pki.server, curves="X25519:P-256:X448:P-521:P-384"))
    assert any("OpenSSL's default groups" in line for line in tls.describe_settings())


def test_other_curve_lists_are_refused(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="only one curve"):
        build_service_tls(service(cert=pki.server, curves="P-256:P-384"))


def test_unknown_curve_is_refused(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="unknown curve"):
        build_service_tls(service(cert=pki.server, curves="P-999"))


def test_curve_unusable_with_tls13_is_refused_early(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="cannot be used with the enabled protocol versions"):
        build_service_tls(service(cert=pki.server, curves="brainpoolP256r1"))
    tls12_only = build_service_tls(
        service(cert=pki.server, curves="brainpoolP256r1", max_version=ssl.TLSVersion.TLSv1_2)
    )
    assert "ECDH initialized with curves brainpoolP256r1" in tls12_only.describe_settings()


# --- SNI -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sni", "connect_host", "expected"),
    [
        (None, "server.example.com", "server.example.com"),
        (None, "server.example.com.", "server.example.com"),
        (None, "127.0.0.1", None),
        (None, "::1", None),
        (None, "fe80::1%eth0", None),
        (None, None, None),
        ("", "server.example.com", None),
        ("virtual.example", "127.0.0.1", "virtual.example"),
    ],
)
def test_server_hostname(
    service: ServiceFactory, sni: str | None, connect_host: str | None, expected: str | None
) -> None:
    tls = build_service_tls(service(client=True, sni=sni))
    assert tls.server_hostname(connect_host) == expected


def test_sni_reaches_the_server(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.server))
    seen: list[str | None] = []
    server.context.sni_callback = lambda _obj, name, _ctx: seen.append(name)
    client = build_service_tls(service(client=True, sni="virtual.example"))
    assert handshake(server, client, client.server_hostname("127.0.0.1")).ok
    assert seen == ["virtual.example"]


def test_server_mode_sends_no_sni(server: ServiceTLS) -> None:
    assert server.server_hostname("example.com") is None


# --- log lines --------------------------------------------------------------------------------


def test_describe_settings(pki: PKI, service: ServiceFactory) -> None:
    tls = build_service_tls(service(client=True, verify_peer=True, ca_file=pki.self_signed_cert))
    lines = tls.describe_settings()
    assert lines[0] == "TLS mode: client"
    assert f"Ciphers: {DEFAULT_CIPHERS}" in lines
    assert any(line.startswith("TLSv1.3 ciphersuites: TLS_AES_256_GCM_SHA384") for line in lines)
    assert "OpenSSL security level is used: 2" in lines
    assert "Peer certificate verification: pinned" in lines
    assert "Pinned certificates: 1" in lines
    assert any(line.startswith("TLS options: 0x") for line in lines)
    lines.clear()  # a copy: the service keeps its own
    assert tls.describe_settings()


def test_client_chain_verification_without_subject_checks_warns(client: ServiceTLS) -> None:
    assert client.warnings and "without subject checks" in client.warnings[0]
