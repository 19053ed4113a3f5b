"""WireGuard, as published, as a sans-IO machine: the data plane of Umbranet's network mode.

`Device` is one interface: a static X25519 key (an identity's Noise key, the one bound in
its SVID, so there is no second key to manage: pass `IdentityFile.noise_private_key`), peers
by public key with their allowed IPs, and the protocol's handshake, cookie, transport and
timer rules. The modules, smallest first:

    crypto      HASH, MAC, HMAC, KDF1-3, AEAD, XAEAD (with HChaCha20), TAI64N
    messages    the four message layouts and their parsers
    replay      the 2048-bit anti-replay window (RFC 6479 style)
    handshake   Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, one function per message and side
    cookie      MAC1/MAC2 and cookie replies under load
    ratelimit   per-source token buckets for handshakes under load
    timers      the protocol's constants and timer names
    config      DeviceConfig (load threshold), NoiseIdentity
    peer, ip    per-peer state; cryptokey routing by allowed IPs
    transport   sealing and opening transport data, one packet or a burst at a time
    device      the machine: handle_datagram(s) / send_packet(s) / handle_timeout, poll_*
"""

from umbranet.proto.wireguard.config import DeviceConfig, NoiseIdentity
from umbranet.proto.wireguard.device import Device
from umbranet.proto.wireguard.events import Event, HandshakeCompleted, PacketsReceived, PeerSilent
from umbranet.proto.wireguard.peer import Address

__all__ = [
    "Address",
    "Device",
    "DeviceConfig",
    "Event",
    "HandshakeCompleted",
    "NoiseIdentity",
    "PacketsReceived",
    "PeerSilent",
]
