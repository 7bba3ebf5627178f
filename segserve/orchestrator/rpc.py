"""The error boundary of every RPC: status codes, metrics, cancellation.

Each servicer method is wrapped by `unary` or `server_stream`: a `ServiceError` ends the call with
its code and message, anything else is a bug (logged with its traceback, answered INTERNAL), and the
call is counted by method and final code. A call whose client cancelled or whose deadline passed is
counted as CANCELLED or DEADLINE_EXCEEDED, whatever the handler was doing at the time.

`CallScope` is what long work checks between steps (a batch of automatic masks, a video frame,
a Triton call): it knows whether the client is still there, and how long it is still willing to
wait, so the orchestrator never works for a client that went away.
"""
from __future__ import annotations

import functools
import logging
import threading
import time

import grpc

from . import wire
from .errors import ServiceError
from .metrics import REQUEST_LATENCY, REQUESTS

log = logging.getLogger("segserve.orchestrator")


def departure(context) -> grpc.StatusCode | None:
    """CANCELLED / DEADLINE_EXCEEDED once the client stopped waiting for this call, else None."""
    if context is None or context.is_active():
        return None
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED


class CallScope:
    """The client side of one RPC, as the work sees it."""

    def __init__(self, context: grpc.ServicerContext | None):
        self.context = context
        self.done = threading.Event()  # set when the RPC ends for any reason (cancel, deadline, finish)
        if context is not None and not context.add_callback(self.done.set):
            self.done.set()  # already terminated

    def gone_code(self) -> grpc.StatusCode | None:
        return departure(self.context)

    def check(self) -> None:
        """Raise if the client is gone: called between steps of long work."""
        code = self.gone_code()
        if code is not None:
            raise ServiceError(code, "the client cancelled the call" if code == grpc.StatusCode.CANCELLED
                               else "the call's deadline passed")

    def timeout(self, default_s: float) -> float:
        """How long a Triton call may take: the configured limit or the client's deadline, if sooner."""
        remaining = None if self.context is None else self.context.time_remaining()
        if remaining is None:
            return default_s
        return max(0.001, min(default_s, remaining))


NO_SCOPE = CallScope(None)


def _final_code(exc_code: grpc.StatusCode, context) -> grpc.StatusCode:
    """The code a call is counted under: the client's departure wins over whatever stopped the work."""
    return departure(context) or exc_code


def _record(name: str, start: float, code: grpc.StatusCode) -> None:
    REQUEST_LATENCY.labels(method=name).observe(time.perf_counter() - start)
    REQUESTS.labels(method=name, code=code.name).inc()


def _code_of(exc: BaseException) -> grpc.StatusCode:
    return exc.code if isinstance(exc, ServiceError) else grpc.StatusCode.INTERNAL


def _abort(name: str, context, exc: BaseException) -> None:
    """End the call for `exc` (raises): a ServiceError with its own code and message, anything else
    as INTERNAL with the traceback logged (and no detail for the client)."""
    if isinstance(exc, ServiceError):
        if exc.code == grpc.StatusCode.INTERNAL:
            log.error("%s failed: %s", name, exc.message)
        context.abort(_final_code(exc.code, context), exc.message)
    log.exception("%s failed", name)
    context.abort(_final_code(grpc.StatusCode.INTERNAL, context), f"internal error: {type(exc).__name__}")


def unary(method):
    @functools.wraps(method)
    def wrapper(self, request, context):
        name, start, code = method.__name__, time.perf_counter(), grpc.StatusCode.OK
        try:
            request = wire.checked(request)  # a request that could not be parsed: INVALID_ARGUMENT, counted
            result = method(self, request, context)
            code = _final_code(code, context)
            return result
        except Exception as exc:
            code = _final_code(_code_of(exc), context)  # before the abort ends the call
            _abort(name, context, exc)
        finally:
            _record(name, start, code)

    return wrapper


def server_stream(method):
    @functools.wraps(method)
    def wrapper(self, request, context):
        name, start, code = method.__name__, time.perf_counter(), grpc.StatusCode.OK
        try:
            request = wire.checked(request)
            yield from method(self, request, context)
            code = _final_code(code, context)
        except GeneratorExit:  # the client went away between two messages
            code = _final_code(grpc.StatusCode.CANCELLED, context)
            raise
        except Exception as exc:
            code = _final_code(_code_of(exc), context)  # before the abort ends the call
            _abort(name, context, exc)
        finally:
            _record(name, start, code)

    return wrapper
