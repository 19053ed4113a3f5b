"""Sans-IO protocol state machines: Noise handshakes, end-to-end sessions, flow control."""
