"""gRPC server reflection on the orchestrator: what `grpcurl list` and `grpcurl describe` ask, with
no .proto on the client. Reflection needs no Triton, so the orchestrator runs alone here."""
from __future__ import annotations

import shutil
import socket
import subprocess

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

EXPECTED = {"segserve.v1.Segmentation", "segserve.v1.AutoMask", "segserve.v1.VideoTracking",
            "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def address():
    from segserve.orchestrator import server as orchestrator_server
    from segserve.orchestrator.settings import Settings

    # A Triton address nobody listens on: health says NOT_SERVING, reflection still answers.
    running = orchestrator_server.start(Settings(triton_url=f"127.0.0.1:{_free_port()}", grpc_port=0,
                                                 metrics_port=-1))
    yield running.address
    running.stop(0)


@pytest.fixture(scope="module")
def channel(address):
    with grpc.insecure_channel(address) as ch:
        yield ch


def test_reflection_lists_every_service(channel):
    """The raw ServerReflection stream, as `grpcurl list` uses it."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=10))
    assert len(replies) == 1
    listed = {s.name for s in replies[0].list_services_response.service}
    assert listed == EXPECTED


def test_reflection_resolves_methods_and_messages(channel):
    """`grpcurl describe`: every method of every segserve service resolves, with its message types,
    from the server alone."""
    from segserve.api import load

    database = ProtoReflectionDescriptorDatabase(channel)
    assert set(database.get_services()) == EXPECTED
    pool = descriptor_pool.DescriptorPool(database)
    for proto in ("segmentation", "automask", "video"):
        for local in load(proto)[0].DESCRIPTOR.services_by_name.values():
            remote = pool.FindServiceByName(local.full_name)
            assert [m.name for m in remote.methods] == [m.name for m in local.methods]
            for method in local.methods:
                got = remote.methods_by_name[method.name]
                assert got.input_type.full_name == method.input_type.full_name
                assert got.output_type.full_name == method.output_type.full_name
    mask = pool.FindMethodByName("segserve.v1.Segmentation.MaskFromPrompt")
    fields = {f.name for f in mask.input_type.fields}
    assert {"image", "image_id", "points", "boxes", "text"} <= fields, fields
    health = pool.FindServiceByName("grpc.health.v1.Health").methods_by_name["Check"]
    assert health.output_type.full_name == "grpc.health.v1.HealthCheckResponse"


def test_reflection_finds_the_file_of_a_method(channel):
    """`grpcurl describe segserve.v1.Segmentation.MaskFromPrompt` asks for the file containing the
    method's full name (the pure-C protobuf pool alone answers NOT_FOUND: reflection.py)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    for symbol, proto in (("segserve.v1.Segmentation.MaskFromPrompt", "segserve/v1/segmentation.proto"),
                          ("segserve.v1.VideoTracking.Propagate", "segserve/v1/video.proto"),
                          ("grpc.health.v1.Health.Check", "grpc_health/v1/health.proto")):
        [reply] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=symbol)]), timeout=10)
        assert reply.WhichOneof("message_response") == "file_descriptor_response", (symbol, reply.error_response)
        files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in
                 reply.file_descriptor_response.file_descriptor_proto]
        assert files[0].name == proto
        service, _, method = symbol.rpartition(".")
        assert method in [m.name for s in files[0].service if f"{files[0].package}.{s.name}" == service
                          for m in s.method]
    [reply] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="segserve.v1.Segmentation.NoSuchMethod")]), timeout=10)
    assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


@pytest.mark.skipif(shutil.which("grpcurl") is None, reason="grpcurl is not on PATH")
def test_grpcurl_lists_and_describes(address):
    listed = subprocess.run(["grpcurl", "-plaintext", address, "list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and set(listed.stdout.split()) == EXPECTED, listed.stderr
    described = subprocess.run(["grpcurl", "-plaintext", address, "describe", "segserve.v1.Segmentation.MaskFromPrompt"],
                               capture_output=True, text=True, timeout=60)
    assert described.returncode == 0, described.stderr
    assert "rpc MaskFromPrompt ( .segserve.v1.MaskFromPromptRequest )" in described.stdout


def test_client_health_check_bytes_are_the_health_protos():
    """The bare client speaks grpc.health.v1 Check without grpcio-health-checking (segserve.client):
    its bytes must be what the generated messages serialise to."""
    from grpc_health.v1 import health_pb2

    from segserve.client import _HEALTH_SERVING, _health_request

    for service in ("", "segserve.v1.Segmentation", "liveness"):
        assert _health_request(service) == health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert _HEALTH_SERVING == health_pb2.HealthCheckResponse(
        status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()
    for status in (health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.UNKNOWN):
        assert health_pb2.HealthCheckResponse(status=status).SerializeToString() != _HEALTH_SERVING
