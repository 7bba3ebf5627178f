"""The embedded stack in one object: Triton (subprocess) + orchestrator (in this process)."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from segserve.orchestrator import server as orchestrator_server
from segserve.orchestrator.settings import Settings

from .triton import EmbeddedTriton, free_port


@dataclass
class Stack:
    triton: EmbeddedTriton
    orchestrator: orchestrator_server.RunningOrchestrator

    @property
    def address(self) -> str:
        return self.orchestrator.address

    def stop(self, orchestrator_timeout_s: float = 20.0) -> None:
        # Bounded: Triton is stopped even if ending sessions on it were to stall.
        stopper = threading.Thread(target=self.orchestrator.stop, kwargs={"grace_s": 1.0},
                                   name="segserve-orchestrator-stop", daemon=True)
        stopper.start()
        stopper.join(orchestrator_timeout_s)
        self.triton.stop()

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *_):
        self.stop()


def start_stack(repository: Path, workspace: Path, settings: Settings | None = None,
                ports: dict[str, int] | None = None) -> Stack:
    """Start both parts on loopback; free ports are chosen unless given."""
    ports = ports or {}
    triton = EmbeddedTriton(
        Path(repository), Path(workspace),
        grpc_port=ports.get("triton_grpc") or free_port(),
        http_port=ports.get("triton_http") or free_port(),
        metrics_port=ports.get("triton_metrics") or free_port(),
    ).start()
    try:
        settings = settings or Settings()
        settings.triton_url = triton.grpc_url
        settings.grpc_port = ports.get("grpc", 0)  # 0: the OS picks a free port
        settings.metrics_port = ports.get("metrics") or free_port()
        running = orchestrator_server.start(settings, host="127.0.0.1")
    except BaseException:
        triton.stop()
        raise
    return Stack(triton, running)
