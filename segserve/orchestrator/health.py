"""The standard gRPC health service follows Triton: SERVING only while a Triton replica is ready.

A daemon thread asks every replica `is_server_ready` twice a second. The probe has a short
deadline: a stopped (SIGSTOP) or wedged Triton accepts the connection but never answers, and the
flip to NOT_SERVING must not wait for a request timeout. An orchestrator alone (`segserve
orchestrator`, Triton elsewhere) thus says NOT_SERVING while Triton is unreachable and SERVING again
by itself once it answers.

The embedded stack knows sooner: its Triton supervisor calls `triton_down()` the moment the process
dies, which holds NOT_SERVING (whatever a probe says) until `triton_up()` after the restart, once
the sessions of the dead server are forgotten.

The separate `liveness` service stays SERVING while the process runs: a liveness probe must not
restart an orchestrator because Triton is away (readiness is what takes it out of the Service).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from grpc_health.v1 import health, health_pb2

log = logging.getLogger("segserve.orchestrator.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS_SERVICE = "liveness"


class TritonHealth:
    def __init__(self, servicer: health.HealthServicer, replicas: Callable[[], Iterable], services: Iterable[str],
                 interval_s: float = 0.5, probe_timeout_s: float = 1.0):
        self.servicer = servicer
        self.replicas = replicas  # () -> current Replica objects (each with a tritonclient `.client`)
        self.services = tuple(services)
        self.interval_s = interval_s
        self.probe_timeout_s = probe_timeout_s
        self._lock = threading.Lock()
        self._status: int | None = None
        self._held: str | None = None  # why NOT_SERVING is forced, or None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segserve-health", daemon=True)
        servicer.set(LIVENESS_SERVICE, SERVING)

    @property
    def serving(self) -> bool:
        return self._status == SERVING

    def start(self) -> "TritonHealth":
        self.check()  # a first answer before the server takes requests
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def triton_down(self, reason: str) -> None:
        """NOT_SERVING now, and until triton_up(): the supervisor saw Triton die."""
        with self._lock:
            self._held = reason
            self._publish(NOT_SERVING, reason)

    def triton_up(self) -> None:
        """The supervisor restarted Triton: let the probes decide again, at once."""
        with self._lock:
            self._held = None
        self._wake.set()

    def check(self) -> bool:
        """Probe the replicas once and publish the result; True when serving."""
        ready, problem = self._probe()
        with self._lock:
            if self._held is not None:
                self._publish(NOT_SERVING, self._held)
            else:
                self._publish(SERVING if ready else NOT_SERVING, problem)
            return self._status == SERVING

    def _probe(self) -> tuple[bool, str]:
        problems = []
        for replica in list(self.replicas()):
            try:
                if replica.client.is_server_ready(client_timeout=self.probe_timeout_s):
                    return True, ""
                problems.append(f"{replica.url}: not ready")
            except Exception as exc:  # unreachable, timed out, closed client: all mean "not ready"
                problems.append(f"{replica.url}: {type(exc).__name__}: {str(exc)[:200]}")
        return False, "; ".join(problems) or "no Triton replica is known"

    def _publish(self, status: int, reason: str) -> None:
        # Only changes: HealthServicer.set pushes every call to each Watch stream.
        if status == self._status:
            return
        first, self._status = self._status is None, status
        for name in self.services:
            self.servicer.set(name, status)
        if status == SERVING:
            log.log(logging.DEBUG if first else logging.INFO, "Triton is ready: serving")
        else:
            log.warning("not serving: %s", reason)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check()
            except Exception:  # keep watching; a bug here is logged, never silent
                log.exception("health check failed")
