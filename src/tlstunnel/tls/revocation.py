"""Certificate revocation lists (``CRLfile``, ``CRLpath``) and the OCSP switch-on.

CRLs need no code at connection time: OpenSSL checks them while it verifies the
peer's chain, when they are in the context's store and the CRL flags are set.  This
module puts them there and sets the flags as stunnel does (``X509_V_FLAG_CRL_CHECK |
X509_V_FLAG_CRL_CHECK_ALL``, Python's ``VERIFY_CRL_CHECK_CHAIN``): *every* certificate
of the chain is checked, so every CA in it needs a current CRL in CRLfile/CRLpath, or
the handshake fails with "unable to get certificate CRL".  A revoked certificate fails
it with "certificate revoked", a CRL past its nextUpdate with "CRL has expired".

* ``CRLfile``: PEM CRLs (several may follow each other), loaded once at start through
  ``load_verify_locations`` (OpenSSL's ``X509_load_cert_crl_file``).  A file with no
  ``X509 CRL`` block is refused: it would make every handshake fail.
* ``CRLpath``: a directory OpenSSL searches for ``HASH.rN`` files (``openssl rehash`` or
  ``c_rehash`` names them) the first time a verification needs that CA's CRL; it keeps
  what it read, so a replaced CRL takes effect at the next reload (SIGHUP).  A directory
  without any such name is refused.

OCSP (``ocsp``) needs the ``cryptography`` package, which is optional:
``ocsp_support_missing`` tells the configuration whether it can be had.  It lives here,
not in ``ocsp``, because that module imports cryptography at its top.
"""

from __future__ import annotations

import importlib
import os
import re
import ssl

from tlstunnel.tls.errors import TLSSetupError

__all__ = ["HASHED_CRL_NAME", "load_crls", "ocsp_support_missing"]

HASHED_CRL_NAME = re.compile(r"[0-9a-f]{8}\.r[0-9]+")
_PEM_CRL = b"-----BEGIN X509 CRL-----"


def ocsp_support_missing() -> str:
    """Empty when OCSP can be used; else why not, with the command that fixes it."""
    try:
        importlib.import_module("cryptography.x509.ocsp")
    except ImportError:
        return (
            "OCSP needs the cryptography package, which is not installed: "
            "pip install 'tlstunnel[ocsp]'"
        )
    return ""


def load_crls(
    context: ssl.SSLContext, crl_file: str | None, crl_path: str | None, settings: list[str]
) -> bool:
    """Load CRLfile/CRLpath into ``context`` and turn CRL checking on; False if neither
    is set.  ``TLSSetupError`` when one cannot be used."""
    if crl_file is None and crl_path is None:
        return False
    if crl_file is not None:
        try:
            with open(crl_file, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise TLSSetupError(f"CRLfile = {crl_file}: {exc.strerror or exc}") from None
        if _PEM_CRL not in data:
            raise TLSSetupError(
                f"CRLfile = {crl_file}: no PEM CRL in it (-----BEGIN X509 CRL-----)"
            )
        try:
            context.load_verify_locations(cafile=crl_file)
        except ssl.SSLError as exc:
            raise TLSSetupError(f"CRLfile = {crl_file}: the CRLs cannot be read ({exc})") from None
        settings.append(f"CRL file: {crl_file}")
    if crl_path is not None:
        if not os.path.isdir(crl_path):
            raise TLSSetupError(f"CRLpath = {crl_path}: not a directory")
        if not any(HASHED_CRL_NAME.fullmatch(name) for name in os.listdir(crl_path)):
            raise TLSSetupError(
                f"CRLpath = {crl_path}: no CRL named HASH.r0 in it; "
                f"run 'openssl rehash {crl_path}' (or c_rehash)"
            )
        context.load_verify_locations(capath=crl_path)
        settings.append(f"CRL path: {crl_path}")
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    settings.append("CRL checking: every certificate of the peer's chain")
    return True
