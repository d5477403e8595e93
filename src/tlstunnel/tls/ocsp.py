"""OCSP: ask the responder whether the peer's certificate is revoked (``OCSP``, ``OCSPaia``,
``OCSPflag``, ``OCSPnonce``, ``OCSPrequire``, ``TIMEOUTocsp``).

Needs the ``cryptography`` package (the ``ocsp`` extra); nothing else imports this module
unless OCSP is configured, and the configuration is refused when it is missing.

Theory of operation
-------------------
Python's ``ssl`` has no OCSP API (no status callback), so the check runs right after
the handshake, before a single byte is relayed, in the order stunnel uses in its verify
callback (``ocsp.c``).  In client mode the server's stapled answer, if it sent one
(``stapling.py`` asks for it), is judged first for the leaf, as in step 3 but without a
nonce; a good or revoked staple settles the leaf without asking any responder:

1. The chain: on Python >= 3.13 the chain OpenSSL verified
   (``SSLObject.get_verified_chain``).  Before 3.13 Python exposes only the peer's own
   certificate, so the issuers are looked up among the CAfile/CApath certificates
   (subject and key identifier, then the signature); an intermediate the peer sent but
   that is not in CAfile/CApath cannot be found, and that certificate's status is then
   "unknown" (``OCSPrequire`` decides).
2. Each certificate of the chain except the root, leaf first.  The leaf is asked at the
   ``OCSP`` URL first; when that gives no conclusive answer, and for every CA
   certificate, the URLs of the certificate's Authority Information Access extension
   are asked when ``OCSPaia = yes``.  A certificate with nothing to ask is accepted
   (stunnel: "neither url or aia verification was needed").
3. Each answer is checked as ``OCSP_basic_verify`` + ``OCSP_resp_find_status`` +
   ``OCSP_check_validity`` do: HTTP 200 with a successful OCSP response; the nonce when
   ``OCSPnonce = yes``; the signer (found by responder id among the verified chain and,
   unless ``NOINTERN``, the certificates in the response); its signature (unless
   ``NOSIGS``); the signer certificate (unless ``NOVERIFY``, or ``TRUSTOTHER`` with a
   signer from the verified chain) -- it must chain to CAfile/CApath (through the
   response's certificates and the verified chain unless ``NOCHAIN``; dates unless
   ``NOTIME``) and be the issuing CA itself (unless ``NOCASIGN``) or a responder that
   CA delegated with the OCSPSigning extended key usage (unless ``NODELEGATED``); with
   ``NOCHECKS`` any signer chaining to CAfile/CApath will do.  Then the entry for the
   certificate (issuer name hash, issuer key hash, serial) and its freshness (thisUpdate
   not in the future, nextUpdate not past, 60 seconds of leeway as in stunnel).
   OpenSSL's last resort, a root explicitly trusted for OCSP signing (what ``NOEXPLICIT``
   turns off), does not exist here: PEM trust settings are invisible to Python, so that
   flag is always in effect.
4. Verdict: any "revoked" refuses the connection; "unknown" (no answer, a bad answer,
   the responder's own "unknown") refuses it when ``OCSPrequire = yes`` (stunnel's
   default) and is logged and let through otherwise.

Log lines keep stunnel's wording ("OCSP: Connecting the configured responder ...",
"OCSP: Certificate revoked: 1: keyCompromise", "OCSP: Rejected (revoked)").
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from tlstunnel.log import DEBUG, ERR, INFO, NOTICE, WARNING
from tlstunnel.tls.ocsp_http import ResponderError, ResponderURL, post_ocsp_request
from tlstunnel.tls.stapling import received_staple
from tlstunnel.tls.verify import pem_certificates

__all__ = [
    "AnswerContext",
    "OCSPChecker",
    "OCSPSettings",
    "Status",
    "aia_urls",
    "build_chain",
    "build_request",
    "judge_response",
    "load_trusted",
]

LogFunction = Callable[[int, str], None]

LEEWAY = datetime.timedelta(seconds=60)  # stunnel's params.leeway for client-driven checks
MAX_CHAIN = 10  # issuer lookups before giving up (a loop in CAfile must not hang us)

# OCSP_crl_reason_str's names, by the CRLReason code stunnel prints before them.
_REASON_CODES = {
    x509.ReasonFlags.unspecified: 0,
    x509.ReasonFlags.key_compromise: 1,
    x509.ReasonFlags.ca_compromise: 2,
    x509.ReasonFlags.affiliation_changed: 3,
    x509.ReasonFlags.superseded: 4,
    x509.ReasonFlags.cessation_of_operation: 5,
    x509.ReasonFlags.certificate_hold: 6,
    x509.ReasonFlags.remove_from_crl: 8,
    x509.ReasonFlags.privilege_withdrawn: 9,
    x509.ReasonFlags.aa_compromise: 10,
}
# OCSP_response_status_str's names.
_RESPONSE_STATUS = {
    ocsp.OCSPResponseStatus.MALFORMED_REQUEST: "malformedrequest",
    ocsp.OCSPResponseStatus.INTERNAL_ERROR: "internalerror",
    ocsp.OCSPResponseStatus.TRY_LATER: "trylater",
    ocsp.OCSPResponseStatus.SIG_REQUIRED: "sigrequired",
    ocsp.OCSPResponseStatus.UNAUTHORIZED: "unauthorized",
}


class Status:
    """OCSP_cert_status_str's names for the three outcomes."""

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class OCSPSettings:
    """A service's OCSP options, as the configuration resolved them."""

    url: str | None
    aia: bool
    flags: frozenset[str]
    nonce: bool
    require: bool
    timeout: float


@dataclass(frozen=True, slots=True)
class Finding:
    """What one OCSP answer says about one certificate, and the lines to log about it."""

    status: str
    lines: tuple[tuple[int, str], ...]
    next_update: datetime.datetime | None = None  # when a good or revoked answer goes stale


# --- trust material -----------------------------------------------------------------------


def load_trusted(ca_file: str | None, ca_path: str | None) -> list[x509.Certificate]:
    """Every certificate in CAfile and in the files of CApath (unreadable files skipped)."""
    blobs: list[bytes] = []
    paths = [ca_file] if ca_file else []
    if ca_path:
        paths += [os.path.join(ca_path, name) for name in sorted(os.listdir(ca_path))]
    for path in paths:
        if not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as handle:
                blobs.extend(pem_certificates(handle.read()))
        except OSError:
            continue
    found: list[x509.Certificate] = []
    for der in dict.fromkeys(blobs):
        try:
            found.append(x509.load_der_x509_certificate(der))
        except ValueError:
            continue
    return found


def _same(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.public_bytes(serialization.Encoding.DER) == b.public_bytes(serialization.Encoding.DER)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _self_signed(cert: x509.Certificate) -> bool:
    return _issued_by(cert, cert)


def _in_time(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def build_chain(
    leaf: x509.Certificate, trusted: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    """``leaf`` and its issuers found in ``trusted``, up to a self-signed root if there."""
    chain = [leaf]
    while len(chain) < MAX_CHAIN and not _self_signed(chain[-1]):
        issuer = next((c for c in trusted if _issued_by(chain[-1], c)), None)
        if issuer is None or any(_same(issuer, c) for c in chain):
            break
        chain.append(issuer)
    return chain


def peer_chain(
    sslobj: ssl.SSLObject | ssl.SSLSocket, trusted: Sequence[x509.Certificate]
) -> list[x509.Certificate] | None:
    """The verified chain of the peer, leaf first (None: the peer sent no certificate)."""
    verified = getattr(sslobj, "get_verified_chain", None)  # Python >= 3.13
    if verified is not None:
        # SSLObject/SSLSocket hand out DER bytes; the _ssl layer's Certificate objects
        # (PEM text from public_bytes() by default) are accepted too.
        ders = [
            item if isinstance(item, bytes) else ssl.PEM_cert_to_DER_cert(item.public_bytes())
            for item in verified()
        ]
        if ders:
            return [x509.load_der_x509_certificate(d) for d in ders]
    der = sslobj.getpeercert(binary_form=True)
    if der is None:
        return None
    return build_chain(x509.load_der_x509_certificate(der), trusted)


# --- one answer ---------------------------------------------------------------------------


def _key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's value, which CertID and byKey responder ids hash."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    offset = _skip_header(spki, 0)  # into SEQUENCE SubjectPublicKeyInfo
    offset = _skip_element(spki, offset)  # past AlgorithmIdentifier
    start = _skip_header(spki, offset)  # into the BIT STRING
    return spki[start + 1 :]  # after the "unused bits" byte


def _skip_header(der: bytes, offset: int) -> int:
    length = der[offset + 1]
    if length < 0x80:
        return offset + 2
    return offset + 2 + (length & 0x7F)


def _skip_element(der: bytes, offset: int) -> int:
    length = der[offset + 1]
    if length < 0x80:
        return offset + 2 + length
    count = length & 0x7F
    size = int.from_bytes(der[offset + 2 : offset + 2 + count], "big")
    return offset + 2 + count + size


def _hash(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize()


def _verify_signature(
    key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None
) -> None:
    """Raise ``InvalidSignature`` unless ``key`` signed ``data`` (PKCS#1 v1.5, ECDSA, EdDSA)."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, data)
    elif algorithm is None:
        raise InvalidSignature("no hash algorithm for the signature")
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(algorithm))
    else:
        raise InvalidSignature("unsupported key type")


def _can_sign_ocsp(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in usage


def _matches_responder_id(cert: x509.Certificate, response: ocsp.OCSPResponse) -> bool:
    if response.responder_name is not None:
        return cert.subject == response.responder_name
    key_hash = response.responder_key_hash
    return key_hash is not None and hashlib.sha1(_key_bits(cert)).digest() == key_hash


@dataclass(frozen=True, slots=True)
class AnswerContext:
    """Everything ``judge_response`` compares an answer with."""

    cert: x509.Certificate
    issuer: x509.Certificate
    chain: Sequence[x509.Certificate]  # the verified chain (stunnel's chain_to_verify)
    trusted: Sequence[x509.Certificate]  # CAfile/CApath
    flags: frozenset[str]
    nonce: bytes | None
    now: datetime.datetime


def _signer_problem(response: ocsp.OCSPResponse, ctx: AnswerContext) -> str | None:
    """Why the response's signer cannot be accepted (None: it can)."""
    flags = ctx.flags
    embedded = [] if "NOINTERN" in flags else list(response.certificates)
    signer = next((c for c in ctx.chain if _matches_responder_id(c, response)), None)
    from_chain = signer is not None
    if signer is None:
        signer = next((c for c in embedded if _matches_responder_id(c, response)), None)
    if signer is None:
        return "signer certificate not found"
    if "NOSIGS" not in flags:
        try:
            _verify_signature(
                signer.public_key(),
                response.signature,
                response.tbs_response_bytes,
                response.signature_hash_algorithm,
            )
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
            return "the response's signature does not verify"
    if "NOVERIFY" in flags or (from_chain and "TRUSTOTHER" in flags):
        return None
    untrusted = [] if "NOCHAIN" in flags else [*embedded, *ctx.chain]
    why = _untrusted_signer(signer, untrusted, ctx)
    if why is not None:
        return why
    if "NOCHECKS" in flags:
        return None
    if _same(signer, ctx.issuer) or (
        signer.subject == ctx.issuer.subject and _key_bits(signer) == _key_bits(ctx.issuer)
    ):
        if "NOCASIGN" in flags:
            return "the response is signed by the issuing CA and OCSPflag = NOCASIGN forbids it"
        return None
    if _issued_by(signer, ctx.issuer) and _can_sign_ocsp(signer):
        if "NODELEGATED" in flags:
            return "the response is signed by a delegated responder and OCSPflag = NODELEGATED"
        return None
    return (
        "the signer is neither the issuing CA nor a responder it delegated "
        "(OCSPSigning extended key usage)"
    )


def _untrusted_signer(
    signer: x509.Certificate, untrusted: Sequence[x509.Certificate], ctx: AnswerContext
) -> str | None:
    """Walk from the signer to a CAfile/CApath certificate (OCSP_basic_verify's chain)."""
    current = signer
    for _ in range(MAX_CHAIN):
        if "NOTIME" not in ctx.flags and not _in_time(current, ctx.now):
            return "the signer's certificate chain has a certificate outside its validity"
        if any(_same(current, t) for t in ctx.trusted):
            return None
        anchor = next((t for t in ctx.trusted if _issued_by(current, t)), None)
        if anchor is not None:
            return None
        step = next(
            (c for c in untrusted if _issued_by(current, c) and not _same(c, current)), None
        )
        if step is None:
            return "the signer's certificate does not chain to CAfile/CApath"
        current = step
    return "the signer's certificate chain is too long"


def _find_entry(response: ocsp.OCSPResponse, ctx: AnswerContext) -> ocsp.OCSPSingleResponse | None:
    for single in response.responses:
        algorithm = single.hash_algorithm
        if (
            single.serial_number == ctx.cert.serial_number
            and single.issuer_name_hash == _hash(algorithm, ctx.issuer.subject.public_bytes())
            and single.issuer_key_hash == _hash(algorithm, _key_bits(ctx.issuer))
        ):
            return single
    return None


def _stamp(moment: datetime.datetime) -> str:
    return moment.astimezone().strftime("%Y.%m.%d %H:%M:%S")  # stunnel's log_time


def judge_response(der: bytes, ctx: AnswerContext) -> Finding:
    """Check one DER answer against ``ctx``: good, revoked or unknown, with its log lines."""
    lines: list[tuple[int, str]] = [(DEBUG, "OCSP: Validate the OCSP response")]

    def unknown(level: int, text: str) -> Finding:
        lines.append((level, text))
        return Finding(Status.UNKNOWN, tuple(lines))

    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError:
        return unknown(ERR, "OCSP: the responder's answer is not an OCSP response")
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        code = response.response_status
        name = _RESPONSE_STATUS.get(code, "(UNKNOWN)")
        return unknown(ERR, f"OCSP: OCSP responder error: {code.value}: {name}")
    if ctx.nonce is not None:
        try:
            answered = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            answered = None
        if answered != ctx.nonce:
            return unknown(ERR, "OCSP: Invalid or unsupported nonce")
    problem = _signer_problem(response, ctx)
    if problem is not None:
        return unknown(ERR, f"OCSP: the response cannot be trusted: {problem}")
    single = _find_entry(response, ctx)
    if single is None:
        return unknown(WARNING, "OCSP: the response has no entry for this certificate")
    status = {
        ocsp.OCSPCertStatus.GOOD: Status.GOOD,
        ocsp.OCSPCertStatus.REVOKED: Status.REVOKED,
    }.get(single.certificate_status, Status.UNKNOWN)
    lines.append((INFO, f"OCSP: Status: {status}"))
    this_update = single.this_update_utc
    next_update = single.next_update_utc
    lines.append((INFO, f"OCSP: This update: {_stamp(this_update)}"))
    if next_update is not None:
        lines.append((INFO, f"OCSP: Next update: {_stamp(next_update)}"))
    if this_update > ctx.now + LEEWAY:
        lines.append((ERR, "OCSP: the response is not valid yet (thisUpdate is in the future)"))
        status = Status.UNKNOWN
    elif next_update is not None and next_update < ctx.now - LEEWAY:
        lines.append((ERR, "OCSP: the response has expired (nextUpdate has passed)"))
        status = Status.UNKNOWN
    if status == Status.GOOD:
        lines.append((NOTICE, "OCSP: Certificate accepted"))
    elif status == Status.REVOKED:
        reason = single.revocation_reason
        if reason is None:
            lines.append((ERR, "OCSP: Certificate revoked"))
        else:
            lines.append(
                (ERR, f"OCSP: Certificate revoked: {_REASON_CODES[reason]}: {reason.value}")
            )
        revoked_at = single.revocation_time_utc
        if revoked_at is not None:
            lines.append((NOTICE, f"OCSP: Revoked at: {_stamp(revoked_at)}"))
    else:
        lines.append((WARNING, "OCSP: Unknown verification status"))
    return Finding(status, tuple(lines), next_update)


# --- asking -------------------------------------------------------------------------------


def build_request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None) -> bytes:
    """The DER request about ``cert`` (SHA-1 CertID, as OpenSSL's default), with ``nonce``."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def aia_urls(cert: x509.Certificate) -> list[str]:
    """The OCSP responder URLs in the certificate's Authority Information Access."""
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [
        str(d.access_location.value)
        for d in access
        if d.access_method == x509.oid.AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]


class OCSPChecker:
    """One service's OCSP checks; ``check`` runs once per new TLS session."""

    def __init__(self, settings: OCSPSettings, trusted: Iterable[x509.Certificate]) -> None:
        self.settings = settings
        self.trusted = list(trusted)
        self._url = ResponderURL.parse(settings.url) if settings.url else None

    async def check(self, sslobj: ssl.SSLObject | ssl.SSLSocket, log: LogFunction) -> str | None:
        """None to let the peer in, or why its certificate is refused."""
        if sslobj.session_reused:
            log(DEBUG, "OCSP: previous session reused: its certificate was checked then")
            return None
        chain = peer_chain(sslobj, self.trusted)
        if chain is None:
            return None  # requireCert = no and no certificate: nothing to check
        last = len(chain) - 1 if _self_signed(chain[-1]) else len(chain)
        # Client mode asks servers to staple (stapling.py): a staple answers for the leaf.
        staple = None if sslobj.server_side else received_staple(sslobj)
        if staple is None and not sslobj.server_side:
            log(INFO, "OCSP: No OCSP stapling response received")
        for depth in range(last):
            status = await self._check_one(chain, depth, log, staple if depth == 0 else None)
            if status == Status.REVOKED:
                log(ERR, "OCSP: Rejected (revoked)")
                return f"certificate at depth {depth} revoked (OCSP)"
            if status == Status.UNKNOWN:
                if self.settings.require:
                    log(ERR, "OCSP: Rejected (OCSPrequire = yes)")
                    return f"no conclusive OCSP answer for the certificate at depth {depth}"
                log(NOTICE, "OCSP: Accepted (OCSPrequire = no)")
            elif status == Status.GOOD:
                log(NOTICE, "OCSP: Accepted (good)")
        return None

    async def _check_one(
        self,
        chain: Sequence[x509.Certificate],
        depth: int,
        log: LogFunction,
        staple: bytes | None = None,
    ) -> str | None:
        """The status of ``chain[depth]``; None when there was nothing to ask.  A stapled
        answer is judged like the responder's (without a nonce: a staple cannot carry
        ours) and, when conclusive, spares the request; otherwise the responders are asked."""
        cert = chain[depth]
        if staple is not None and depth + 1 < len(chain):
            log(INFO, "OCSP: OCSP stapling response received")
            status = self._judge(staple, chain, depth, None, log)
            if status != Status.UNKNOWN:
                return status
        urls: list[tuple[str, str]] = []
        if depth == 0 and self.settings.url:
            urls.append(("configured", self.settings.url))
        if self.settings.aia:
            aia = aia_urls(cert)
            if not aia:
                log(INFO, "OCSP: No AIA responder URL")
            urls += [("AIA", url) for url in aia]
        if not urls:
            return None
        if depth + 1 >= len(chain):
            log(
                ERR,
                "OCSP: the issuer of the certificate at depth "
                f"{depth} ({cert.issuer.rfc4514_string()}) is not in CAfile/CApath, so no "
                "OCSP request can be made (before Python 3.13 the intermediate certificates "
                "the peer sent cannot be read: add them to CAfile)",
            )
            return Status.UNKNOWN
        status = Status.UNKNOWN
        for kind, url in urls:
            log(NOTICE, f'OCSP: Connecting the {kind} responder "{url}"')
            status = await self._ask(url, chain, depth, log)
            if status != Status.UNKNOWN:
                break
        return status

    async def _ask(
        self, url_text: str, chain: Sequence[x509.Certificate], depth: int, log: LogFunction
    ) -> str:
        try:
            url = (
                self._url
                if self._url is not None and url_text == self.settings.url
                else ResponderURL.parse(url_text)
            )
        except ValueError as exc:
            log(ERR, f"OCSP: cannot use the responder URL: {exc}")
            return Status.UNKNOWN
        nonce = secrets.token_bytes(16) if self.settings.nonce else None
        request = build_request(chain[depth], chain[depth + 1], nonce)
        started = time.monotonic()
        try:
            answer = await post_ocsp_request(url, request, self.settings.timeout)
        except TimeoutError:
            log(
                ERR,
                f'OCSP: the responder "{url.text}" did not answer within TIMEOUTocsp = '
                f"{self.settings.timeout:g} s",
            )
            return Status.UNKNOWN
        except ResponderError as exc:
            log(ERR, f'OCSP: the responder "{url.text}" failed: {exc}')
            return Status.UNKNOWN
        log(DEBUG, f"OCSP: Response received in {time.monotonic() - started:.3f} s")
        return self._judge(answer, chain, depth, nonce, log)

    def _judge(
        self,
        answer: bytes,
        chain: Sequence[x509.Certificate],
        depth: int,
        nonce: bytes | None,
        log: LogFunction,
    ) -> str:
        ctx = AnswerContext(
            cert=chain[depth],
            issuer=chain[depth + 1],
            chain=chain,
            trusted=self.trusted,
            flags=self.settings.flags,
            nonce=nonce,
            now=datetime.datetime.now(datetime.UTC),
        )
        finding = judge_response(answer, ctx)
        for level, text in finding.lines:
            log(level, text)
        return finding.status
