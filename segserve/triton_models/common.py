"""Helpers for Python-backend models (imported inside Triton's stub only)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


def parameters(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def repository_root(args: dict) -> Path:
    """`args["model_repository"]` is the model's own folder; its parent is the repository."""
    return Path(args["model_repository"]).parent


def optional_input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def scalar(request, name: str, default: Any = 0) -> Any:
    value = optional_input(request, name)
    return default if value is None or value.size == 0 else value.reshape(-1)[0].item()


def error_response(message: str, code=None) -> "pb_utils.InferenceResponse":
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class RequestError(Exception):
    """A request the model refuses; the prefix tells the orchestrator which gRPC code to use."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")


def respond_each(requests, handle) -> list:
    """One response per request: a refused or failing request gets an error response and the
    others in the batch are still answered."""
    responses = []
    for request in requests:
        try:
            responses.append(handle(request))
        except RequestError as exc:
            responses.append(error_response(str(exc)))
        except Exception as exc:  # one bad request must not take the others down
            responses.append(error_response(f"INTERNAL: {type(exc).__name__}: {exc}"))
    return responses
