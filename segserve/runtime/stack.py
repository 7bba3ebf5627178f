"""The embedded stack in one object: Triton (subprocess, supervised) + orchestrator (in this process)."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from segserve.orchestrator import server as orchestrator_server
from segserve.orchestrator.settings import Settings

from .fleet_image import PythonRuntime
from .supervisor import RestartPolicy, TritonSupervisor
from .triton import EmbeddedTriton, free_port


@dataclass
class Stack:
    triton: EmbeddedTriton
    orchestrator: orchestrator_server.RunningOrchestrator
    supervisor: TritonSupervisor | None = None

    @property
    def address(self) -> str:
        return self.orchestrator.address

    @property
    def failed(self) -> threading.Event | None:
        """Set when Triton could not be restarted: the owner should exit non-zero."""
        return None if self.supervisor is None else self.supervisor.failed

    def stop(self, orchestrator_timeout_s: float = 20.0) -> None:
        if self.supervisor is not None:
            self.supervisor.disarm()  # Triton stopping from here on is on purpose
        # Bounded: Triton is stopped even if ending sessions on it were to stall.
        stopper = threading.Thread(target=self.orchestrator.stop, kwargs={"grace_s": 1.0},
                                   name="segserve-orchestrator-stop", daemon=True)
        stopper.start()
        stopper.join(orchestrator_timeout_s)
        if self.supervisor is not None:
            self.supervisor.stop()
        else:
            self.triton.stop()

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *_):
        self.stop()


def _supervise(triton: EmbeddedTriton, running: orchestrator_server.RunningOrchestrator,
               policy: RestartPolicy) -> TritonSupervisor:
    health = running.triton_health

    def on_down() -> None:
        health.triton_down(f"tritonserver (pid {triton.process.pid}) exited; restarting it")

    def on_up() -> None:
        # Sessions lived in the dead server's model instances: forget them before serving again.
        pool = running.service.pool
        if hasattr(pool, "triton_restarted"):
            pool.triton_restarted(triton.grpc_url)
        health.triton_up()

    return TritonSupervisor(triton, policy, on_down=on_down, on_up=on_up).start()


def start_stack(repository: Path, workspace: Path, settings: Settings | None = None,
                ports: dict[str, int] | None = None, restart: RestartPolicy | None = None,
                supervise: bool = True, python: PythonRuntime | None = None) -> Stack:
    """Start both parts on loopback; free ports are chosen unless given.

    `python`: the Python the models run on (default: this interpreter; `fleet_image.fleet_python`
    serves a fleet repository the way the fleet image's Python would).
    With `supervise`, Triton is restarted when it dies (`restart`: how often and how fast) and the
    orchestrator's health says NOT_SERVING while it is away.
    """
    ports = ports or {}
    triton = EmbeddedTriton(
        Path(repository), Path(workspace),
        grpc_port=ports.get("triton_grpc") or free_port(),
        http_port=ports.get("triton_http") or free_port(),
        metrics_port=ports.get("triton_metrics") or free_port(),
        python=python,
    ).start()
    running = None
    try:
        settings = settings or Settings()
        settings.triton_url = triton.grpc_url
        settings.grpc_port = ports.get("grpc", 0)  # 0: the OS picks a free port
        settings.metrics_port = ports.get("metrics") or free_port()
        running = orchestrator_server.start(settings)
        supervisor = _supervise(triton, running, restart or RestartPolicy()) if supervise else None
    except BaseException:
        if running is not None:
            running.stop(grace_s=0)
        triton.stop()
        raise
    return Stack(triton, running, supervisor)
