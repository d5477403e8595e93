"""describe_tls_error on errors provoked for real: sockets on 127.0.0.1 and memory pairs."""

from __future__ import annotations

import socket
import ssl
import struct
import threading

import pytest

from tlstunnel.tls import ServiceTLS, build_service_tls, describe_tls_error
from tlstunnel.tls.errors import TLSSetupError

from .conftest import PKI, ServiceFactory
from .helpers import handshake, serve_once


@pytest.fixture
def server(pki: PKI, service: ServiceFactory) -> ServiceTLS:
    return build_service_tls(service(cert=pki.server))


def _send_plaintext(address: tuple[str, int], data: bytes) -> None:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        try:
            # The server may already have answered with an alert and closed: then the
            # shutdown or the read fails (ENOTCONN, ECONNRESET), which is fine here.
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except OSError:
            pass


def test_plain_http_to_a_tls_server(server: ServiceTLS) -> None:
    with serve_once(server) as (address, result):
        _send_plaintext(address, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert isinstance(result.error, ssl.SSLError)
    assert (
        describe_tls_error(result.error, server_side=True)
        == "the peer does not speak TLS (it sent plain HTTP)"
    )


def test_proxy_request_to_a_tls_server(server: ServiceTLS) -> None:
    with serve_once(server) as (address, result):
        _send_plaintext(address, b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    assert result.error is not None
    assert "HTTP proxy CONNECT" in describe_tls_error(result.error, server_side=True)


@pytest.mark.parametrize(
    "data",
    [
        b"EHLO mail.example.com\r\n" * 4,  # another protocol
        bytes.fromhex("16030300040b000000"),  # a TLS record, but a message out of order
    ],
)
def test_not_tls_at_all(server: ServiceTLS, data: bytes) -> None:
    with serve_once(server) as (address, result):
        _send_plaintext(address, data)
    assert result.error is not None
    assert describe_tls_error(result.error, server_side=True).startswith(
        "the peer does not speak TLS"
    )


def test_client_hangs_up_during_the_handshake(server: ServiceTLS) -> None:
    with serve_once(server) as (address, result):
        _send_plaintext(address, bytes.fromhex("16030100"))  # half a record header
    assert isinstance(result.error, ssl.SSLEOFError)
    assert (
        describe_tls_error(result.error, server_side=True)
        == "the peer closed the connection during the handshake"
    )
    assert "close_notify" in describe_tls_error(result.error, server_side=True, in_handshake=False)


def test_server_resets_the_connection(service: ServiceFactory) -> None:
    client = build_service_tls(service(client=True))
    listener = socket.create_server(("127.0.0.1", 0))

    def reset_after_hello() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    thread = threading.Thread(target=reset_after_hello)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname()[:2], timeout=10) as sock,
            pytest.raises(OSError) as info,
        ):
            client.context.wrap_socket(sock, server_hostname="localhost")
    finally:
        thread.join()
        listener.close()
    assert (
        describe_tls_error(info.value, server_side=False)
        == "the peer reset the connection during the handshake"
    )


def test_tls_client_to_a_plaintext_server(service: ServiceFactory) -> None:
    client = build_service_tls(service(client=True))
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_in_http() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=answer_in_http)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname()[:2], timeout=10) as sock,
            pytest.raises(ssl.SSLError) as info,
        ):
            client.context.wrap_socket(sock, server_hostname="localhost")
    finally:
        thread.join()
        listener.close()
    assert describe_tls_error(info.value, server_side=False).startswith(
        "the server does not speak TLS"
    )


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_without_certificate(
    pki: PKI, service: ServiceFactory, version: ssl.TLSVersion
) -> None:
    server = build_service_tls(
        service(cert=pki.server, verify_chain=True, require_cert=True, ca_file=pki.ca)
    )
    client = build_service_tls(service(client=True, max_version=version))
    outcome = handshake(server, client)
    assert outcome.server_error is not None and outcome.client_error is not None
    assert (
        describe_tls_error(outcome.server_error, server_side=True)
        == "the client did not present a certificate"
    )
    client_side = describe_tls_error(outcome.client_error, server_side=False)
    if version == ssl.TLSVersion.TLSv1_3:
        assert client_side.startswith("the server requires a client certificate")
    else:
        assert client_side.startswith("the peer aborted the handshake")


def test_expired_server_certificate(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.expired))
    client = build_service_tls(service(client=True, verify_chain=True, ca_file=pki.ca))
    outcome = handshake(server, client)
    assert outcome.client_error is not None and outcome.server_error is not None
    assert (
        describe_tls_error(outcome.client_error, server_side=False)
        == "the peer's certificate could not be verified: certificate has expired"
    )
    assert (
        describe_tls_error(outcome.server_error, server_side=True)
        == "the peer rejected our certificate as expired"
    )


def test_server_certificate_from_an_unknown_ca(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.server))
    client = build_service_tls(service(client=True, verify_chain=True, ca_file=pki.other_ca))
    outcome = handshake(server, client)
    assert outcome.client_error is not None and outcome.server_error is not None
    assert describe_tls_error(outcome.client_error, server_side=False) == (
        "the peer's certificate could not be verified: unable to get local issuer "
        "certificate (the CA that issued it is not in CAfile/CApath)"
    )
    assert describe_tls_error(outcome.server_error, server_side=True).startswith(
        "the peer does not trust our certificate"
    )


def test_client_certificate_from_an_unknown_ca(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(
        service(cert=pki.server, verify_chain=True, require_cert=True, ca_file=pki.ca)
    )
    client = build_service_tls(service(client=True, cert=pki.other_client))
    outcome = handshake(server, client)
    assert outcome.server_error is not None and outcome.client_error is not None
    assert "unable to get local issuer certificate" in describe_tls_error(
        outcome.server_error, server_side=True
    )
    assert describe_tls_error(outcome.client_error, server_side=False).startswith(
        "the peer does not trust our certificate"
    )


def test_unpinned_self_signed_certificate(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.other_self_signed))
    client = build_service_tls(service(client=True, verify_chain=True, ca_file=pki.ca))
    outcome = handshake(server, client)
    assert outcome.client_error is not None
    assert describe_tls_error(outcome.client_error, server_side=False).endswith(
        "(it is self-signed and not in CAfile/CApath)"
    )


def test_peer_that_rejects_the_host_name(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.server))
    strict = ssl.create_default_context(cafile=str(pki.ca))  # checks the host name itself
    outcome = handshake(server, strict, server_hostname="wrong.example")
    assert outcome.server_error is not None
    assert (
        describe_tls_error(outcome.server_error, server_side=True)
        == "the peer rejected our certificate (bad certificate)"
    )


def test_no_common_protocol_version(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.server, max_version=ssl.TLSVersion.TLSv1_2))
    client = build_service_tls(service(client=True, min_version=ssl.TLSVersion.TLSv1_3))
    outcome = handshake(server, client)
    assert outcome.server_error is not None and outcome.client_error is not None
    assert describe_tls_error(outcome.server_error, server_side=True).startswith(
        "no TLS version in common with the peer"
    )
    assert describe_tls_error(outcome.client_error, server_side=False).startswith(
        "the peer refused the TLS version"
    )


def test_unknown_reason_keeps_openssl_text() -> None:
    exc = ssl.SSLError(1, "[SSL: SOMETHING_NEW] something new happened (_ssl.c:1006)")
    assert describe_tls_error(exc, server_side=True) == "TLS error: something new happened"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), "the TLS handshake timed out"),
        (BrokenPipeError(32, "Broken pipe"), "the peer closed the connection during the handshake"),
        (
            ConnectionAbortedError("SSL handshake is taking longer"),
            "connection error: SSL handshake is taking longer",
        ),
        (OSError(113, "No route to host"), "connection error: No route to host"),
        (ValueError("odd"), "odd"),
        (
            ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed (EOF)"),
            "the peer closed the TLS session",
        ),
    ],
)
def test_other_failures(exc: BaseException, expected: str) -> None:
    assert describe_tls_error(exc, server_side=False) == expected


def test_setup_error_carries_its_message() -> None:
    err = TLSSetupError("cert = x: no certificate in this PEM file")
    assert err.message == str(err) == "cert = x: no certificate in this PEM file"
