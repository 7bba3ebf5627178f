"""Triton replicas and the calls the orchestrator makes to them.

A session lives in one Triton replica's model instance, so every session is pinned to the replica
that opened it. Replicas are a fixed URL, or every address a headless Service resolves to.
Triton errors are mapped to gRPC codes: the Python models prefix their messages with the code,
and Triton's own "must specify the START flag" means it dropped an idle sequence.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .errors import ServiceError
from .settings import Settings

SESSION_MODEL = "sam2_image_session"
_CODE_PREFIXES = {name: getattr(grpc.StatusCode, name) for name in
                  ("INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "INTERNAL", "UNAVAILABLE")}


def _tensor(name: str, array: np.ndarray, dtype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def map_triton_error(exc: InferenceServerException, what: str) -> ServiceError:
    message = exc.message() or str(exc)
    if "must specify the START flag" in message:
        return ServiceError(grpc.StatusCode.NOT_FOUND,
                            f"{what}: closed or expired (Triton no longer holds this session)")
    for prefix, code in _CODE_PREFIXES.items():
        if message.startswith(prefix + ":"):
            return ServiceError(code, f"{what}: {message[len(prefix) + 1:].strip()}")
    status = str(exc.status() or "")
    if "UNAVAILABLE" in status or "failed to connect" in message.lower():
        return ServiceError(grpc.StatusCode.UNAVAILABLE, f"Triton unavailable: {message}")
    return ServiceError(grpc.StatusCode.INTERNAL, f"Triton error: {message}")


@dataclass
class PromptResult:
    scores: np.ndarray  # [P, K]
    object_scores: np.ndarray  # [P]
    rle_counts: list[list[str]]  # [P][K]
    low_res_logits: np.ndarray | None  # [P, K, 256, 256]


class Replica:
    def __init__(self, url: str, timeout_s: float):
        self.url = url
        self.timeout_s = timeout_s
        self.client = grpcclient.InferenceServerClient(url)
        self.sessions = 0

    def open_session(self, sequence_id: int, image: np.ndarray) -> tuple[int, int]:
        try:
            result = self.client.infer(
                SESSION_MODEL, [_tensor("IMAGE", image[None], "UINT8")], sequence_id=sequence_id,
                sequence_start=True, outputs=[grpcclient.InferRequestedOutput("IMAGE_SIZE")],
                client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise map_triton_error(exc, "image") from exc
        height, width = result.as_numpy("IMAGE_SIZE").reshape(-1)
        return int(height), int(width)

    def prompt(self, sequence_id: int, coords: np.ndarray, labels: np.ndarray, mask: np.ndarray | None,
               multimask: bool, want_logits: bool) -> PromptResult:
        inputs = [_tensor("POINT_COORDS", coords[None], "FP32"), _tensor("POINT_LABELS", labels[None], "INT32"),
                  _tensor("MULTIMASK", np.array([[multimask]]), "BOOL")]
        if mask is not None:
            inputs.append(_tensor("MASK_INPUT", mask, "FP32"))
        names = ["SCORES", "OBJECT_SCORE", "MASKS_RLE"] + (["LOW_RES_LOGITS"] if want_logits else [])
        try:
            result = self.client.infer(SESSION_MODEL, inputs, sequence_id=sequence_id,
                                       outputs=[grpcclient.InferRequestedOutput(n) for n in names],
                                       client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise map_triton_error(exc, "image_id") from exc
        counts = [[c.decode() for c in row] for row in result.as_numpy("MASKS_RLE")[0]]
        return PromptResult(result.as_numpy("SCORES")[0], result.as_numpy("OBJECT_SCORE")[0], counts,
                            result.as_numpy("LOW_RES_LOGITS")[0] if want_logits else None)

    def close_session(self, sequence_id: int, missing_ok: bool = True) -> None:
        """END the sequence; with `missing_ok`, one Triton already dropped counts as closed."""
        try:
            self.client.infer(SESSION_MODEL, [], sequence_id=sequence_id, sequence_end=True,
                              outputs=[grpcclient.InferRequestedOutput("IMAGE_SIZE")], client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            error = map_triton_error(exc, "image_id")
            if error.code != grpc.StatusCode.NOT_FOUND or not missing_ok:
                raise error from exc

    def session_parameters(self) -> dict[str, str]:
        """The session model's parameters: model info and the idle TTL Triton enforces."""
        try:
            config = self.client.get_model_config(SESSION_MODEL, as_json=True)["config"]
        except InferenceServerException as exc:
            raise map_triton_error(exc, "model") from exc
        return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}

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

    def any(self) -> Replica:
        with self._lock:
            if not self._replicas:
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, "no Triton replica is known")
            return next(iter(self._replicas.values()))

    def close(self) -> None:
        for replica in self._replicas.values():
            replica.close()
