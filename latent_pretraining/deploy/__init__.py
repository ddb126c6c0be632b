"""The policy server: a bundled policy over HTTP (OpenVLA's REST convention) and a websocket (openpi's),
with dynamic batching of concurrent requests."""
