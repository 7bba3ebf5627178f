"""Triton replicas and the calls the orchestrator makes to them.

A session lives in one Triton replica's model instance, so every session is pinned to the replica
that opened it. Replicas are a fixed URL, or every address a headless Service resolves to; one that
leaves DNS is dropped (`Replica.gone`) and its sessions answer NOT_FOUND.

Placement (`TritonPool.place`, `TritonPool.call`): a new session goes to the least-loaded replica
that has room for its kind (the `max_sessions` of that kind's session model, per replica); a
stateless call goes to the replica with the fewest calls in flight. Counts are of what this
orchestrator placed: sessions adopted from another orchestrator are counted by their opener.

Every call goes through `Replica.infer`: bounded by the client's deadline, cancelled in Triton
when the client goes away, and failures mapped to gRPC codes in one place (`map_triton_error`) by
the status code Triton answered with (`segserve.common.status`), never by parsing its text.
"""
from __future__ import annotations

import contextlib
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
TRACKER_MODEL = "sam2_video_tracker"
IMAGE, VIDEO = "image", "video"
# The model holding each kind of session, and its `max_sessions` when the config does not say.
SESSION_MODELS = {IMAGE: (SESSION_MODEL, 64), VIDEO: (TRACKER_MODEL, 16)}
CONFIG_RETRY_S = 5.0
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
        # Placed here by this orchestrator (the pool's lock guards them): sessions by kind, stateless calls.
        self.held = {kind: 0 for kind in SESSION_MODELS}
        self.calls = 0
        # Bumped when this Triton is known to have restarted: sessions of an older generation are gone.
        self.generation = 0
        self.gone = False  # left DNS: dropped from the pool, its sessions are lost to us
        self._capacity: dict[str, int] = {}
        self._capacity_error: dict[str, tuple[float, ServiceError]] = {}
        self._state = threading.Lock()
        self._active = 0  # infer calls running: the client is closed only after the last one
        self._close_pending = False

    @property
    def sessions(self) -> int:
        return sum(self.held.values())

    def capacity(self, kind: str) -> int:
        """How many sessions of a kind the model instance holds (its `max_sessions`), read once. A
        failed read is not repeated for CONFIG_RETRY_S: placement does not wait on a dead replica."""
        if kind not in self._capacity:
            failed_at, error = self._capacity_error.get(kind, (0.0, None))
            if error is not None and time.monotonic() - failed_at < CONFIG_RETRY_S:
                raise error
            model, default = SESSION_MODELS[kind]
            try:
                self._capacity[kind] = int(self.model_parameters(model).get("max_sessions") or default)
            except ServiceError as exc:
                self._capacity_error[kind] = (time.monotonic(), exc)
                raise
        return self._capacity[kind]

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
        with self._state:
            if self.gone:
                if sequence_id:
                    raise ServiceError(grpc.StatusCode.NOT_FOUND, f"{what}: its Triton replica is gone")
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the Triton replica left; try again")
            self._active += 1
        try:
            return self._infer(model, inputs, outputs, what, scope, sequence_id, start, end)
        finally:
            with self._state:
                self._active -= 1
                close_now = self._close_pending and self._active == 0
            if close_now:
                self.client.close()

    def _infer(self, model, inputs, outputs, what, scope, sequence_id, start, end):
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

    def restarted(self) -> None:
        self.generation += 1
        self._capacity.clear()  # the restarted server may have been given another config
        self._capacity_error.clear()

    def retire(self) -> None:
        """Left DNS: no new calls; the client closes once the calls in flight are done."""
        with self._state:
            self.gone = True
            self._close_pending = True
            close_now = self._active == 0
        if close_now:
            self.client.close()

    def close(self) -> None:
        self.client.close()


class TritonPool:
    """Replica discovery and placement (see the module's docstring)."""

    REFRESH_S = 15.0
    RESOLVE_WAIT_S = 30.0  # how long a caller with no replica known waits for a lookup in progress

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._resolved = threading.Condition(self._lock)
        self._replicas: dict[str, Replica] = {}
        self._resolved_at = 0.0
        self._resolving = False
        if settings.triton_headless:
            self.refresh(force=True)
        else:
            # A fixed list of replicas: "host:port[,host:port...]".
            for url in [u.strip() for u in settings.triton_url.split(",") if u.strip()]:
                self._replicas[url] = Replica(url, settings.triton_timeout_s)

    # ---- discovery -----------------------------------------------------------------------------
    def _resolve(self) -> list[str] | None:
        """Every address of the headless Service; None when DNS could not say (keep what is known).
        A name that resolves to nothing means every replica left."""
        host, _, port = self.settings.triton_headless.rpartition(":")
        try:
            infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                return []
            log.warning("resolving %s failed (%s): keeping the %d replicas known", host, exc, len(self._replicas))
            return None
        return sorted({f"{info[4][0]}:{port}" for info in infos})

    def refresh(self, force: bool = False) -> None:
        """Resolve the headless Service again when due. DNS is asked without the lock held, by one
        thread at a time: the others go on with the replicas known, or wait for the answer when
        none is known."""
        if not self.settings.triton_headless:
            return
        with self._lock:
            if self._resolving:
                deadline = time.monotonic() + self.RESOLVE_WAIT_S
                while self._resolving and not self._replicas and time.monotonic() < deadline:
                    self._resolved.wait(deadline - time.monotonic())
                return
            if not force and time.monotonic() - self._resolved_at <= self.REFRESH_S:
                return
            self._resolving = True
        urls, dropped = None, []
        try:
            urls = self._resolve()
        finally:
            with self._lock:
                self._resolving = False
                self._resolved_at = time.monotonic()
                if urls is not None:
                    dropped = self._apply_locked(urls)
                self._resolved.notify_all()
        for replica in dropped:
            log.warning("Triton %s left DNS: its sessions are lost", replica.url)
            replica.retire()

    def _apply_locked(self, urls: list[str]) -> list[Replica]:
        for url in urls:
            if url not in self._replicas:
                self._replicas[url] = Replica(url, self.settings.triton_timeout_s)
        return [self._replicas.pop(url) for url in list(self._replicas) if url not in urls]

    def replicas(self) -> list[Replica]:
        with self._lock:
            return list(self._replicas.values())

    def known(self, url: str) -> Replica | None:
        with self._lock:
            return self._replicas.get(url)

    def any(self) -> Replica:
        self.refresh()
        with self._lock:
            if not self._replicas:
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, "no Triton replica is known")
            return next(iter(self._replicas.values()))

    # ---- placement -----------------------------------------------------------------------------
    def place(self, kind: str, exclude: tuple[Replica, ...] = ()) -> Replica:
        """A replica with room for one more session of `kind`, the least filled, claimed: the caller
        releases it when the session ends (or fails to open). RESOURCE_EXHAUSTED only when every
        replica is full. `exclude`: replicas whose model refused this session's START as full (its
        other sessions were placed by other orchestrators, which this one does not count)."""
        self.refresh()
        capacity, failure, failures = {}, None, 0
        for replica in self.replicas():  # config reads (cached) outside the lock
            if replica in exclude:
                continue
            try:
                capacity[replica] = replica.capacity(kind)
            except ServiceError as exc:
                failure, failures = failure or exc, failures + (exc.code != grpc.StatusCode.UNIMPLEMENTED)
        with self._lock:
            live = [r for r in capacity if self._replicas.get(r.url) is r]
            if not live:
                if failure is not None:
                    raise failure  # e.g. UNIMPLEMENTED: no replica serves this kind
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, "no Triton replica is known")
            room = [r for r in live if r.held[kind] < capacity[r]]
            if not room:
                held, total = sum(r.held[kind] for r in live), sum(capacity[r] for r in live)
                replicas = "the Triton replica is" if len(live) == 1 else f"all {len(live)} Triton replicas are"
                silent = f" ({failures} more did not answer)" if failures else ""
                raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"session: {replicas} full: {held} {kind} sessions opened through this orchestrator, room for {total}{silent}; "
                                   f"end or close some")
            replica = min(room, key=lambda r: (r.held[kind] / capacity[r], r.sessions, r.calls))
            replica.held[kind] += 1
            return replica

    def release(self, replica: Replica, kind: str) -> None:
        with self._lock:
            replica.held[kind] = max(0, replica.held[kind] - 1)

    @contextlib.contextmanager
    def call(self):
        """The replica with the fewest stateless calls in flight, for the duration of the block."""
        self.refresh()
        with self._lock:
            if not self._replicas:
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, "no Triton replica is known")
            replica = min(self._replicas.values(), key=lambda r: (r.calls, r.sessions))
            replica.calls += 1
        try:
            yield replica
        finally:
            with self._lock:
                replica.calls -= 1

    def triton_restarted(self, url: str) -> None:
        """The Triton at `url` came back from a restart: every session it held is gone."""
        with self._lock:
            replica = self._replicas.get(url)
            if replica is not None:
                replica.restarted()
        log.warning("Triton %s restarted: its sessions are lost", url)

    def close(self) -> None:
        for replica in self.replicas():
            replica.close()
