"""Ray Serve deployments and ingress (HTTP, gRPC, openpi WebSocket) for policies."""
