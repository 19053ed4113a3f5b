"""The identity file: everything an endpoint needs to join the network, in one JSON file.

Written at enrollment, rewritten after each renewal, read by the SDK, the agent, routers and
the management CLI. It holds private keys, so `IdentityFile.save` writes it with mode 0600
(atomically: a temp file in the same directory, then ``os.replace``, so a crash never leaves a
half-written identity) and `IdentityFile.load` refuses a file that group or others can read.

One exception, for Kubernetes Secrets (mounted 0644 by default, or 0440 with an fsGroup so a
non-root container can read them): a file owned by root, writable by nobody else, on a
read-only mount is accepted with a warning. Nobody but root can have put it there or change
it; who else can read it is the pod's business, and the warning says how to narrow it
(``defaultMode: 0400`` on the volume).

Every field is checked on construction: the key matches the certificate, the certificate's
SPIFFE ID is ``spiffe_id`` in the bundle's trust domain and was issued by a bundle CA, and the
certificate's Noise key (if any) belongs to ``noise_private_key``. Validity *times* are not
checked here (no clock); an expired certificate is the renewal logic's business.

JSON form (version 1)::

    {"version": 1, "name": str, "spiffe_id": str, "key_pem": str, "cert_pem": str,
     "bundle": {trust bundle}, "controller_url": str, "noise_private_key": base64}
"""

import base64
import binascii
import contextlib
import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from umbranet.pki.bundle import TrustBundle
from umbranet.pki.errors import PARSE_ERRORS, PkiError
from umbranet.pki.keys import (
    NOISE_KEY_LENGTH,
    TlsPrivateKey,
    key_from_pem,
    noise_public_key_from_private,
)
from umbranet.pki.spiffe_id import SpiffeId
from umbranet.pki.svid import load_chain, noise_public_key_of, spiffe_id_of

__all__ = ["IDENTITY_FILE_MODE", "IdentityFile"]

IDENTITY_FILE_MODE = 0o600

log = logging.getLogger("umbranet.pki")
_VERSION = 1
_FIELDS = frozenset(
    {
        "version",
        "name",
        "spiffe_id",
        "key_pem",
        "cert_pem",
        "bundle",
        "controller_url",
        "noise_private_key",
    }
)
_MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class IdentityFile:
    """An enrolled identity: keys, certificate, trust bundle and where the controller is.

    Raises PkiError ``identity_file_invalid`` if the parts do not belong together.
    """

    name: str
    spiffe_id: str
    key_pem: bytes = field(repr=False)  # secrets stay out of reprs, logs and tracebacks
    cert_pem: bytes
    bundle: TrustBundle
    controller_url: str
    noise_private_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        try:
            _validate(self)
        except PkiError as exc:
            if exc.code == "identity_file_invalid":
                raise
            raise PkiError("identity_file_invalid", exc.reason) from exc

    @property
    def tls_key(self) -> TlsPrivateKey:
        return key_from_pem(self.key_pem)

    @property
    def certificate(self) -> x509.Certificate:
        """The leaf certificate (first in ``cert_pem``)."""
        return load_chain(self.cert_pem)[0]

    @property
    def certificate_chain(self) -> list[x509.Certificate]:
        return load_chain(self.cert_pem)

    @property
    def noise_public_key(self) -> bytes:
        return noise_public_key_from_private(self.noise_private_key)

    @property
    def trust_domain(self) -> str:
        return self.bundle.trust_domain

    def with_certificate(self, cert_pem: bytes) -> "IdentityFile":
        """A copy holding a renewed certificate (validated like the original)."""
        return replace(self, cert_pem=cert_pem)

    def with_bundle(self, bundle: TrustBundle) -> "IdentityFile":
        """A copy holding a refreshed trust bundle (e.g. after a ticket key rotation)."""
        return replace(self, bundle=bundle)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": _VERSION,
                "name": self.name,
                "spiffe_id": self.spiffe_id,
                "key_pem": self.key_pem.decode("ascii"),
                "cert_pem": self.cert_pem.decode("ascii"),
                "bundle": self.bundle.to_dict(),
                "controller_url": self.controller_url,
                "noise_private_key": base64.b64encode(self.noise_private_key).decode("ascii"),
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "IdentityFile":
        """Parse and validate; raises PkiError ``identity_file_invalid``."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise PkiError("identity_file_invalid", "the identity file is not JSON") from exc
        if not isinstance(data, dict) or set(data) != _FIELDS:
            raise PkiError("identity_file_invalid", f"expected exactly the keys {sorted(_FIELDS)}")
        if data["version"] != _VERSION or type(data["version"]) is not int:
            raise PkiError("identity_file_invalid", f"unsupported version {data['version']!r}")
        for key in ("name", "spiffe_id", "key_pem", "cert_pem", "controller_url"):
            if not isinstance(data[key], str):
                raise PkiError("identity_file_invalid", f"{key} must be a string")
        noise = data["noise_private_key"]
        try:
            noise_key = base64.b64decode(noise, validate=True) if isinstance(noise, str) else b""
            bundle = TrustBundle.from_dict(data["bundle"])
            key_pem = data["key_pem"].encode("ascii")
            cert_pem = data["cert_pem"].encode("ascii")
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise PkiError("identity_file_invalid", "a field is not valid base64 or PEM") from exc
        except PkiError as exc:
            raise PkiError("identity_file_invalid", f"bundle: {exc.reason}") from exc
        return cls(
            name=data["name"],
            spiffe_id=data["spiffe_id"],
            key_pem=key_pem,
            cert_pem=cert_pem,
            bundle=bundle,
            controller_url=data["controller_url"],
            noise_private_key=noise_key,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically with mode 0600 (temp file in the same directory, then replace)."""
        target = Path(path)
        data = self.to_json().encode("ascii") + b"\n"
        # mkstemp creates the file 0600 and O_EXCL, so the secret is never readable by others.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), IDENTITY_FILE_MODE)
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "IdentityFile":
        """Read and validate; raises PkiError ``identity_file_insecure`` if group/other may
        access it (unless it is a read-only root-owned mount, see the module doc),
        ``identity_file_invalid`` if its content is wrong, OSError if unreadable."""
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077 and not _read_only_root_mount(handle.fileno(), info):
                raise PkiError(
                    "identity_file_insecure",
                    f"{os.fspath(path)} is accessible by group or others (mode {mode:o}); run "
                    "chmod 600 on it, or for a Kubernetes Secret set defaultMode: 0400 on "
                    "the volume",
                )
            if mode & 0o077:
                log.warning(
                    "identity file %s is readable by group or others (mode %o) but owned by "
                    "root on a read-only mount (a Kubernetes Secret?): accepted; set "
                    "defaultMode: 0400 on the volume to keep other users in the container "
                    "from reading the key",
                    os.fspath(path),
                    mode,
                )
            data = handle.read(_MAX_FILE_BYTES + 1)
        if len(data) > _MAX_FILE_BYTES:
            raise PkiError("identity_file_invalid", "the identity file is too large")
        return cls.from_json(data)


def _read_only_root_mount(fd: int, info: os.stat_result) -> bool:
    """Owned by root, writable by root alone, on a file system mounted read-only."""
    if info.st_uid != 0 or stat.S_IMODE(info.st_mode) & 0o022:
        return False
    try:
        return bool(os.fstatvfs(fd).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _validate(identity: IdentityFile) -> None:
    def invalid(reason: str) -> PkiError:
        return PkiError("identity_file_invalid", reason)

    for field_name in ("name", "spiffe_id", "controller_url"):
        value: Any = getattr(identity, field_name)
        if not isinstance(value, str) or not value:
            raise invalid(f"{field_name} must be a non-empty string")
    if not isinstance(identity.key_pem, bytes) or not isinstance(identity.cert_pem, bytes):
        raise invalid("key_pem and cert_pem must be bytes")
    if not isinstance(identity.bundle, TrustBundle):
        raise invalid("bundle must be a TrustBundle")
    if (
        not isinstance(identity.noise_private_key, bytes)
        or len(identity.noise_private_key) != NOISE_KEY_LENGTH
    ):
        raise invalid("noise_private_key must be 32 bytes")

    spiffe_id = SpiffeId.parse(identity.spiffe_id)
    if spiffe_id.trust_domain != identity.bundle.trust_domain:
        raise invalid("spiffe_id is not in the bundle's trust domain")
    # The controller's own ID has no kind/name; its name is the last path segment.
    expected_name = spiffe_id.name or (spiffe_id.segments[-1] if spiffe_id.segments else None)
    if identity.name != expected_name:
        raise invalid("name does not match the SPIFFE ID")

    key = key_from_pem(identity.key_pem)
    leaf = load_chain(identity.cert_pem)[0]
    try:
        leaf_public_key = leaf.public_key()
    except PARSE_ERRORS as exc:
        raise invalid("the certificate's public key cannot be read") from exc
    if leaf_public_key != key.public_key():
        raise invalid("the key does not match the certificate")
    if spiffe_id_of(leaf) != spiffe_id:
        raise invalid("the certificate is not for spiffe_id")
    noise_key = noise_public_key_of(leaf)
    if noise_key is not None and noise_key != noise_public_key_from_private(
        identity.noise_private_key
    ):
        raise invalid("the certificate's Noise key does not match noise_private_key")
    if not _issued_by_bundle(leaf, identity.bundle):
        raise invalid("the certificate was not issued by a CA in the bundle")


def _issued_by_bundle(leaf: x509.Certificate, bundle: TrustBundle) -> bool:
    for ca in bundle.ca_certificates:
        try:
            leaf.verify_directly_issued_by(ca)
        except InvalidSignature:
            continue
        except PARSE_ERRORS:
            continue
        return True
    return False
