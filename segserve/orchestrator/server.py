"""Run the orchestrator: gRPC service + standard health service + Prometheus endpoint.

Binds 127.0.0.1 unless told otherwise (`Settings.host`, SEGSERVE_HOST, --host): a container that
must be reachable sets 0.0.0.0 explicitly (the Helm chart does).
"""
from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from prometheus_client import start_http_server

from segserve.api import pb_grpc

from . import reflection
from .automask import add_to_server as add_automask_to_server
from .health import TritonHealth
from .video_service import add_to_server as add_video_to_server
from .service import SegmentationService
from .settings import Settings
from . import wire

SERVICE_NAME = "segserve.v1.Segmentation"
# Images up to the decoder's byte limit plus protobuf framing.
_MESSAGE_LIMIT = (64 << 20) + (1 << 20)


@dataclass
class RunningOrchestrator:
    server: grpc.Server
    service: SegmentationService
    health: health.HealthServicer
    port: int
    metrics_server: object | None
    triton_health: TritonHealth | None = None
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        """Where a local client reaches it (loopback when bound to every address)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def stop(self, grace_s: float = 5.0) -> None:
        if self.triton_health is not None:
            self.triton_health.stop()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        if getattr(self.service, "video", None) is not None:
            self.service.video.shutdown()
        self.service.shutdown()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()


def start(settings: Settings, host: str | None = None) -> RunningOrchestrator:
    host = settings.host if host is None else host
    limit = max(_MESSAGE_LIMIT, settings.max_image_bytes + (1 << 20))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    service = SegmentationService(settings)
    # Tolerant request deserializers: a request protobuf cannot parse (e.g. a string that is not
    # UTF-8) reaches its handler as a wire.MalformedRequest, answered INVALID_ARGUMENT and counted.
    registrar = wire.TolerantRegistrar(server)
    pb_grpc.add_SegmentationServicer_to_server(service, registrar)
    add_automask_to_server(service, registrar)
    service.video = add_video_to_server(service, registrar)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable(server)  # grpcurl list / describe without a .proto
    bind = f"[{host}]" if ":" in host else host  # an IPv6 literal such as "::" goes in brackets
    port = server.add_insecure_port(f"{bind}:{settings.grpc_port}")
    if port == 0:
        raise RuntimeError(f"cannot bind gRPC port {settings.grpc_port} (in use?)")
    metrics_server = None
    if settings.metrics_port >= 0:
        metrics_server, _ = start_http_server(settings.metrics_port, addr=host)
    # Answers from the first request on: SERVING only once Triton does; then the watcher keeps
    # the health service in step with Triton.
    triton_health = TritonHealth(health_servicer, service.pool.replicas, ("", SERVICE_NAME)).start()
    server.start()
    return RunningOrchestrator(server, service, health_servicer, port, metrics_server, triton_health, host)


def serve_forever(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    running = start(settings)
    logging.getLogger("segserve.orchestrator").info(
        "serving %s on %s:%d (metrics :%d), Triton %s", SERVICE_NAME, settings.host, running.port,
        settings.metrics_port, settings.triton_headless or settings.triton_url)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):  # timed: the handler runs only when the main thread wakes up
        pass
    running.stop()
