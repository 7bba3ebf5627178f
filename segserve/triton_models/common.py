"""Helpers for Python-backend models (imported inside Triton's stub only).

The error boundary of every Python model lives here (`respond_each` / `answer`): a request the
model refuses raises `ModelRefusal(code, message)` (`segserve.common.status`) and is answered with
a typed `pb_utils.TritonError` whose message carries no code prefix; any other exception is an
INTERNAL answer for that request alone, logged with its traceback. Every refusal is logged once,
through `pb_utils.Logger` (Triton's own log):

- client mistakes (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, CANCELLED): verbose, shown with
  `--log-verbose=1` (the orchestrator counts them per code);
- capacity refusals (RESOURCE_EXHAUSTED): info, as operators size the caps from them;
- failures (INTERNAL): error, with the traceback.
"""
from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import triton_python_backend_utils as pb_utils

from segserve.common.status import CANCELLED, INTERNAL, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, TRITON_CODE, ModelRefusal

__all__ = ["ModelRefusal", "answer", "check_cancelled", "guarded", "optional_input", "parameters", "refusal_response",
           "repository_root", "required_input", "respond_each", "scalar", "send_final"]

# An INTERNAL answer quotes the exception this much at most (the traceback is in Triton's log).
_MAX_INTERNAL_MESSAGE = 300


def parameters(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def repository_root(args: dict) -> Path:
    """`args["model_repository"]` is the model's own folder; its parent is the repository."""
    return Path(args["model_repository"]).parent


def optional_input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def required_input(request, name: str) -> np.ndarray:
    value = optional_input(request, name)
    if value is None:
        raise ModelRefusal(INVALID_ARGUMENT, f"{name} is required")
    return value


def scalar(request, name: str, default: Any = 0) -> Any:
    value = optional_input(request, name)
    return default if value is None or value.size == 0 else value.reshape(-1)[0].item()


def refusal_response(refusal: ModelRefusal) -> "pb_utils.InferenceResponse":
    """The typed error Triton's gRPC frontend turns into a status (`status.GRPC_STATUS_OF_TRITON`)."""
    error = pb_utils.TritonError(refusal.message, getattr(pb_utils.TritonError, TRITON_CODE[refusal.code]))
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def check_cancelled(request) -> None:
    """Refuse with CANCELLED when Triton says the request's client has cancelled it (a cheap call
    to the server: done between requests of a batch and between the steps of long work)."""
    if request.is_cancelled():
        raise ModelRefusal(CANCELLED, "the request was cancelled")


def log_refusal(model: str, refusal: ModelRefusal, where: str = "") -> None:
    line = f"{model}{where}: refused {refusal.code}: {refusal.message}"
    if refusal.code == INTERNAL:
        pb_utils.Logger.log_error(line)
    elif refusal.code == RESOURCE_EXHAUSTED:
        pb_utils.Logger.log_info(line)
    else:
        pb_utils.Logger.log_verbose(line)


def answer(request, handle: Callable, model: str, where: str = "") -> "pb_utils.InferenceResponse":
    """The error boundary for one request: `handle(request)`'s response, or a typed error response.
    `where` adds context to the log line (e.g. the sequence's correlation id)."""
    def run():
        check_cancelled(request)
        return handle(request)

    return guarded(run, model, where)


def guarded(work: Callable[[], "pb_utils.InferenceResponse"], model: str, where: str = "") -> "pb_utils.InferenceResponse":
    """`work()`'s response, or the typed error response of what it raised (the error boundary)."""
    try:
        return work()
    except ModelRefusal as refusal:
        log_refusal(model, refusal, where)
        return refusal_response(refusal)
    except Exception as exc:  # one failing request must not take the others of its batch down
        pb_utils.Logger.log_error(f"{model}{where}: internal error\n{traceback.format_exc()}")
        message = f"{type(exc).__name__}: {exc}"
        if len(message) > _MAX_INTERNAL_MESSAGE:
            message = message[:_MAX_INTERNAL_MESSAGE] + "..."
        return refusal_response(ModelRefusal(INTERNAL, f"{model} failed: {message}"))


def send_final(sender, response: "pb_utils.InferenceResponse") -> None:
    """Answer a request through its response sender (its one and final response): a model that
    answers this way can answer a request after execute() has returned."""
    sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def respond_each(requests, handle: Callable, model: str, where: Callable | None = None) -> list:
    """One response per request: a refused or failing request gets an error response and the
    others in the batch are still answered."""
    return [answer(request, handle, model, where(request) if where else "") for request in requests]


def release_metrics(owner, *names: str) -> None:
    """Drop the custom metrics (then their families) that `owner` keeps, in `finalize()`. A Metric
    that outlives finalize is destroyed when the stub tears down, after its shared memory is gone:
    the Python backend stub (2.51) then segfaults in Metric::SaveToSharedMemory on a null
    SharedMemoryManager ("segfault at 60" in dmesg). List metrics before their families."""
    for name in names:
        if hasattr(owner, name):
            setattr(owner, name, None)
