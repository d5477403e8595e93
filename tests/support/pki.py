"""Certificates for end-to-end tests: one CA, a server and a client certificate.

Made once per test session with trustme and written as PEM files, so the tunnel
processes under test (and stunnel4, and openssl) read them exactly as a user's files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class PKIFiles:
    """Paths of the PEM files; ``server`` and ``client`` hold key and chain together."""

    ca: Path
    server: Path  # localhost, 127.0.0.1, ::1
    server_cert: Path
    server_key: Path
    client: Path  # client.example.com
    other_ca: Path
    stranger: Path  # a client certificate from other_ca: nobody trusts it


def make_pki(directory: Path) -> PKIFiles:
    ca = trustme.CA()
    other = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client = ca.issue_cert("client.example.com")
    stranger = other.issue_cert("stranger.example.com")
    paths = PKIFiles(
        ca=directory / "ca.pem",
        server=directory / "server.pem",
        server_cert=directory / "server-cert.pem",
        server_key=directory / "server-key.pem",
        client=directory / "client.pem",
        other_ca=directory / "other-ca.pem",
        stranger=directory / "stranger.pem",
    )
    ca.cert_pem.write_to_path(str(paths.ca))
    other.cert_pem.write_to_path(str(paths.other_ca))
    server.private_key_and_cert_chain_pem.write_to_path(str(paths.server))
    server.private_key_pem.write_to_path(str(paths.server_key))
    paths.server_cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths.client))
    stranger.private_key_and_cert_chain_pem.write_to_path(str(paths.stranger))
    for key_file in (paths.server, paths.server_key, paths.client, paths.stranger):
        key_file.chmod(0o600)
    return paths
