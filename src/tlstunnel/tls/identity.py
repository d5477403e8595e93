"""Loading our own certificate chain and private key (``cert`` / ``key``) into a context.

This module owns reading PEM files and PKCS#12 bundles and saying clearly what is wrong
with them.  stunnel accepts ``cert`` as PEM (certificate chain, leaf first, optionally
followed by the key) or PKCS#12 (``.p12``/``.pfx``).  OpenSSL loads PEM itself.  Python's
``ssl`` cannot load PKCS#12, so a bundle is converted with the ``cryptography`` package
(imported only when needed) into PEM in a file created with mode 0600 inside a private
temporary directory, loaded, and removed straight after ``load_cert_chain``.

Encrypted keys: stunnel asks for the pass phrase on the console; a daemon cannot, so
tlstunnel refuses encrypted keys with a message instead of letting OpenSSL prompt.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import tempfile
from typing import NoReturn

from tlstunnel.tls.errors import TLSSetupError

_PEM_BEGIN = b"-----BEGIN "
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----")
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
PKCS12_SUFFIXES = (".p12", ".pfx")


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TLSSetupError(f"{option} = {path}: cannot read it ({exc.strerror or exc})") from None


def _refuse_pass_phrase(key_path: str) -> NoReturn:
    raise TLSSetupError(
        f"the private key in {key_path} is encrypted, and tlstunnel cannot ask for its pass "
        "phrase: decrypt it (openssl pkey -in KEY -out KEY.plain) and protect the file "
        "with chmod 600"
    )


def load_identity(
    context: ssl.SSLContext, cert: str | None, key: str | None, *, server_side: bool
) -> None:
    """Load ``cert`` (and ``key``) into ``context``; raise ``TLSSetupError`` on any problem.

    ``key`` None (or equal to ``cert``) means the key is in the ``cert`` file.  A server
    needs a certificate; for a client it is optional (a client certificate).
    """
    if cert is None:
        if server_side:
            raise TLSSetupError("server mode needs a certificate: set cert (and key)")
        if key is not None:
            raise TLSSetupError(f"key = {key} is set without cert")
        return
    data = _read("cert", cert)
    key_path = key if key is not None and key != cert else None
    if cert.lower().endswith(PKCS12_SUFFIXES):
        _load_pkcs12(context, cert, data, key_path, named_as_pkcs12=True)
    elif _PEM_BEGIN not in data:
        _load_pkcs12(context, cert, data, key_path, named_as_pkcs12=False)
    else:
        _load_pem(context, cert, data, key_path)


def _load_pem(context: ssl.SSLContext, cert: str, data: bytes, key_path: str | None) -> None:
    if not _PEM_CERTIFICATE.search(data):
        raise TLSSetupError(f"cert = {cert}: no certificate in this PEM file")
    if key_path is None:
        if not _PEM_PRIVATE_KEY.search(data):
            raise TLSSetupError(
                f"cert = {cert} holds no private key: append it to the file or set key"
            )
        key_source = cert
    else:
        if not _PEM_PRIVATE_KEY.search(_read("key", key_path)):
            raise TLSSetupError(f"key = {key_path}: no PEM private key in this file")
        key_source = key_path
    _load_chain(context, cert, key_path, key_source)


def _load_chain(
    context: ssl.SSLContext,
    cert_file: str,
    key_file: str | None,
    key_source: str,
    shown_cert: str | None = None,
) -> None:
    """``load_cert_chain`` with readable errors; ``shown_cert`` names the user's file."""
    shown = shown_cert or cert_file
    try:
        context.load_cert_chain(
            cert_file, key_file, password=lambda: _refuse_pass_phrase(key_source)
        )
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None) or ""
        if reason == "KEY_VALUES_MISMATCH":
            raise TLSSetupError(
                f"the private key in {key_source} does not match the certificate in {shown}"
            ) from None
        if reason == "EE_KEY_TOO_SMALL":
            raise TLSSetupError(
                f"cert = {shown}: its key is too small for the security level "
                "(use a bigger key, or lower securityLevel)"
            ) from None
        if reason == "CA_MD_TOO_WEAK":
            raise TLSSetupError(
                f"cert = {shown}: it is signed with a digest too weak for the security "
                "level (reissue it, or lower securityLevel)"
            ) from None
        raise TLSSetupError(
            f"cannot load cert = {shown} with its key from {key_source}: {exc}"
        ) from None
    except OSError as exc:
        raise TLSSetupError(f"cannot load cert = {shown}: {exc.strerror or exc}") from None


def _load_pkcs12(
    context: ssl.SSLContext,
    cert: str,
    data: bytes,
    key_path: str | None,
    *,
    named_as_pkcs12: bool,
) -> None:
    try:
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
            pkcs12,
        )
    except ImportError:
        what = "is a PKCS#12 file" if named_as_pkcs12 else "is not PEM (it may be PKCS#12)"
        raise TLSSetupError(
            f"cert = {cert} {what}; reading PKCS#12 needs the cryptography package: "
            "pip install cryptography"
        ) from None

    bundle = None
    for password in (None, b""):
        try:
            bundle = pkcs12.load_key_and_certificates(data, password)
            break
        except ValueError:
            continue
    if bundle is None:
        if named_as_pkcs12:
            raise TLSSetupError(
                f"cert = {cert}: cannot read this PKCS#12 file (it is damaged, or protected "
                "by a password, which tlstunnel cannot ask for)"
            )
        raise TLSSetupError(f"cert = {cert}: neither PEM nor a PKCS#12 file tlstunnel can read")
    private_key, certificate, extra = bundle
    if certificate is None:
        raise TLSSetupError(f"cert = {cert}: the PKCS#12 file holds no certificate")
    pem = certificate.public_bytes(Encoding.PEM)
    pem += b"".join(c.public_bytes(Encoding.PEM) for c in extra)
    if private_key is not None:
        key_source = cert
        pem = private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()) + pem
        key_path = None
    elif key_path is None:
        raise TLSSetupError(f"cert = {cert}: the PKCS#12 file holds no private key; set key")
    else:
        key_source = key_path

    directory = tempfile.mkdtemp(prefix="tlstunnel-")  # mode 0700, ours alone
    pem_path = os.path.join(directory, "identity.pem")
    try:
        fd = os.open(pem_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        _load_chain(context, pem_path, key_path, key_source, shown_cert=cert)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pem_path)
        os.rmdir(directory)
