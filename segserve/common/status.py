"""How a refusal crosses the Triton boundary: one table, typed codes, no text prefixes.

A Python model refuses a request with `pb_utils.TritonError(message, <code>)`, where <code> is
`TRITON_CODE[our code]`; Triton's gRPC frontend turns that into a gRPC status
(`GRPC_STATUS_OF_TRITON`, checked against the real server in the tests), and the orchestrator maps
the status it receives back with `code_from_model`. The message carries no code and is shown to the
client as it is.

Triton has no RESOURCE_EXHAUSTED code: a capacity refusal travels as UNAVAILABLE (Triton's own
convention for a full queue), and the orchestrator tells it apart from an unreachable server by
asking the server whether it is live (`triton_pool.Replica.answered`).

No grpc or pb_utils import here: this module is shared by both sides (and copied into the fleet
repository next to the Python models).
"""
from __future__ import annotations

INVALID_ARGUMENT = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
CANCELLED = "CANCELLED"
INTERNAL = "INTERNAL"

# our code -> name of the `pb_utils.TritonError` code that carries it
TRITON_CODE = {
    INVALID_ARGUMENT: "INVALID_ARG",
    NOT_FOUND: "NOT_FOUND",
    RESOURCE_EXHAUSTED: "UNAVAILABLE",
    FAILED_PRECONDITION: "UNSUPPORTED",
    CANCELLED: "CANCELLED",
    INTERNAL: "INTERNAL",
}

# `pb_utils.TritonError` code -> the gRPC status Triton's gRPC frontend answers with
GRPC_STATUS_OF_TRITON = {
    "INVALID_ARG": "INVALID_ARGUMENT",
    "NOT_FOUND": "NOT_FOUND",
    "UNAVAILABLE": "UNAVAILABLE",
    "UNSUPPORTED": "UNIMPLEMENTED",
    "ALREADY_EXISTS": "ALREADY_EXISTS",
    "CANCELLED": "CANCELLED",
    "INTERNAL": "INTERNAL",
    "UNKNOWN": "UNKNOWN",
}

# gRPC status received from a model that answered -> the code the orchestrator reports
_FROM_MODEL = {
    "INVALID_ARGUMENT": INVALID_ARGUMENT,
    "NOT_FOUND": NOT_FOUND,
    "UNAVAILABLE": RESOURCE_EXHAUSTED,
    "UNIMPLEMENTED": FAILED_PRECONDITION,
    "CANCELLED": CANCELLED,
}


def code_from_model(grpc_status_name: str) -> str:
    """The code of a refusal, given the gRPC status name of a response from a live server."""
    return _FROM_MODEL.get(grpc_status_name, INTERNAL)


class ModelRefusal(Exception):
    """Raised inside a Python model: this request is refused with `code` (one of the names above).
    The model's error boundary (`triton_models.common.respond_each`) turns it into a TritonError."""

    def __init__(self, code: str, message: str):
        if code not in TRITON_CODE:
            raise ValueError(f"unknown refusal code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
