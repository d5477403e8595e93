"""Pre-shared keys: stunnel's ``PSKsecrets`` file and ``PSKidentity``, and the callbacks.

``read_psk_file`` reads the file (the configuration builder calls it, so mistakes are
reported with the config line); ``configure_psk`` installs the callbacks on a
service's context and returns the lines to log.

The file (as stunnel reads it)
------------------------------
One ``IDENTITY:KEY`` per line, split at the first colon; empty lines are skipped and
there are no comments.  A key written as hexadecimal digit pairs (colons allowed
between pairs) is turned into those bytes, anything else is used as the text's own
bytes.  Keys must be at least 16 bytes (32 hex digits) long.  Identities are UTF-8
text, because Python's callbacks take ``str``.  The file should be private: the
builder warns when other users may read or write it.

How the keys are used
---------------------
Python 3.13 added ``SSLContext.set_psk_server_callback`` and
``set_psk_client_callback`` (OpenSSL's "legacy" PSK callbacks); older Pythons have no
way to use PSKs, and ``PSKsecrets`` is refused there with the version needed.

* Server mode: the client's identity picks the key; an unknown identity gets an empty
  key, which OpenSSL treats as "no such identity".  TLS 1.2 then fails ("psk identity
  not found"); TLS 1.3 ignores the PSK and falls back to a certificate handshake, which
  fails without ``cert`` ("no suitable signature algorithm") and succeeds with one, as
  with stunnel.  Leave out ``cert`` to accept PSK clients only.  A wrong key fails as
  "decryption failed or bad record mac" (TLS 1.2) or "binder does not verify" (TLS
  1.3).  ``PSKidentity`` means nothing here (stunnel ignores it too).
* Client mode: the identity named by ``PSKidentity`` (default: the file's first line)
  is sent with its key.
* TLS 1.2 needs a PSK cipher.  When ``ciphers`` is not set tlstunnel adds
  ``ECDHE-PSK-CHACHA20-POLY1305`` (forward secret and AEAD, like its other defaults)
  to the default list; an explicit ``ciphers`` must name PSK ciphers itself.
* TLS 1.3: OpenSSL turns the legacy callbacks' key into a TLS 1.3 PSK bound to
  SHA-256, so the handshake must pick a SHA-256 suite (``TLS_AES_128_GCM_SHA256`` or
  ``TLS_CHACHA20_POLY1305_SHA256``).  OpenSSL's server prefers those by itself when the
  client offers such a PSK, and OpenSSL clients (``openssl s_client -psk``, stunnel)
  offer them by default; a peer that offers only ``TLS_AES_256_GCM_SHA384`` cannot use
  the PSK.  OpenSSL keeps an ``(EC)DHE`` exchange in TLS 1.3 PSK handshakes (psk_dhe_ke)
  unless ``options = ALLOW_NO_DHE_KEX`` is set, so they stay forward secret.
"""

from __future__ import annotations

import re
import ssl
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from tlstunnel.tls.errors import TLSSetupError

if TYPE_CHECKING:
    from tlstunnel.config.model import ServiceConfig

__all__ = [
    "MIN_KEY_BYTES",
    "PSK_DEFAULT_CIPHERS",
    "PSKFileError",
    "PSKSecrets",
    "configure_psk",
    "psk_unsupported_reason",
    "read_psk_file",
]

PSKSecrets = tuple[tuple[str, bytes], ...]  # (identity, key) in the file's order

MIN_KEY_BYTES = 16  # stunnel: shorter keys are unlikely to carry enough entropy
# OpenSSL's PSK_MAX_PSK_LEN / PSK_MAX_IDENTITY_LEN (3.x; 1.1.1 had 256 and 128).
MAX_KEY_BYTES = 512 if ssl.OPENSSL_VERSION_INFO >= (3,) else 256
MAX_IDENTITY_BYTES = 255 if ssl.OPENSSL_VERSION_INFO >= (3,) else 127
# Added to the default cipher list for TLS 1.2 PSK handshakes.
PSK_DEFAULT_CIPHERS = "ECDHE-PSK-CHACHA20-POLY1305"

_HEX_KEY = re.compile(r"[0-9A-Fa-f]{2}(?::?[0-9A-Fa-f]{2})*")


class PSKFileError(ValueError):
    """The PSKsecrets file cannot be used; the message names the line and the fix."""


def psk_unsupported_reason() -> str:
    """Why PSKs cannot be used by this Python (empty when they can)."""
    if not hasattr(ssl.SSLContext, "set_psk_server_callback"):
        running = ".".join(str(part) for part in sys.version_info[:3])
        return (
            f"pre-shared keys need Python 3.13 or later (this is Python {running}): "
            "older ssl modules have no PSK callbacks"
        )
    if not getattr(ssl, "HAS_PSK", False):
        return "the OpenSSL behind Python's ssl module was built without PSK support"
    return ""


def _decode_key(text: bytes) -> bytes:
    """stunnel's rule: hexadecimal digit pairs become bytes, anything else is text."""
    written = text.decode("ascii", errors="replace")
    if _HEX_KEY.fullmatch(written):
        return bytes.fromhex(written.replace(":", ""))
    return text


def read_psk_file(path: str) -> PSKSecrets:
    """The identities and keys in ``path``, in order; ``PSKFileError`` says what is wrong."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise PSKFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    secrets: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.rstrip(b"\r")
        if not line:
            continue
        where = f"{path} line {number}"
        identity_bytes, colon, key_text = line.partition(b":")
        if not colon:
            raise PSKFileError(f"{where}: not in IDENTITY:KEY form")
        if not identity_bytes:
            raise PSKFileError(f"{where}: the identity before ':' is empty")
        if len(identity_bytes) > MAX_IDENTITY_BYTES:
            raise PSKFileError(f"{where}: the identity is longer than {MAX_IDENTITY_BYTES} bytes")
        try:
            identity = identity_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise PSKFileError(f"{where}: the identity is not UTF-8 text") from None
        key = _decode_key(key_text)
        if len(key) < MIN_KEY_BYTES:
            raise PSKFileError(
                f"{where}: the key for {identity!r} is {len(key)} bytes; keys must be at "
                f"least {MIN_KEY_BYTES} bytes (16 characters, or 32 hexadecimal digits)"
            )
        if len(key) > MAX_KEY_BYTES:
            raise PSKFileError(f"{where}: the key is longer than {MAX_KEY_BYTES} bytes")
        if identity in seen:
            raise PSKFileError(f"{where}: identity {identity!r} is listed twice")
        seen.add(identity)
        secrets.append((identity, key))
    if not secrets:
        raise PSKFileError(f"{path} holds no IDENTITY:KEY line")
    return tuple(secrets)


def configure_psk(svc: ServiceConfig, context: ssl.SSLContext, server_side: bool) -> list[str]:
    """Install ``svc``'s PSK callbacks on ``context`` (nothing without PSKsecrets)."""
    if not svc.psk_secrets:
        return []
    reason = psk_unsupported_reason()
    if reason or sys.version_info < (3, 13):
        raise TLSSetupError(f"PSKsecrets: {reason}")
    keys = dict(svc.psk_secrets)
    if server_side:
        context.set_psk_server_callback(_server_callback(keys))
        return [f"PSK identities: {len(keys)} (server)"]
    identity = svc.psk_identity if svc.psk_identity is not None else svc.psk_secrets[0][0]
    if identity not in keys:
        raise TLSSetupError(f"PSKidentity = {identity}: no such identity in PSKsecrets")
    context.set_psk_client_callback(_client_callback(identity, keys[identity]))
    return [f"PSK identity: {identity}"]


def _server_callback(keys: dict[str, bytes]) -> Callable[[str | None], bytes]:
    def key_for(identity: str | None) -> bytes:
        # b"" tells OpenSSL the identity is unknown.
        return keys.get(identity, b"") if identity is not None else b""

    return key_for


def _client_callback(identity: str, key: bytes) -> Callable[[str | None], tuple[str | None, bytes]]:
    def identity_and_key(_hint: str | None) -> tuple[str | None, bytes]:
        return identity, key

    return identity_and_key
