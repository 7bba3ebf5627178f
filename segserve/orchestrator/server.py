"""Run the orchestrator: gRPC service + standard health service + Prometheus endpoint."""
from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from segserve.api import pb_grpc

from .automask import add_to_server as add_automask_to_server
from .video import add_to_server as add_video_to_server
from .service import SegmentationService
from .settings import Settings

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

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace_s: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        if getattr(self.service, "video", None) is not None:
            self.service.video.shutdown()
        self.service.shutdown()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()


def start(settings: Settings, host: str = "0.0.0.0") -> RunningOrchestrator:
    limit = max(_MESSAGE_LIMIT, settings.max_image_bytes + (1 << 20))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    service = SegmentationService(settings)
    pb_grpc.add_SegmentationServicer_to_server(service, server)
    add_automask_to_server(service, server)
    service.video = add_video_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    if port == 0:
        raise RuntimeError(f"cannot bind gRPC port {settings.grpc_port} (in use?)")
    metrics_server = None
    if settings.metrics_port >= 0:
        metrics_server, _ = start_http_server(settings.metrics_port, addr=host)
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningOrchestrator(server, service, health_servicer, port, metrics_server)


def serve_forever(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    running = start(settings)
    logging.getLogger("segserve.orchestrator").info(
        "serving %s on :%d (metrics :%d), Triton %s", SERVICE_NAME, running.port, settings.metrics_port,
        settings.triton_headless or settings.triton_url)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):  # timed: the handler runs only when the main thread wakes up
        pass
    running.stop()
