"""Request deserialization that never fails, so that a malformed request reaches its handler.

gRPC's Python server answers INTERNAL "Exception deserializing request!" when a request deserializer
raises, before any handler runs: the error is neither a documented status nor counted in the
metrics. The commonest case is a proto3 `string` field that is not valid UTF-8, which protobuf
refuses to parse. Registered through this module, a service's deserializers never raise: on a
parse failure they walk the raw bytes with the message descriptor and return a `MalformedRequest`
marker that names the first offending string field by its path (`text`, `text.text`,
`objects[2].mask.rle.counts`), or the message itself (`request: not a valid <MessageName>`) when the
bytes are malformed in another way (truncated, bad varint, unbalanced group, ...). The handler then
answers INVALID_ARGUMENT through its usual status mapping and metrics:

- unary and server-streaming handlers call `check_request(request)` first;
- client-streaming handlers wrap their iterator: `requests = check_stream(requests)`;
- or a status-mapping wrapper does both: `request = checked(request)`.

Registration: `add_servicer(servicer, server, service_descriptor)` builds the handlers from the
service descriptor; `TolerantRegistrar(server)` stands in for the server while a generated
`add_*Servicer_to_server` function registers, and swaps each deserializer for a tolerant one.

Fail-safe: a handler that forgets the check still answers INVALID_ARGUMENT, because reading any
field of the marker raises the same `ServiceError` (inside the handler's status mapping).
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor

from .errors import ServiceError

log = logging.getLogger(__name__)

# protobuf's own default nesting limit; deeper input is malformed for us too.
MAX_DEPTH = 100

_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5


class MalformedRequest:
    """Stands for a request that could not be parsed; `field` is a dotted path, or "request"."""

    __slots__ = ("message_type", "field", "reason")

    def __init__(self, message_type: str, field: str, reason: str):
        object.__setattr__(self, "message_type", message_type)
        object.__setattr__(self, "field", field)
        object.__setattr__(self, "reason", reason)

    @property
    def message(self) -> str:
        return f"{self.field}: {self.reason}"

    def error(self) -> ServiceError:
        return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, self.message)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not slots: a handler reading a request field.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise self.error()

    def __setattr__(self, name: str, value: Any) -> None:
        raise self.error()

    def __repr__(self) -> str:
        return f"MalformedRequest({self.message_type}: {self.message})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, MalformedRequest) and self.message_type == other.message_type
                and self.field == other.field and self.reason == other.reason)

    def __hash__(self) -> int:
        return hash((self.message_type, self.field, self.reason))


def check_request(request: object) -> None:
    """Raise INVALID_ARGUMENT for a `MalformedRequest`; anything else passes."""
    if isinstance(request, MalformedRequest):
        raise request.error()


def check_stream(requests: Iterable[object]) -> Iterator[object]:
    """The request iterator of a client-streaming RPC, with `check_request` applied to each message."""
    for request in requests:
        check_request(request)
        yield request


def checked(request):
    """One call for any handler: `check_request` for a message (returned unchanged); for the request
    iterator of a client-streaming RPC (protobuf messages are not iterators), the first message is
    read and checked now, before the handler commits resources, and the rest as they are consumed."""
    if not isinstance(request, Iterator):
        check_request(request)
        return request
    first = next(request, _NOTHING)
    if first is _NOTHING:
        return iter(())
    check_request(first)
    return itertools.chain((first,), check_stream(request))


_NOTHING = object()


# ------------------------------------------------------------------------------------------------
# the wire walk


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _skip(buf: memoryview, pos: int, end: int, wire_type: int, number: int, depth: int) -> int:
    """Position after one value of `wire_type` (not a known string or message field)."""
    if wire_type == _VARINT:
        return _varint(buf, pos, end)[1]
    if wire_type in (_FIXED64, _FIXED32):
        pos += 8 if wire_type == _FIXED64 else 4
    elif wire_type == _LENGTH:
        length, pos = _varint(buf, pos, end)
        pos += length
    elif wire_type == _START_GROUP:
        if depth >= MAX_DEPTH:
            raise _Malformed
        while True:
            key, pos = _varint(buf, pos, end)
            if key & 7 == _END_GROUP:
                if key >> 3 != number:
                    raise _Malformed
                return pos
            pos = _skip(buf, pos, end, key & 7, key >> 3, depth + 1)
    else:
        raise _Malformed
    if pos > end:
        raise _Malformed
    return pos


def _walk(buf: memoryview, pos: int, end: int, descriptor: Descriptor, prefix: str, depth: int) -> str | None:
    if depth > MAX_DEPTH:
        raise _Malformed
    seen: dict[int, int] = {}
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise _Malformed
        field = descriptor.fields_by_number.get(number)
        wanted = field is not None and wire_type == _LENGTH and field.type in (
            FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE)
        if not wanted:
            pos = _skip(buf, pos, end, wire_type, number, depth)
            continue
        length, pos = _varint(buf, pos, end)
        stop = pos + length
        if stop > end:
            raise _Malformed
        name = field.name
        if _is_repeated(field):
            index = seen.get(number, 0)
            seen[number] = index + 1
            name = f"{name}[{index}]"
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                str(buf[pos:stop], "utf-8")
            except UnicodeDecodeError:
                return prefix + name
        else:
            found = _walk(buf, pos, stop, field.message_type, f"{prefix}{name}.", depth + 1)
            if found is not None:
                return found
        pos = stop
    if pos != end:
        raise _Malformed
    return None


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 5.28; `label` is deprecated there
    if repeated is not None:
        return bool(repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED


def find_invalid_utf8(data: bytes, descriptor: Descriptor) -> str | None:
    """Path of the first string field (in wire order) of `data` whose bytes are not valid UTF-8.

    None when there is none before the end of the bytes or before they stop being a well-formed
    message (truncated, bad varint, unbalanced group, nesting deeper than MAX_DEPTH). Fields unknown
    to `descriptor`, and known fields sent with another wire type, are skipped as protobuf does.
    """
    buf = memoryview(data)
    try:
        return _walk(buf, 0, len(buf), descriptor, "", 0)
    except _Malformed:
        return None


def diagnose(data: bytes, descriptor: Descriptor) -> MalformedRequest:
    """The marker for bytes that protobuf refused to parse as `descriptor`."""
    try:
        field = find_invalid_utf8(data, descriptor)
    except Exception:  # noqa: BLE001 - the walk must never turn a bad request into a server error
        log.exception("walking a malformed %s failed", descriptor.full_name)
        field = None
    if field is not None:
        return MalformedRequest(descriptor.full_name, field, "must be valid UTF-8")
    return MalformedRequest(descriptor.full_name, "request", f"not a valid {descriptor.name}")


def tolerant_deserializer(message_class: type) -> Callable[[bytes], Any]:
    """`message_class.FromString` that returns a `MalformedRequest` instead of raising."""
    descriptor = message_class.DESCRIPTOR
    parse = message_class.FromString

    def deserialize(data: bytes):
        try:
            return parse(data)
        except Exception:  # noqa: BLE001 - DecodeError, RecursionError, TypeError: all the client's
            return diagnose(data, descriptor)

    deserialize.__qualname__ = f"tolerant_deserializer({descriptor.full_name})"
    deserialize.message_class = message_class
    return deserialize


# ------------------------------------------------------------------------------------------------
# registration

_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
_BEHAVIOURS = {(False, False): "unary_unary", (False, True): "unary_stream",
               (True, False): "stream_unary", (True, True): "stream_stream"}


def method_handlers(servicer: object, service: ServiceDescriptor) -> dict[str, grpc.RpcMethodHandler]:
    """Handlers for every method of `service`, bound to `servicer`, with tolerant deserializers."""
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        factory = _FACTORIES[(bool(method.client_streaming), bool(method.server_streaming))]
        handlers[method.name] = factory(getattr(servicer, method.name),
                                        request_deserializer=tolerant_deserializer(request_class),
                                        response_serializer=response_class.SerializeToString)
    return handlers


def add_servicer(servicer: object, server: grpc.Server, service: ServiceDescriptor) -> None:
    """What a generated `add_<Service>Servicer_to_server` does, with tolerant deserializers."""
    handlers = method_handlers(servicer, service)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    if hasattr(server, "add_registered_method_handlers"):
        server.add_registered_method_handlers(service.full_name, handlers)


def tolerant_handler(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """The same handler with a tolerant request deserializer (unchanged if it has none we know)."""
    if handler is None:
        return None
    deserializer = handler.request_deserializer
    if deserializer is None or hasattr(deserializer, "message_class"):
        return handler
    message_class = getattr(deserializer, "__self__", None)  # generated code passes `Message.FromString`
    if not isinstance(message_class, type) or not hasattr(message_class, "DESCRIPTOR"):
        return handler
    kind = (bool(handler.request_streaming), bool(handler.response_streaming))
    return _FACTORIES[kind](getattr(handler, _BEHAVIOURS[kind]),
                            request_deserializer=tolerant_deserializer(message_class),
                            response_serializer=handler.response_serializer)


class _TolerantGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler):
        self._inner = inner
        self._wrapped: dict[int, tuple[object, object]] = {}

    def service(self, handler_call_details):
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        cached = self._wrapped.get(id(handler))
        if cached is None or cached[0] is not handler:
            cached = (handler, tolerant_handler(handler))  # keeps `handler` alive: its id stays unique
            self._wrapped[id(handler)] = cached
        return cached[1]


class TolerantRegistrar:
    """Pass this instead of the server to a generated `add_*Servicer_to_server(servicer, server)`.

    It registers the same handlers on the real server, each with a tolerant request deserializer;
    every other attribute is the server's.
    """

    def __init__(self, server: grpc.Server):
        self._server = server

    def add_generic_rpc_handlers(self, generic_rpc_handlers) -> None:
        self._server.add_generic_rpc_handlers(tuple(_TolerantGenericHandler(h) for h in generic_rpc_handlers))

    def add_registered_method_handlers(self, service_name: str, method_handlers) -> None:
        self._server.add_registered_method_handlers(
            service_name, {name: tolerant_handler(h) for name, h in method_handlers.items()})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)
