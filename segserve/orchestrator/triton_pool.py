"""Triton replicas and the calls the orchestrator makes to them.

A session lives in one Triton replica's model instance, so every session is pinned to the replica
that opened it. Replicas are a fixed URL, or every address a headless Service resolves to.

Every call goes through `Replica.infer`: bounded by the client's deadline, cancelled in Triton
when the client goes away, and failures mapped to gRPC codes in one place (`map_triton_error`) by
the status code Triton answered with (`segserve.common.status`), never by parsing its text.
"""
from __future__ import annotations

import logging
import socket
import threading
import time

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from segserve.common import status

from .errors import ServiceError
from .rpc import NO_SCOPE, CallScope
from .settings import Settings

SESSION_MODEL = "sam2_image_session"
log = logging.getLogger("segserve.orchestrator.triton")


def tensor(name: str, array: np.ndarray, dtype: str) -> grpcclient.InferInput:
    value = grpcclient.InferInput(name, list(array.shape), dtype)
    value.set_data_from_numpy(array)
    return value


def _status_name(exc: InferenceServerException) -> str:
    """"StatusCode.NOT_FOUND" (tritonclient's form) -> "NOT_FOUND"."""
    return str(exc.status() or "").rpartition(".")[2] or "UNKNOWN"


def is_unknown_model(exc: InferenceServerException) -> bool:
    """Triton answers NOT_FOUND for a model it does not serve; the stateless models never refuse
    with NOT_FOUND themselves, so on their calls the code alone says the model is missing."""
    return _status_name(exc) == "NOT_FOUND"


def map_triton_error(exc: InferenceServerException, what: str, replica: "Replica | None" = None) -> ServiceError:
    """The one mapping from a failed Triton call to the status this request ends with."""
    name = _status_name(exc)
    message = (exc.message() or str(exc))[:1000]
    if name == "DEADLINE_EXCEEDED":
        return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, "Triton did not answer in time")
    if name == "CANCELLED":
        return ServiceError(grpc.StatusCode.CANCELLED, "the call was cancelled")
    if name == "UNAVAILABLE" and (replica is None or not replica.answers()):
        return ServiceError(grpc.StatusCode.UNAVAILABLE, "Triton is unavailable; try again shortly")
    code = status.code_from_model(name)
    if code == status.INTERNAL:
        log.error("Triton failed on %s: %s %s", what, name, message)
        return ServiceError(grpc.StatusCode.INTERNAL, f"{what}: the model failed ({message})")
    return ServiceError(getattr(grpc.StatusCode, code), f"{what}: {message}")


class Replica:
    def __init__(self, url: str, timeout_s: float):
        self.url = url
        self.timeout_s = timeout_s
        self.client = grpcclient.InferenceServerClient(url)
        self.sessions = 0
        # Bumped when this Triton is known to have restarted: sessions of an older generation are gone.
        self.generation = 0

    def answers(self) -> bool:
        """Whether the server itself is up: tells a model's capacity refusal (UNAVAILABLE from a live
        server) from a server that cannot be reached (UNAVAILABLE from the transport)."""
        try:
            return bool(self.client.is_server_live(client_timeout=2.0))
        except InferenceServerException:
            return False

    def infer(self, model: str, inputs: list, outputs: list[str], what: str, scope: CallScope = NO_SCOPE,
              sequence_id: int = 0, start: bool = False, end: bool = False):
        """One inference, ended early (and cancelled in Triton) when the RPC's client goes away."""
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs]
        timeout = scope.timeout(self.timeout_s)
        if scope.context is None:
            try:
                return self.client.infer(model, inputs, outputs=requested, sequence_id=sequence_id,
                                         sequence_start=start, sequence_end=end, client_timeout=timeout)
            except InferenceServerException as exc:
                raise map_triton_error(exc, what, self) from exc
        finished = threading.Event()
        answer: dict = {}

        def on_done(result, error):
            answer["result"], answer["error"] = result, error
            finished.set()

        try:
            call = self.client.async_infer(model, inputs, on_done, outputs=requested, sequence_id=sequence_id,
                                           sequence_start=start, sequence_end=end, client_timeout=timeout)
        except InferenceServerException as exc:
            raise map_triton_error(exc, what, self) from exc
        while not finished.wait(0.05):
            if scope.done.is_set() and scope.gone_code() is not None:
                call.cancel()  # Triton drops the request if it has not run yet
                scope.check()
        if answer["error"] is not None:
            scope.check()  # a cancelled client explains the failure better than Triton's echo of it
            raise map_triton_error(answer["error"], what, self) from answer["error"]
        return answer["result"]

    def open_session(self, sequence_id: int, image: np.ndarray, scope: CallScope = NO_SCOPE) -> tuple[int, int]:
        result = self.infer(SESSION_MODEL, [tensor("IMAGE", image[None], "UINT8")], ["IMAGE_SIZE"], "image",
                            scope, sequence_id, start=True)
        height, width = result.as_numpy("IMAGE_SIZE").reshape(-1)
        return int(height), int(width)

    def close_session(self, sequence_id: int, missing_ok: bool = True) -> None:
        """END the sequence; with `missing_ok`, one Triton already dropped counts as closed."""
        try:
            self.infer(SESSION_MODEL, [], ["IMAGE_SIZE"], "image_id", sequence_id=sequence_id, end=True)
        except ServiceError as error:
            # NOT_FOUND from the model, or Triton's own refusal of a sequence it no longer holds.
            if error.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise
            if not missing_ok:
                raise ServiceError(grpc.StatusCode.NOT_FOUND,
                                   "image_id: is not open (closed, expired, or lost when Triton restarted)") from error

    def model_parameters(self, model: str) -> dict[str, str]:
        """A model's config parameters; UNIMPLEMENTED when this Triton does not serve the model."""
        try:
            config = self.client.get_model_config(model, as_json=True, client_timeout=10.0)["config"]
        except InferenceServerException as exc:
            if is_unknown_model(exc):
                raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, f"this server's model repository has no {model}") from exc
            raise map_triton_error(exc, "model", self) from exc
        return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}

    def server_version(self) -> str:
        try:
            return self.client.get_server_metadata(client_timeout=10.0).version
        except InferenceServerException as exc:
            raise map_triton_error(exc, "model", self) from exc

    def close(self) -> None:
        self.client.close()


class TritonPool:
    """Replica discovery and least-loaded placement of new sessions."""

    REFRESH_S = 15.0

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._replicas: dict[str, Replica] = {}
        self._resolved_at = 0.0
        self._refresh()

    def _urls(self) -> list[str]:
        if not self.settings.triton_headless:
            return [self.settings.triton_url]
        host, _, port = self.settings.triton_headless.rpartition(":")
        try:
            infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
        except socket.gaierror:
            return []
        return sorted({f"{info[4][0]}:{port}" for info in infos})

    def _refresh(self) -> None:
        urls = self._urls()
        for url in urls:
            if url not in self._replicas:
                self._replicas[url] = Replica(url, self.settings.triton_timeout_s)
        self._resolved_at = time.monotonic()

    def replicas(self) -> list[Replica]:
        with self._lock:
            return list(self._replicas.values())

    def place(self) -> Replica:
        """The least-loaded replica, claimed: the caller releases it when done (or the session ends)."""
        with self._lock:
            if self.settings.triton_headless and time.monotonic() - self._resolved_at > self.REFRESH_S:
                self._refresh()
            if not self._replicas:
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, "no Triton replica is known")
            replica = min(self._replicas.values(), key=lambda r: r.sessions)
            replica.sessions += 1
            return replica

    def known(self, url: str) -> Replica | None:
        with self._lock:
            return self._replicas.get(url)

    def claim(self, replica: Replica) -> None:
        with self._lock:
            replica.sessions += 1

    def release(self, replica: Replica) -> None:
        with self._lock:
            replica.sessions = max(0, replica.sessions - 1)

    def triton_restarted(self, url: str) -> None:
        """The Triton at `url` came back from a restart: every session it held is gone."""
        with self._lock:
            replica = self._replicas.get(url)
            if replica is not None:
                replica.generation += 1
        log.warning("Triton %s restarted: its sessions are lost", url)

    def any(self) -> Replica:
        with self._lock:
            if not self._replicas:
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, "no Triton replica is known")
            return next(iter(self._replicas.values()))

    def close(self) -> None:
        for replica in self.replicas():
            replica.close()
