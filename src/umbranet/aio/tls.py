"""TLS contexts for links and the controller, built from an identity file.

Links are mutual TLS 1.3. OpenSSL checks the chain against the network CA during the
handshake; the SPIFFE rules (one URI SAN, trust domain, leaf not a CA, validity at `now`)
are checked afterwards by `peer_svid`, with the same code every component uses.
Host names are not checked on links: peers are named by SPIFFE ID, not DNS.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from datetime import datetime

from cryptography import x509

from umbranet.pki import IdentityFile, PkiError, TrustBundle, VerifiedPeer, verify_svid


def load_identity(context: ssl.SSLContext, identity: IdentityFile) -> None:
    """Load the identity's key and certificate into `context`.

    The ssl module reads keys only from files, so the key goes through a private temporary
    directory (mode 0700) and is deleted right after loading.
    """
    with tempfile.TemporaryDirectory(prefix="umbra-") as tmp:
        os.chmod(tmp, 0o700)
        path = os.path.join(tmp, "identity.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(identity.key_pem + b"\n" + identity.cert_pem)
        context.load_cert_chain(path)


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


def peer_svid(transport: asyncio.BaseTransport, bundle: TrustBundle, now: datetime) -> VerifiedPeer:
    """The verified SPIFFE identity of the peer on a TLS transport, or PkiError."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise PkiError("cert_untrusted", "peer presented no certificate")
    return verify_svid([x509.load_der_x509_certificate(der)], bundle, now)
