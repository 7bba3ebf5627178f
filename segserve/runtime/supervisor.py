"""Keep an embedded Triton alive: notice its death at once, clean up after it, restart it.

One thread per Triton blocks in waitid() on the process, so a crash is seen the moment it happens
(no polling), and reports it through `on_down` before anything else: the orchestrator turns
NOT_SERVING while Triton is away. The dead server's process group (its Python-backend stubs) is
killed, the zombie reaped and its /dev/shm regions removed; then Triton is restarted on the same
ports with exponential backoff. Once it is READY, `on_up` lets the orchestrator forget the sessions
the dead server held and serve again. After `max_failures` restarts in a row that do not reach
READY the supervisor gives up and sets `failed`: `segserve serve` then exits non-zero, so that
Kubernetes restarts the pod rather than leaving a server that can never answer.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .triton import EmbeddedTriton

log = logging.getLogger("segserve.supervisor")


@dataclass
class RestartPolicy:
    max_failures: int = 5  # consecutive restarts that fail before giving up
    initial_backoff_s: float = 0.5  # wait before the first restart, doubled after each failure
    max_backoff_s: float = 30.0
    ready_timeout_s: float = 180.0  # a restart not READY by then counts as failed

    def backoff_s(self, failures: int) -> float:
        return min(self.max_backoff_s, self.initial_backoff_s * (2 ** failures))


def _nothing() -> None:
    pass


class TritonSupervisor:
    def __init__(self, triton: EmbeddedTriton, policy: RestartPolicy | None = None,
                 on_down: Callable[[], None] = _nothing, on_up: Callable[[], None] = _nothing):
        self.triton = triton
        self.policy = policy or RestartPolicy()
        self.on_down = on_down
        self.on_up = on_up
        self.restarts = 0  # successful restarts, for logs and tests
        self.failed = threading.Event()  # gave up: the owner should exit non-zero
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segserve-triton-supervisor", daemon=True)

    def start(self) -> "TritonSupervisor":
        self._thread.start()
        return self

    def disarm(self) -> None:
        """No more restarts: Triton is about to be stopped on purpose."""
        self._stopping.set()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop Triton and the supervising thread (also when it is in the middle of a restart)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        while True:
            # Stops whichever process is current: a restart under way sees it exit and gives up.
            self.triton.stop()
            self._thread.join(0.5)
            if not self._thread.is_alive() or time.monotonic() > deadline:
                break
        self.triton.stop()

    def _callback(self, callback: Callable[[], None], what: str) -> None:
        try:
            callback()
        except Exception:  # a failing callback must not end supervision
            log.exception("supervisor callback %s failed", what)

    def _run(self) -> None:
        try:
            self._supervise()
        except Exception:  # a bug here must not leave Triton silently unsupervised
            log.exception("the Triton supervisor failed")
            self.failed.set()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            self.triton.exited(block=True)
            if self._stopping.is_set():
                return  # stopped on purpose: stop() cleans up
            self._callback(self.on_down, "on_down")
            pid = self.triton.process.pid
            code = self.triton.reap()
            log.error("tritonserver (pid %d) exited with %s; restarting. Last log lines:\n%s",
                      pid, _describe(code), self.triton.log_tail())
            if not self._restart():
                return
            self.restarts += 1
            self._callback(self.on_up, "on_up")

    def _restart(self) -> bool:
        """Restart until READY; False when stopping or after max_failures failures in a row."""
        for failures in range(self.policy.max_failures):
            delay = self.policy.backoff_s(failures)
            if self._stopping.wait(delay):
                return False
            try:
                self.triton.start(self.policy.ready_timeout_s)
            except Exception as exc:  # TritonLaunchError, or OSError from the fork itself
                if self._stopping.is_set():
                    return False
                self.triton.reap()  # a start that failed half-way leaves stubs and regions too
                log.error("restart %d/%d of tritonserver failed: %s", failures + 1, self.policy.max_failures, exc)
                continue
            if self._stopping.is_set():  # stop() came while this start was under way
                self.triton.stop()
                return False
            log.warning("tritonserver restarted (pid %d) on %s", self.triton.process.pid, self.triton.grpc_url)
            return True
        log.critical("tritonserver failed to restart %d times in a row; giving up", self.policy.max_failures)
        self.failed.set()
        return False


def _describe(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    return f"signal {-code}" if code < 0 else f"code {code}"
