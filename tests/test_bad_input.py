"""Bad input gets the right gRPC status and a message naming the field; others keep being served."""
import io
import struct
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image

from segserve.api import pb
from segserve.client import SegservClient

INVALID, NOT_FOUND, EXHAUSTED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                 grpc.StatusCode.RESOURCE_EXHAUSTED)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (invalid) body: a bomb's signature."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def expect(code, field, call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    assert info.value.code() == code, info.value.details()
    assert field in info.value.details(), info.value.details()
    return info.value.details()


@pytest.fixture()
def session(client, photo):
    opened = client.open_image(photo)
    yield opened
    try:
        client.close_image(opened.image_id)
    except grpc.RpcError:
        pass


def test_bad_images(client):
    expect(INVALID, "image", client.open_image, b"definitely not an image")
    expect(INVALID, "image", client.open_image, b"")
    expect(INVALID, "image", client.open_image, png_header_only(0, 10))
    expect(INVALID, "image", client.mask_from_prompt, image=b"\xff\xd8\xff\xe0 truncated jpeg", points=[(1, 1)])
    truncated = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(truncated, format="PNG")
    expect(INVALID, "image", client.open_image, truncated.getvalue()[:60])


def test_huge_images_are_refused_before_decoding(client):
    details = expect(EXHAUSTED, "image", client.open_image, png_header_only(100_000, 100_000))
    assert "pixel" in details
    # A real, valid, highly compressible image over the pixel limit (40 MPix in these tests).
    bomb = io.BytesIO()
    Image.new("L", (7000, 7000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 200_000
    expect(EXHAUSTED, "image", client.open_image, bomb.getvalue())


@pytest.mark.parametrize("kwargs,code,field", [
    (dict(points=[(float("nan"), 10, 1)]), INVALID, "points[0]"),
    (dict(points=[(10, 10, 1), (float("inf"), 10, 1)]), INVALID, "points[1]"),
    (dict(points=[(-1, 10, 1)]), INVALID, "points[0]"),
    (dict(points=[(10, 100000, 1)]), INVALID, "points[0]"),
    (dict(points=[(10, 10, 7)]), INVALID, "points[0].label"),
    (dict(boxes=[(10, 10, 5, 50)]), INVALID, "boxes[0]"),
    (dict(boxes=[(10, 10, 50, float("nan"))]), INVALID, "boxes[0]"),
    (dict(boxes=[(0, 0, 50, 50), (0, 0, 5000, 50)]), INVALID, "boxes[1]"),
    (dict(points=[(1, 1, 1)] * 65), EXHAUSTED, "points"),
    (dict(boxes=[(0, 0, 5, 5)] * 33), EXHAUSTED, "boxes"),
    (dict(mask_input=np.zeros((128, 128), np.float32)), INVALID, "mask_input"),
    (dict(mask_input=np.full((256, 256), np.nan, np.float32)), INVALID, "mask_input"),
    (dict(), INVALID, "points"),
])
def test_bad_prompts(client, session, kwargs, code, field):
    expect(code, field, client.mask_from_prompt, image_id=session.image_id, **kwargs)


def test_a_bad_prompt_leaves_the_session_intact(client, session):
    before = client.mask_from_prompt(image_id=session.image_id, points=[(100, 100, 1)])
    expect(INVALID, "points[0]", client.mask_from_prompt, image_id=session.image_id, points=[(float("nan"), 1, 1)])
    after = client.mask_from_prompt(image_id=session.image_id, points=[(100, 100, 1)])
    np.testing.assert_array_equal(before.objects[0].masks[0].mask, after.objects[0].masks[0].mask)


def test_unknown_closed_and_missing_image_ids(client, photo):
    expect(NOT_FOUND, "image_id", client.mask_from_prompt, image_id="0" * 32, points=[(1, 1)])
    opened = client.open_image(photo)
    client.close_image(opened.image_id)
    expect(NOT_FOUND, "image_id", client.mask_from_prompt, image_id=opened.image_id, points=[(1, 1)])
    expect(NOT_FOUND, "image_id", client.close_image, opened.image_id)
    expect(INVALID, "image_id", client.stub.MaskFromPrompt, pb.MaskFromPromptRequest(points=[pb.Point(x=1, y=1)]))
    expect(INVALID, "image_id", client.close_image, "")


def test_session_limit(client, photo):
    opened = []
    try:
        with pytest.raises(grpc.RpcError) as info:
            for _ in range(9):  # the test stack allows 8
                opened.append(client.open_image(photo).image_id)
        assert info.value.code() == EXHAUSTED and "image" in info.value.details()
        assert len(opened) == 8
    finally:
        for image_id in opened:
            client.close_image(image_id)
    client.close_image(client.open_image(photo).image_id)  # room again


def test_good_requests_unharmed_by_concurrent_bad_ones(client, stack, photo):
    opened = client.open_image(photo)
    expected = client.mask_from_prompt(image_id=opened.image_id, boxes=[(60, 40, 330, 380)]).objects[0].masks[0].mask
    failures, results = [], []

    def good():
        with SegservClient(stack.address) as c:
            for _ in range(3):
                results.append(c.mask_from_prompt(image_id=opened.image_id, boxes=[(60, 40, 330, 380)]))

    def bad():
        with SegservClient(stack.address) as c:
            for call in (lambda: c.open_image(b"junk"), lambda: c.mask_from_prompt(image_id="x", points=[(1, 1)]),
                         lambda: c.mask_from_prompt(image_id=opened.image_id, points=[(float("nan"), 1)])):
                try:
                    call()
                    failures.append("bad request succeeded")
                except grpc.RpcError as exc:
                    if exc.code() not in (INVALID, NOT_FOUND):
                        failures.append(exc.code())

    threads = [threading.Thread(target=f) for f in (good, bad, good, bad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close_image(opened.image_id)
    assert not failures
    assert len(results) == 6
    for r in results:
        np.testing.assert_array_equal(r.objects[0].masks[0].mask, expected)


@pytest.fixture(scope="module")
def short_ttl_stack(sam2_artifacts, tmp_path_factory):
    from segserve.repository.builder import build_repository
    from segserve.runtime.stack import start_stack

    repository = tmp_path_factory.mktemp("ttl_repo")
    build_repository(sam2_artifacts, repository, "embedded", session_ttl_s=2.0)
    with start_stack(repository, tmp_path_factory.mktemp("ttl_triton")) as s:
        yield s


def test_expired_sessions_are_reported(short_ttl_stack, photo, photo_click_matches):
    with SegservClient(short_ttl_stack.address) as c:
        opened = c.open_image(photo)
        c.mask_from_prompt(image_id=opened.image_id, points=[(5, 5, 1)])
        time.sleep(2.5)
        details = expect(NOT_FOUND, "image_id", c.mask_from_prompt, image_id=opened.image_id, points=[(5, 5, 1)])
        assert "expired" in details
        # Triton drops the idle sequence on its own; the orchestrator maps that too.
        short_ttl_stack.orchestrator.service.images.ttl_s = 1000.0
        opened = c.open_image(photo)
        time.sleep(2.5)
        details = expect(NOT_FOUND, "image_id", c.mask_from_prompt, image_id=opened.image_id, points=[(5, 5, 1)])
        assert "expired" in details
        # ... and keeps serving new sessions.
        opened = c.open_image(photo)
        photo_click_matches(c.mask_from_prompt(image_id=opened.image_id, points=[(5, 5, 1)]), 5, 5)


def test_a_second_orchestrator_serves_sessions_the_first_opened(stack, client, photo):
    """image_ids carry their replica and sequence, signed with a key every orchestrator shares: no
    sticky load balancing between orchestrators."""
    from segserve.orchestrator import server as orchestrator_server
    from segserve.orchestrator.settings import Settings
    from segserve.runtime.triton import free_port

    from .conftest import TEST_ID_KEY

    other = orchestrator_server.start(Settings(triton_url=stack.triton.grpc_url, grpc_port=0, id_key=TEST_ID_KEY,
                                               metrics_port=free_port(), host="127.0.0.1"))
    try:
        with SegservClient(other.address) as second:
            opened = client.open_image(photo)
            expected = client.mask_from_prompt(image_id=opened.image_id, points=[(100, 100, 1)])
            got = second.mask_from_prompt(image_id=opened.image_id, points=[(100, 100, 1)])
            np.testing.assert_array_equal(got.objects[0].masks[0].mask, expected.objects[0].masks[0].mask)
            # Adopted once Triton answered for it, and not counted against the second one's cap.
            assert other.service.images.held() == 1
            assert other.service.images._explicit_count() == 0
            second.close_image(opened.image_id)
            assert other.service.images.held() == 0
            expect(NOT_FOUND, "image_id", client.mask_from_prompt, image_id=opened.image_id, points=[(1, 1)])
            expect(NOT_FOUND, "image_id", second.close_image, opened.image_id)
    finally:
        other.stop(grace_s=0.5)


def test_model_info_names_checkpoints_without_server_paths(client, sam2_artifacts):
    """GetModelInfo tells a client which checkpoint is served (name and hash), not where it lives."""
    info = client.model_info()
    sam2 = next(m for m in info.models if m.family == "sam2")
    assert sam2.checkpoint == "sam2-random-tiny" and len(sam2.checkpoint_sha256) == 64
    for model in info.models:
        assert "/" not in model.checkpoint and str(sam2_artifacts) not in str(info)


def test_unknown_mask_format_is_refused(client, session):
    stub = client.stub
    request = pb.MaskFromPromptRequest(image_id=session.image_id, points=[pb.Point(x=5, y=5, label=1)], mask_format=7)
    with pytest.raises(grpc.RpcError) as info:
        stub.MaskFromPrompt(request, timeout=30)
    assert info.value.code() == INVALID and info.value.details().startswith("mask_format")


def test_default_limits_fit_the_session_models_cap():
    """Explicit sessions plus the embedding cache fit in the session model's default cap, so
    OpenImage's stated limit is reachable even with the cache full."""
    import inspect

    from segserve.orchestrator.settings import Settings
    from segserve.repository.builder import build_repository

    model_cap = inspect.signature(build_repository).parameters["max_sessions"].default
    assert Settings().max_image_sessions + Settings().embedding_cache_size <= model_cap
