"""Session ids cannot be forged: nothing in an id is used before its HMAC verifies, sizes come from
Triton, made-up ids never consume capacity, and error messages quote ids truncated."""
import base64
import secrets

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segserve.api import load, pb, pb_grpc
from segserve.orchestrator.ids import IdSigner, SessionRef
from segserve.orchestrator.settings import Settings

from .conftest import TEST_ID_KEY

NOT_FOUND = grpc.StatusCode.NOT_FOUND
vpb, vpb_grpc = load("video")


def _fields(token: str) -> tuple[str, bytes, str]:
    version, payload, tag = token.split(".")
    return version, base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)), tag


def _with_payload(token: str, payload: bytes) -> str:
    version, _, tag = token.split(".")
    return f"{version}.{base64.urlsafe_b64encode(payload).decode().rstrip('=')}.{tag}"


# ---------------------------------------------------------------------------------- the signer


def test_signed_ids_round_trip_and_refuse_every_change():
    signer = IdSigner(b"k" * 32)
    ref = SessionRef("image", "10.0.0.5:8001", 0xDEADBEEF, 480, 640)
    token = signer.sign(ref)
    assert signer.verify(token, "image") == ref
    assert signer.verify(token, "video") is None  # an image id is not a video id
    _, payload, _ = _fields(token)
    for changed in (payload.replace(b"|480|", b"|4294967296|"), payload.replace(b"10.0.0.5", b"10.0.0.6"),
                    payload.replace(b"deadbeef", b"deadbeee"), payload.replace(b"image", b"video")):
        assert changed != payload
        assert signer.verify(_with_payload(token, changed), "image") is None
        assert signer.verify(_with_payload(token, changed), "video") is None
    version, body, tag = token.split(".")
    flipped = tag[:-1] + ("A" if tag[-1] != "A" else "B")
    assert signer.verify(f"{version}.{body}.{flipped}", "image") is None
    assert IdSigner(b"x" * 32).verify(token, "image") is None  # another key
    for junk in ("", "s2", "s2..", "s2.!!!.!!!", "s1." + body + "." + tag, token + ".x", "s2." + "A" * 600 + ".x"):
        assert signer.verify(junk, "image") is None


def test_rotation_accepts_the_previous_key_and_signs_with_the_new_one():
    old, new = b"o" * 32, b"n" * 32
    ref = SessionRef("video", "127.0.0.1:8001", 7, 0, 0)
    issued_before = IdSigner(old).sign(ref)
    rotating = IdSigner(new, previous=old)
    assert rotating.verify(issued_before, "video") == ref
    issued_after = rotating.sign(ref)
    assert IdSigner(new).verify(issued_after, "video") == ref
    assert IdSigner(old).verify(issued_after, "video") is None
    assert IdSigner(new).verify(issued_before, "video") is None  # rotation over: the old key is gone


def test_keys_come_from_settings_files(tmp_path):
    (tmp_path / "current").write_text("c" * 40 + "\n")
    (tmp_path / "previous").write_text("p" * 40)
    signer = IdSigner.from_settings(Settings(id_key_file=str(tmp_path / "current"),
                                             id_key_previous_file=str(tmp_path / "previous")))
    ref = SessionRef("image", "a:1", 1, 2, 3)
    assert IdSigner(b"c" * 40).verify(signer.sign(ref), "image") == ref
    assert signer.verify(IdSigner(b"p" * 40).sign(ref), "image") == ref
    # The Secret's `previous` file exists only during a rotation.
    alone = IdSigner.from_settings(Settings(id_key_file=str(tmp_path / "current"),
                                            id_key_previous_file=str(tmp_path / "missing")))
    assert alone.verify(signer.sign(ref), "image") == ref
    with pytest.raises(FileNotFoundError):
        IdSigner.from_settings(Settings(id_key_file=str(tmp_path / "missing")))
    with pytest.raises(ValueError):
        IdSigner(b"short")


# ---------------------------------------------------------------------------------- the service


@pytest.fixture()
def stubs(stack):
    channel = grpc.insecure_channel(stack.address)
    yield pb_grpc.SegmentationStub(channel), vpb_grpc.VideoTrackingStub(channel), channel
    channel.close()


def _prompt(image_id: str) -> pb.MaskFromPromptRequest:
    return pb.MaskFromPromptRequest(image_id=image_id, points=[pb.Point(x=5, y=5, label=1)])


def _refused(call, request, code=NOT_FOUND, field="image_id") -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert info.value.details().startswith(field), info.value.details()
    return info.value.details()


def test_altered_ids_are_refused_and_the_server_survives(stack, stubs, client, photo):
    seg, _, channel = stubs
    opened = client.open_image(photo)
    genuine = opened.image_id
    _, payload, _ = _fields(genuine)
    kind, url, sequence, height, width = payload.decode().split("|")
    # The attack that used to kill the server: a size of 2**32 written into the id.
    for forged_payload in (f"{kind}|{url}|{sequence}|4294967296|{width}", f"{kind}|{url}|{sequence}|8000|8000",
                           f"{kind}|10.0.0.99:8001|{sequence}|{height}|{width}",
                           f"{kind}|{url}|{int(sequence, 16) + 1:x}|{height}|{width}",
                           f"video|{url}|{sequence}|{height}|{width}"):
        _refused(seg.MaskFromPrompt, _prompt(_with_payload(genuine, forged_payload.encode())))
        _refused(seg.CloseImage, pb.CloseImageRequest(image_id=_with_payload(genuine, forged_payload.encode())))
    version, body, tag = genuine.split(".")
    _refused(seg.MaskFromPrompt, _prompt(f"{version}.{body}.{tag[::-1]}"))
    # The previous, unsigned format is not an id any more.
    old = base64.urlsafe_b64encode(f"1|{url}|{sequence}|4294967296|{width}".encode()).decode().rstrip("=")
    _refused(seg.MaskFromPrompt, _prompt(old))
    # Signed with another key: refused too.
    foreign = IdSigner(b"z" * 32).sign(SessionRef("image", url, int(sequence, 16), int(height), int(width)))
    _refused(seg.MaskFromPrompt, _prompt(foreign))
    # An image id is not a video session id.
    _refused(stubs[1].EndSession, vpb.EndSessionRequest(session_id=genuine), field="session_id")
    # The genuine id still works, and its masks have the image's size.
    result = client.mask_from_prompt(image_id=genuine, points=[(50, 60, 1)])
    assert result.objects[0].best.mask.shape == photo.shape[:2]
    client.close_image(genuine)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_size_that_disagrees_with_triton_is_refused(stack, client, photo):
    """Even an id signed with the real key (a bug or a leaked key) cannot set the output size: the
    size Triton reports for the sequence must match."""
    opened = client.open_image(photo)
    ref = IdSigner(TEST_ID_KEY.encode()).verify(opened.image_id, "image")
    assert ref is not None and (ref.height, ref.width) == photo.shape[:2]
    lying = IdSigner(TEST_ID_KEY.encode()).sign(SessionRef("image", ref.replica_url, ref.sequence_id, 8000, 8000))
    seg = pb_grpc.SegmentationStub(grpc.insecure_channel(stack.address))
    details = _refused(seg.MaskFromPrompt, _prompt(lying))
    assert "does not match" in details
    client.close_image(opened.image_id)


def test_messages_quote_ids_truncated(stubs):
    seg, video, _ = stubs
    huge = "s2." + "A" * 100_000 + ".B"
    assert len(_refused(seg.MaskFromPrompt, _prompt(huge))) < 300
    assert len(_refused(seg.CloseImage, pb.CloseImageRequest(image_id=huge))) < 300
    assert len(_refused(video.AddPrompts, vpb.AddPromptsRequest(session_id=huge), field="session_id")) < 300


def test_a_thousand_made_up_ids_leave_open_image_working(stack, stubs, client, photo):
    seg, _, _ = stubs
    images = stack.orchestrator.service.images
    held_before = images.held()
    url = stack.triton.grpc_url
    for i in range(1000):
        if i % 2:  # well-formed, naming the real replica, with a random sequence and no valid tag
            payload = f"image|{url}|{secrets.randbits(63):x}|96|128".encode()
            made_up = f"s2.{base64.urlsafe_b64encode(payload).decode().rstrip('=')}.{secrets.token_urlsafe(16)}"
        else:
            made_up = secrets.token_urlsafe(40)
        request = pb.MaskFromPromptRequest(image_id=made_up) if i % 3 else _prompt(made_up)
        with pytest.raises(grpc.RpcError) as info:
            seg.MaskFromPrompt(request, timeout=30)
        assert info.value.code() == NOT_FOUND, info.value.details()
    assert images.held() == held_before  # nothing was adopted or reserved
    opened = [client.open_image(photo) for _ in range(3)]
    result = client.mask_from_prompt(image_id=opened[0].image_id, points=[(10, 10, 1)])
    assert np.asarray(result.objects[0].best.mask).shape == photo.shape[:2]
    for session in opened:
        client.close_image(session.image_id)


def test_an_id_has_exactly_one_spelling():
    """base64 decoders ignore padding and the unused low bits of the last character: without a
    canonical check, `<id>==` or a tweaked last character would be another valid id for the same
    session (found by the fuzz)."""
    signer = IdSigner(b"k" * 32)
    token = signer.sign(SessionRef("image", "127.0.0.1:8001", 42, 10, 20))
    version, payload, tag = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    variants = {token + "=", token + "==", f"{version}.{payload}=.{tag}", f"{version}.{payload}.{tag}=="}
    for position in (1, 2):
        part = token.split(".")[position]
        for ch in alphabet:
            spelled = part[:-1] + ch
            if spelled != part:
                pieces = token.split(".")
                pieces[position] = spelled
                variants.add(".".join(pieces))
    assert all(signer.verify(v, "image") is None for v in variants)
    assert signer.verify(token, "image") is not None
