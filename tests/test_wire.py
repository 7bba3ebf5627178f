"""Tolerant request deserialization (segserve/orchestrator/wire.py).

Unit tests on hand-built wire bytes, a mutation fuzz of every request type, and requests sent as raw
bytes to the real embedded stack: a string that is not UTF-8 is INVALID_ARGUMENT naming the field,
counted in segserve_requests_total, never INTERNAL "Exception deserializing request!".
"""
from __future__ import annotations

import random

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from prometheus_client import REGISTRY

from segserve.api import load, pb
from segserve.orchestrator import wire
from segserve.orchestrator.errors import ServiceError

vpb, vpb_grpc = load("video")
apb, apb_grpc = load("automask")

SERVICES = [pb.DESCRIPTOR.services_by_name["Segmentation"], vpb.DESCRIPTOR.services_by_name["VideoTracking"],
            apb.DESCRIPTOR.services_by_name["AutoMask"]]
REQUEST_TYPES = sorted({m.input_type.full_name: m.input_type for s in SERVICES for m in s.methods}.items())

# Not UTF-8 (all refused by protobuf too, checked below): invalid lead bytes, an overlong encoding,
# a UTF-16 surrogate, a sequence cut short, a code point past U+10FFFF.
BAD = [b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80"]
GOOD = ["", "a cat. a remote control.", "caf\u00e9", "\U0001f431 \u732b", "\x00nul"]


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def ld(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return key(number, 2) + varint(len(payload)) + payload


def swap(message, placeholder: str, bad: bytes) -> bytes:
    """`message` serialized, with the bytes of `placeholder` (same length as `bad`) replaced."""
    data = message.SerializeToString()
    encoded = placeholder.encode()
    assert len(encoded) == len(bad) and data.count(encoded) == 1
    return data.replace(encoded, bad)


def add_prompts_with_masks() -> vpb.AddPromptsRequest:
    request = vpb.AddPromptsRequest(session_id="sess", frame_index=3, text=vpb.TextPrompt(text="a car."))
    for i in range(4):
        obj = request.objects.add(object_id=i + 1)
        obj.points.add(x=1, y=2, label=1)
        obj.mask.rle.size.extend([4, 5])
        obj.mask.rle.counts = f"Q{i}"
    return request


# ------------------------------------------------------------------------------------------------
# the field finder


@pytest.mark.parametrize("bad", BAD)
def test_protobuf_refuses_what_the_finder_reports(bad):
    data = swap(pb.MaskFromPromptRequest(image_id="abc", text="Z" * len(bad)), "Z" * len(bad), bad)
    with pytest.raises(DecodeError):
        pb.MaskFromPromptRequest.FromString(data)
    assert wire.find_invalid_utf8(data, pb.MaskFromPromptRequest.DESCRIPTOR) == "text"


@pytest.mark.parametrize("text", GOOD)
def test_valid_utf8_is_not_reported(text):
    request = pb.MaskFromPromptRequest(image=b"\xff\xfe\x00 bytes are not text", text=text)
    request.points.add(x=1, y=2)
    data = request.SerializeToString()
    assert wire.find_invalid_utf8(data, pb.MaskFromPromptRequest.DESCRIPTOR) is None
    parsed = wire.tolerant_deserializer(pb.MaskFromPromptRequest)(data)
    assert isinstance(parsed, pb.MaskFromPromptRequest) and parsed == request


def test_nested_string():
    data = swap(add_prompts_with_masks(), "a car.", b"a c\xffr.")
    assert wire.find_invalid_utf8(data, vpb.AddPromptsRequest.DESCRIPTOR) == "text.text"


def test_string_in_a_repeated_message():
    data = swap(add_prompts_with_masks(), "Q2", b"\xc3\x28")
    assert wire.find_invalid_utf8(data, vpb.AddPromptsRequest.DESCRIPTOR) == "objects[2].mask.rle.counts"
    marker = wire.tolerant_deserializer(vpb.AddPromptsRequest)(data)
    assert isinstance(marker, wire.MalformedRequest)
    assert marker.message == "objects[2].mask.rle.counts: must be valid UTF-8"
    assert marker.message_type == "segserve.v1.AddPromptsRequest"


def test_first_bad_string_in_wire_order_wins():
    data = swap(add_prompts_with_masks(), "sess", b"s\xffss")
    data = data.replace(b"Q1", b"\xff\xff")
    assert wire.find_invalid_utf8(data, vpb.AddPromptsRequest.DESCRIPTOR) == "session_id"
    # field order on the wire, not field-number order: objects[1] sent before session_id
    number = {name: message.DESCRIPTOR.fields_by_name[name].number for message, name in (
        (vpb.AddPromptsRequest, "objects"), (vpb.AddPromptsRequest, "session_id"), (vpb.ObjectPrompt, "mask"),
        (pb.Mask, "rle"), (pb.Rle, "counts"))}
    first = vpb.ObjectPrompt(object_id=9, mask=pb.Mask(rle=pb.Rle(counts="ok")))
    reordered = ld(number["objects"], first.SerializeToString())
    counts = ld(number["counts"], b"\xff")  # objects[1].mask.rle.counts, hand-built
    reordered += ld(number["objects"], ld(number["mask"], ld(number["rle"], counts)))
    reordered += ld(number["session_id"], b"\xfe")
    assert wire.find_invalid_utf8(reordered, vpb.AddPromptsRequest.DESCRIPTOR) == "objects[1].mask.rle.counts"


def test_repeated_string_in_the_client_stream_message():
    frames = vpb.VideoFrames(session_id="ZZ")
    frames.frames.add(image=b"\x89PNG")
    data = swap(frames, "ZZ", b"\xff\xfe")
    assert wire.find_invalid_utf8(data, vpb.VideoFrames.DESCRIPTOR) == "session_id"


def test_unknown_fields_and_wrong_wire_types_are_skipped_as_protobuf_does():
    descriptor = pb.MaskFromPromptRequest.DESCRIPTOR
    text = descriptor.fields_by_name["text"].number
    unknown = ld(99, b"\xff\xfe") + key(98, 0) + varint(5) + key(97, 1) + b"\x00" * 8 + key(96, 5) + b"\x00" * 4
    group = key(95, 3) + ld(1, b"\xff") + key(2, 0) + varint(1) + key(95, 4)
    wrong_type = key(text, 0) + varint(7)  # the text field number sent as a varint: an unknown field
    prefix = unknown + group + wrong_type
    parsed = pb.MaskFromPromptRequest.FromString(prefix)  # protobuf accepts all of it
    assert not parsed.HasField("text")
    assert wire.find_invalid_utf8(prefix, descriptor) is None
    data = prefix + ld(text, b"\xe2\x82")
    with pytest.raises(DecodeError):
        pb.MaskFromPromptRequest.FromString(data)
    assert wire.find_invalid_utf8(data, descriptor) == "text"


def test_map_entries_are_indexed():
    info = pb.ModelInfo(family="sam2")
    info.artifact_sha256["encoder"] = "0" * 4
    info.artifact_sha256["decoder"] = "1" * 4
    data = info.SerializeToString().replace(b"1111", b"1\xff11")
    field = wire.find_invalid_utf8(data, pb.ModelInfo.DESCRIPTOR)
    assert field in ("artifact_sha256[0].value", "artifact_sha256[1].value")


@pytest.mark.parametrize("cut", [1, 2, 5])
def test_truncated_message(cut):
    data = add_prompts_with_masks().SerializeToString()[:-cut]
    with pytest.raises(DecodeError):
        vpb.AddPromptsRequest.FromString(data)
    assert wire.find_invalid_utf8(data, vpb.AddPromptsRequest.DESCRIPTOR) is None
    marker = wire.tolerant_deserializer(vpb.AddPromptsRequest)(data)
    assert isinstance(marker, wire.MalformedRequest)
    assert marker.field == "request"
    assert marker.message == "request: not a valid AddPromptsRequest"


@pytest.mark.parametrize("data", [
    key(1, 7) + b"x",                              # wire type 7 does not exist
    key(0, 0) + varint(1),                          # field number 0
    key(5, 4),                                      # end of a group never started
    key(95, 3) + key(1, 0) + varint(1),             # group never ended
    key(95, 3) + key(94, 4),                        # group ended with another number
    key(9, 2) + varint(1 << 40) + b"abc",           # length past the end
    key(6, 0) + b"\xff" * 11,                       # varint too long
    key(95, 3) * 20_000,                            # nesting far deeper than protobuf allows
], ids=["wire_type_7", "field_0", "stray_end_group", "open_group", "mismatched_group", "long_length",
        "long_varint", "deep_groups"])
def test_other_malformations_name_the_message(data):
    with pytest.raises(DecodeError):
        pb.MaskFromPromptRequest.FromString(data)
    assert wire.find_invalid_utf8(data, pb.MaskFromPromptRequest.DESCRIPTOR) is None
    marker = wire.tolerant_deserializer(pb.MaskFromPromptRequest)(data)
    assert marker == wire.MalformedRequest("segserve.v1.MaskFromPromptRequest", "request",
                                           "not a valid MaskFromPromptRequest")


def test_a_bad_string_before_the_truncation_is_still_named():
    data = swap(pb.DetectRequest(image=b"img", text="ZZ", max_objects=3), "ZZ", b"\xff\xfe")
    assert wire.tolerant_deserializer(pb.DetectRequest)(data[:-1]).field == "text"


# ------------------------------------------------------------------------------------------------
# the deserializer never raises


def populate(message, depth: int = 0) -> None:
    """Every field of `message` set (strings to ASCII), two elements per repeated field."""
    for field in message.DESCRIPTOR.fields:
        repeated = wire._is_repeated(field)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 4:
                continue
            if field.message_type.GetOptions().map_entry:
                value_type = field.message_type.fields_by_name["value"].type
                getattr(message, field.name)["k"] = "v" if value_type == FieldDescriptor.TYPE_STRING else 1
                continue
            targets = [getattr(message, field.name).add() for _ in range(2)] if repeated else [getattr(message, field.name)]
            for target in targets:
                populate(target, depth + 1)
            continue
        value = {
            FieldDescriptor.TYPE_STRING: "txt", FieldDescriptor.TYPE_BYTES: b"\x00\xff",
            FieldDescriptor.TYPE_BOOL: True, FieldDescriptor.TYPE_FLOAT: 1.5, FieldDescriptor.TYPE_DOUBLE: 2.5,
            FieldDescriptor.TYPE_ENUM: 1,
        }.get(field.type, 7)
        if repeated:
            getattr(message, field.name).extend([value, value])
        else:
            setattr(message, field.name, value)


@pytest.mark.parametrize("name", [name for name, _ in REQUEST_TYPES])
def test_deserializer_never_raises_on_mutations(name):
    descriptor = dict(REQUEST_TYPES)[name]
    cls = message_factory.GetMessageClass(descriptor)
    request = cls()
    populate(request)
    valid = request.SerializeToString()
    deserialize = wire.tolerant_deserializer(cls)
    assert deserialize(valid) == request
    rng = random.Random(name)
    kinds = {"message": 0, "utf8": 0, "request": 0}
    for _ in range(400):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            if op == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1:
                data = data[:rng.randrange(len(data) + 1)]
            elif op == 2:
                at = rng.randrange(len(data) + 1)
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
            else:
                data = bytearray(rng.randbytes(rng.randint(0, 40)))
        result = deserialize(bytes(data))
        if isinstance(result, cls):
            kinds["message"] += 1
        else:
            assert isinstance(result, wire.MalformedRequest), result
            if result.field == "request":
                kinds["request"] += 1
                assert result.reason == f"not a valid {descriptor.name}"
            else:
                kinds["utf8"] += 1
                assert result.reason == "must be valid UTF-8"
                assert result.field.split(".")[0].split("[")[0] in descriptor.fields_by_name
    assert kinds["request"] > 0 and kinds["message"] > 0


def test_string_mutations_are_named():
    request = add_prompts_with_masks()
    deserialize = wire.tolerant_deserializer(vpb.AddPromptsRequest)
    for bad in BAD:
        for placeholder, field in (("sess", "session_id"), ("a car.", "text.text")):
            data = swap(request, placeholder, bad + b"x" * (len(placeholder) - len(bad)))
            assert deserialize(data).field == field


# ------------------------------------------------------------------------------------------------
# the marker and the checks


def test_check_request():
    marker = wire.MalformedRequest("segserve.v1.DetectRequest", "text", "must be valid UTF-8")
    with pytest.raises(ServiceError) as caught:
        wire.check_request(marker)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message == "text: must be valid UTF-8"
    wire.check_request(pb.DetectRequest(text="ok"))
    assert wire.checked(pb.DetectRequest(text="ok")) == pb.DetectRequest(text="ok")
    with pytest.raises(ServiceError):
        wire.checked(marker)


def test_check_stream_raises_at_the_bad_message():
    marker = wire.MalformedRequest("segserve.v1.VideoFrames", "session_id", "must be valid UTF-8")
    good = vpb.VideoFrames(session_id="s")
    stream = wire.check_stream(iter([good, good, marker, good]))
    assert next(stream) == good and next(stream) == good
    with pytest.raises(ServiceError) as caught:
        next(stream)
    assert caught.value.message == "session_id: must be valid UTF-8"
    checked = wire.checked(iter([good, marker]))  # an iterator is checked message by message
    assert next(checked) == good
    with pytest.raises(ServiceError):
        next(checked)
    with pytest.raises(ServiceError):  # a bad first message is refused at once, before the handler
        wire.checked(iter([marker, good]))
    assert list(wire.checked(iter([]))) == []


def test_marker_fails_safe_when_a_handler_reads_it():
    marker = wire.MalformedRequest("segserve.v1.MaskFromPromptRequest", "text", "must be valid UTF-8")
    for read in (lambda: marker.image_id, lambda: marker.HasField("text"), lambda: marker.WhichOneof("source")):
        with pytest.raises(ServiceError) as caught:
            read()
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ServiceError):
        marker.text = "x"
    assert not hasattr(marker, "__len__") and not hasattr(marker, "__iter__")
    assert "text: must be valid UTF-8" in repr(marker)


# ------------------------------------------------------------------------------------------------
# registration


class _Recorder:
    def __init__(self):
        self.generic, self.registered = [], {}

    def add_generic_rpc_handlers(self, handlers):
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service, handlers):
        self.registered[service] = handlers


class _Servicer:
    def __getattr__(self, name):
        return lambda request, context: (name, request)


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_add_servicer_uses_the_descriptor(service):
    server = _Recorder()
    wire.add_servicer(_Servicer(), server, service)
    handlers = server.registered[service.full_name]
    assert set(handlers) == {m.name for m in service.methods}
    for method in service.methods:
        handler = handlers[method.name]
        assert handler.request_streaming == method.client_streaming
        assert handler.response_streaming == method.server_streaming
        assert handler.request_deserializer.message_class.DESCRIPTOR is method.input_type
        assert isinstance(handler.request_deserializer(b"\xff"), wire.MalformedRequest)
        details = type("Details", (), {"method": f"/{service.full_name}/{method.name}"})()
        assert server.generic[0].service(details) is not None


@pytest.mark.parametrize("api, service", list(zip(["segmentation", "video", "automask"], SERVICES)),
                         ids=["segmentation", "video", "automask"])
def test_registrar_wraps_generated_registration(api, service):
    module = load(api)[1]
    generated = getattr(module, f"add_{service.name}Servicer_to_server")
    server = _Recorder()
    generated(_Servicer(), wire.TolerantRegistrar(server))
    for method in service.methods:
        for handler in (server.registered[service.full_name][method.name],
                        server.generic[0].service(type("D", (), {"method": f"/{service.full_name}/{method.name}"})())):
            assert handler.request_streaming == method.client_streaming
            assert handler.response_streaming == method.server_streaming
            marker = handler.request_deserializer(key(1, 7))
            assert marker == wire.MalformedRequest(method.input_type.full_name, "request",
                                                   f"not a valid {method.input_type.name}")
            behaviour = {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
                         (True, False): handler.stream_unary, (True, True): handler.stream_stream}[
                (method.client_streaming, method.server_streaming)]
            assert behaviour(1, 2) == (method.name, 1)


# ------------------------------------------------------------------------------------------------
# end to end: raw bytes to the real orchestrator + embedded Triton


def _count(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("segserve_requests_total", {"method": method, "code": code}) or 0.0


def _call(stack, path: str, data, streaming_request: bool = False, streaming_response: bool = False):
    """Send raw bytes (identity serializer), return (code, details)."""
    with grpc.insecure_channel(stack.address) as channel:
        try:
            if streaming_request:
                channel.stream_unary(path, request_serializer=None, response_deserializer=None)(iter(data), timeout=60)
            elif streaming_response:
                for _ in channel.unary_stream(path, request_serializer=None, response_deserializer=None)(data, timeout=60):
                    pass
            else:
                channel.unary_unary(path, request_serializer=None, response_deserializer=None)(data, timeout=60)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def _png() -> bytes:
    import numpy as np

    from segserve.common.image import encode_png

    return encode_png(np.zeros((16, 16, 3), np.uint8))


E2E = {
    "mask_from_prompt_text": ("/segserve.v1.Segmentation/MaskFromPrompt", "MaskFromPrompt",
                              lambda: swap(pb.MaskFromPromptRequest(image=_png(), text="ZZ"), "ZZ", b"\xff\xfe"),
                              "text: must be valid UTF-8", {}),
    "mask_from_prompt_image_id": ("/segserve.v1.Segmentation/MaskFromPrompt", "MaskFromPrompt",
                                  lambda: swap(pb.MaskFromPromptRequest(image_id="ZZ"), "ZZ", b"\xc0\xaf"),
                                  "image_id: must be valid UTF-8", {}),
    "mask_from_prompt_truncated": ("/segserve.v1.Segmentation/MaskFromPrompt", "MaskFromPrompt",
                                   lambda: pb.MaskFromPromptRequest(image=_png()).SerializeToString()[:-3],
                                   "request: not a valid MaskFromPromptRequest", {}),
    "close_image": ("/segserve.v1.Segmentation/CloseImage", "CloseImage",
                    lambda: swap(pb.CloseImageRequest(image_id="ZZ"), "ZZ", b"\xed\xa0"), "image_id: must be valid UTF-8", {}),
    "detect": ("/segserve.v1.Segmentation/Detect", "Detect",
               lambda: swap(pb.DetectRequest(image=_png(), text="ZZ"), "ZZ", b"\xff\xfe"), "text: must be valid UTF-8", {}),
    "generate_masks": ("/segserve.v1.AutoMask/GenerateMasks", "GenerateMasks",
                       lambda: swap(apb.GenerateMasksRequest(image_id="ZZ"), "ZZ", b"\xff\xfe"),
                       "image_id: must be valid UTF-8", {"streaming_response": True}),
    "video_add_prompts": ("/segserve.v1.VideoTracking/AddPrompts", "AddPrompts",
                          lambda: swap(vpb.AddPromptsRequest(session_id="s", text=vpb.TextPrompt(text="ZZ")), "ZZ",
                                       b"\xff\xfe"), "text.text: must be valid UTF-8", {}),
    "video_add_prompts_mask": ("/segserve.v1.VideoTracking/AddPrompts", "AddPrompts",
                               lambda: swap(add_prompts_with_masks(), "Q2", b"\xff\xfe"),
                               "objects[2].mask.rle.counts: must be valid UTF-8", {}),
    "video_add_frames": ("/segserve.v1.VideoTracking/AddFrames", "AddFrames",
                         lambda: [swap(vpb.VideoFrames(session_id="ZZ"), "ZZ", b"\xff\xfe")],
                         "session_id: must be valid UTF-8", {"streaming_request": True}),
    "video_start_session": ("/segserve.v1.VideoTracking/StartVideoSession", "StartVideoSession",
                            lambda: [vpb.VideoFrames(frames=[vpb.Frame(image=_png())]).SerializeToString()[:-2]],
                            "request: not a valid VideoFrames", {"streaming_request": True}),
}


# Every RPC wrapper (segserve/orchestrator/rpc.py) checks the request before its handler runs, so
# even handlers that would first answer something else (Detect and StartVideoSession check that
# their model is served: UNIMPLEMENTED in this repository) refuse a malformed request by its field.
@pytest.mark.parametrize("case", sorted(E2E))
def test_malformed_request_end_to_end(stack, case):
    path, method, build, expected, kind = E2E[case]
    before = _count(method, "INVALID_ARGUMENT")
    internal_before = _count(method, "INTERNAL")
    code, details = _call(stack, path, build(), **kind)
    assert details != "Exception deserializing request!"
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, expected)
    assert _count(method, "INVALID_ARGUMENT") == before + 1
    assert _count(method, "INTERNAL") == internal_before


def test_server_still_answers_well_formed_requests(stack):
    with grpc.insecure_channel(stack.address) as channel:
        stub = load("segmentation")[1].SegmentationStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
        assert info.models
        with pytest.raises(grpc.RpcError) as caught:
            stub.CloseImage(pb.CloseImageRequest(image_id="not-an-id"), timeout=60)
        assert caught.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
