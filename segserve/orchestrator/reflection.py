"""gRPC server reflection: `grpcurl list` and `grpcurl describe` work against the orchestrator
with no .proto file on the client."""
from __future__ import annotations

from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from segserve.api import load as load_api

PROTOS = ("segmentation", "automask", "video")  # proto/segserve/v1/<name>.proto


def service_names() -> list[str]:
    """Every service the orchestrator answers: those of each segserve proto, health, reflection."""
    names = [service.full_name for proto in PROTOS
             for service in load_api(proto)[0].DESCRIPTOR.services_by_name.values()]
    return [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]


class _MethodResolvingPool:
    """The default descriptor pool, also answering "which file holds symbol Service.Method": the
    pure-C (upb) pool finds services, messages and fields but not methods, so without this
    `grpcurl describe segserve.v1.Segmentation.MaskFromPrompt` gets NOT_FOUND."""

    def __init__(self, pool):
        self._pool = pool

    def __getattr__(self, name):
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol):  # noqa: N802 (the DescriptorPool API)
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            try:
                found = self._pool.FindServiceByName(service)
            except KeyError:
                found = None
            if found is None or method not in found.methods_by_name:
                raise
            return found.file


def enable(server) -> None:
    reflection.enable_server_reflection(service_names(), server,
                                        pool=_MethodResolvingPool(descriptor_pool.Default()))
