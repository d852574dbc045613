"""HTTP ingress: the aiohttp application, its views and payload decoding."""
