"""TLS contexts for links and the controller, built from an identity file.

Links are mutual TLS 1.3. OpenSSL checks the chain against the network CA during the
handshake; the SPIFFE rules (one URI SAN, trust domain, leaf not a CA, validity at `now`)
are checked afterwards by `peer_svid`, with the same code every component uses.
Host names are not checked on links: peers are named by SPIFFE ID, not DNS.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import ssl
import tempfile
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from umbranet.pki import (
    IdentityFile,
    PkiError,
    TrustBundle,
    VerifiedPeer,
    key_from_pem,
    verify_svid,
)


def load_identity(context: ssl.SSLContext, identity: IdentityFile) -> None:
    """Load the identity's key and certificate into `context` without writing the key to disk.

    The ssl module reads keys only from a path. On Linux the path is an anonymous memory file
    (`os.memfd_create`, reached as ``/proc/self/fd/N``): it has no name in any file system and
    vanishes with its descriptor. Where that is missing (other systems, no /proc) the key goes
    through a private temporary file, but encrypted with a random one-time password that only
    this process ever holds, and the file is removed right after loading.
    """
    if not _load_from_memory(context, identity):
        _load_through_sealed_file(context, identity)


def _load_from_memory(context: ssl.SSLContext, identity: IdentityFile) -> bool:
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None or not os.path.isdir("/proc/self/fd"):
        return False
    try:
        fd = memfd_create("umbra-identity", getattr(os, "MFD_CLOEXEC", 0))
    except OSError:
        return False
    try:
        os.write(fd, identity.key_pem + b"\n" + identity.cert_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return True


def _load_through_sealed_file(context: ssl.SSLContext, identity: IdentityFile) -> None:
    password = secrets.token_bytes(32)
    sealed = key_from_pem(identity.key_pem).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    with tempfile.TemporaryDirectory(prefix="umbra-") as tmp:
        os.chmod(tmp, 0o700)
        path = os.path.join(tmp, "identity.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(sealed + b"\n" + identity.cert_pem)
        context.load_cert_chain(path, password=password)


def link_client_context(identity: IdentityFile) -> ssl.SSLContext:
    """Client side of an endpoint -> router link."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context, identity.bundle)
    context.check_hostname = False
    load_identity(context, identity)
    return context


def link_server_context(identity: IdentityFile) -> ssl.SSLContext:
    """Server side of a router's link listener: a client certificate is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, identity.bundle)
    load_identity(context, identity)
    return context


def _harden(context: ssl.SSLContext, bundle: TrustBundle) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=bundle.ca_pem)
    # Links are long-lived and multiplexed: tickets for resumption buy nothing.
    context.options |= ssl.OP_NO_TICKET
    context.sslobject_class = DirectSSLObject


class DirectSSLObject(ssl.SSLObject):
    """An `ssl.SSLObject` whose read, write and pending are the C methods themselves.

    The event loop's TLS transport calls these three for every record it moves: a link read
    costs two `pending` and one or two `read`, a link write one `write`. `SSLObject`'s own
    versions are Python methods that only pass their arguments on, so each call cost a Python
    frame: 16 per request/response round trip through a router. The loop calls `read` with a
    size and, when it reads into a buffer, that buffer (never None), which the C method takes
    as it is; errors are the same exceptions, raised by the same code.
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:
        obj: DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        raw = obj._sslobj  # type: ignore[attr-defined]
        obj.read = raw.read  # type: ignore[method-assign]
        obj.write = raw.write  # type: ignore[method-assign]
        obj.pending = raw.pending  # type: ignore[method-assign]
        return obj


def peer_svid(transport: asyncio.BaseTransport, bundle: TrustBundle, now: datetime) -> VerifiedPeer:
    """The verified SPIFFE identity of the peer on a TLS transport, or PkiError."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise PkiError("cert_untrusted", "peer presented no certificate")
    return verify_svid([x509.load_der_x509_certificate(der)], bundle, now)
