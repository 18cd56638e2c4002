"""A small gRPC client for the policy service (Serve's gRPC proxy routes on the `application` key)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from gauntlet.deployments.app import APP_NAME
from gauntlet.keys import ACTIONS_KEY, PROMPT_KEY, SERVER_TIMING_KEY


class PolicyGrpcClient:
    def __init__(self, target: str = "127.0.0.1:9000", application: str = APP_NAME, timeout_s: float = 30.0,
                 api_key: str | None = None):
        import grpc

        from gauntlet.deployments.proto import policy_pb2_grpc

        self.channel = grpc.insecure_channel(target)
        self.stub = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (("application", application),)
        if api_key:
            self.metadata += (("authorization", f"Api-Key {api_key}"),)
        self.timeout_s = timeout_s

    def infer(self, policy: str, observation: dict[str, Any], adapter: str = "") -> dict[str, Any]:
        """One observation -> {"actions": (H, D), "server_timing": {...}}; raises grpc.RpcError."""
        from gauntlet.deployments.proto import policy_pb2
        from gauntlet.deployments.tensors import from_tensor, to_tensor

        tensors = {k: to_tensor(np.asarray(v), policy_pb2.Tensor) for k, v in observation.items() if k != PROMPT_KEY}
        request = policy_pb2.InferRequest(policy=policy, observation=tensors,
                                          prompt=str(observation.get(PROMPT_KEY, "")), adapter=adapter)
        reply = self.stub.Infer(request, metadata=self.metadata, timeout=self.timeout_s)
        return {ACTIONS_KEY: from_tensor(reply.actions, ACTIONS_KEY), SERVER_TIMING_KEY: dict(reply.server_timing)}

    def policy_metadata(self, policy: str) -> dict[str, Any]:
        from gauntlet.deployments.proto import policy_pb2

        reply = self.stub.Metadata(policy_pb2.MetadataRequest(policy=policy), metadata=self.metadata,
                                   timeout=self.timeout_s)
        return json.loads(reply.json)

    def close(self) -> None:
        self.channel.close()
