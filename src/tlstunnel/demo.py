"""``tlstunnel --demo``: a working tunnel on built-in defaults, for a first look.

It writes a self-signed certificate and a stunnel-format configuration into
``./tlstunnel-demo/`` (kept, so you can read and reuse them), starts a tiny echo server
as the plaintext backend, and runs the tunnel in the foreground::

    TLS 127.0.0.1:8443  --tlstunnel-->  plain 127.0.0.1:8080 (echo)

Try it with ``openssl s_client -connect 127.0.0.1:8443 -quiet``: every line you type
comes back through the tunnel.  Ctrl-C stops both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from socketserver import StreamRequestHandler, ThreadingTCPServer

DEMO_DIR = "tlstunnel-demo"
TLS_PORT = int(os.environ.get("TLSTUNNEL_DEMO_PORT", "8443"))
ECHO_PORT = int(os.environ.get("TLSTUNNEL_DEMO_BACKEND_PORT", "8080"))

DEMO_CONFIG = """\
; A demo tlstunnel configuration (stunnel format), written by `tlstunnel --demo`.
foreground = yes
pid =
debug = info

[demo-echo]
accept = 127.0.0.1:{tls_port}
connect = 127.0.0.1:{echo_port}
cert = {cert}
key = {key}
"""


class _EchoHandler(StreamRequestHandler):
    def handle(self) -> None:
        while chunk := self.rfile.readline(65536):
            self.wfile.write(chunk)


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed P-256 certificate for localhost, made with the openssl command
    when there is one, otherwise with the ``cryptography`` package."""
    cert = os.path.join(directory, "demo-cert.pem")
    key = os.path.join(directory, "demo-key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    openssl = shutil.which("openssl")
    if openssl:
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
    else:
        _make_certificate_with_cryptography(cert, key)
    os.chmod(key, 0o600)
    return cert, key


def _make_certificate_with_cryptography(cert_path: str, key_path: str) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    with open(cert_path, "wb") as handle:
        handle.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def run_demo() -> int:
    from tlstunnel.cli import Invocation, run

    os.makedirs(DEMO_DIR, exist_ok=True)
    cert, key = make_certificate(DEMO_DIR)
    config_path = os.path.join(DEMO_DIR, "demo.conf")
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(
            DEMO_CONFIG.format(
                tls_port=TLS_PORT,
                echo_port=ECHO_PORT,
                cert=os.path.abspath(cert),
                key=os.path.abspath(key),
            )
        )
    ThreadingTCPServer.allow_reuse_address = True
    ThreadingTCPServer.daemon_threads = True
    try:
        echo = ThreadingTCPServer(("127.0.0.1", ECHO_PORT), _EchoHandler)
    except OSError as exc:
        sys.stderr.write(
            f"[!] Cannot start the demo echo backend on 127.0.0.1:{ECHO_PORT}: "
            f"{exc.strerror} (set TLSTUNNEL_DEMO_BACKEND_PORT)\n"
        )
        return 1
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    sys.stderr.write(
        f"[.] Demo: TLS on 127.0.0.1:{TLS_PORT} -> echo backend on 127.0.0.1:{ECHO_PORT}\n"
        f"[.] Configuration: {config_path}\n"
        f"[.] Try:  openssl s_client -connect 127.0.0.1:{TLS_PORT} -quiet\n"
    )
    try:
        return run(Invocation("run", path=config_path))
    finally:
        echo.shutdown()
