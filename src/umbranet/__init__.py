"""Umbranet: a zero-trust overlay network.

Applications reach dark services by name through routers; every stream is tied to a
cryptographic identity, authorized before connect, and end-to-end encrypted.
"""

__version__ = "0.1.0"
