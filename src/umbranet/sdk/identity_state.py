"""Which copy of an identity to start from: the identity file, or the writable state file
an earlier run saved a renewal to (`Context.from_file(..., state_path=...)`)."""

from __future__ import annotations

import logging
from pathlib import Path

from umbranet.pki import IdentityFile, PkiError

__all__ = ["newest"]

log = logging.getLogger("umbranet.sdk")


def newest(identity: IdentityFile, state: Path) -> IdentityFile:
    """The identity file's content, or the state file's when it is the same identity with a
    later certificate; a missing or unusable state file is ignored (renewals will rewrite it)."""
    try:
        saved = IdentityFile.load(state)
    except (OSError, ValueError, PkiError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("ignoring the identity state file %s: %s", state, exc)
        return identity
    if saved.spiffe_id != identity.spiffe_id:
        log.warning("ignoring %s: it holds %s, not %s", state, saved.spiffe_id, identity.spiffe_id)
        return identity
    # Ties go to the state file: only renewals write it, and a renewal in the same second as
    # the enrollment is newer. A later re-enrollment (a new identity file) wins by its date.
    if saved.certificate.not_valid_before_utc >= identity.certificate.not_valid_before_utc:
        return saved
    return identity
