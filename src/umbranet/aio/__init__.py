"""asyncio shells: TLS contexts, the framed link protocol, the controller client."""
