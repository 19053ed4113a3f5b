"""The router: the only process with open ports; it admits endpoints, matches dialers to
hosts and relays ciphertext frames. It never holds end-to-end keys (tests/arch checks that
this package does not import the end-to-end crypto)."""

from umbranet.router.server import Router, RouterConfig

__all__ = ["Router", "RouterConfig"]
