"""gRPC bindings of `gauntlet.v1.PolicyService` (policy.proto), built from one table of its methods.

protoc's gRPC plugin writes one stub block and one handler block per method; the service is small
and fixed, so this module spells the method table once and derives the client stub and the server
registration from it. The names match what the plugin would generate (`PolicyServiceStub`,
`PolicyServiceServicer`, `add_PolicyServiceServicer_to_server`), which is what Ray Serve's
`grpc_servicer_functions` and gRPC clients expect. The messages stay protoc-generated (policy_pb2).
"""

from __future__ import annotations

from typing import Any

import grpc

from gauntlet.deployments.proto import policy_pb2

SERVICE = "gauntlet.v1.PolicyService"
# method -> (request message, response message), as declared in policy.proto
METHODS: dict[str, tuple[Any, Any]] = {
    "Infer": (policy_pb2.InferRequest, policy_pb2.InferResponse),
    "Metadata": (policy_pb2.MetadataRequest, policy_pb2.MetadataResponse),
}


class PolicyServiceStub:
    """Client: one unary-unary callable per method (`stub.Infer(request, metadata=...)`)."""

    def __init__(self, channel: grpc.Channel):
        for name, (request, response) in METHODS.items():
            setattr(self, name, channel.unary_unary(
                f"/{SERVICE}/{name}", request_serializer=request.SerializeToString,
                response_deserializer=response.FromString, _registered_method=True))


class PolicyServiceServicer:
    """Server base: every method answers UNIMPLEMENTED until a subclass overrides it."""

    def _unimplemented(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details("Method not implemented!")
        raise NotImplementedError("Method not implemented!")

    Infer = _unimplemented
    Metadata = _unimplemented


def add_PolicyServiceServicer_to_server(servicer: Any, server: Any) -> None:  # noqa: N802 - protoc's name
    """Registers `servicer`'s methods on `server` (a grpc server, or Ray Serve's gRPC proxy)."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=request.FromString,
            response_serializer=response.SerializeToString)
        for name, (request, response) in METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
