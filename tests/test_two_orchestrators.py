"""Two orchestrators sharing the id key in front of one real embedded Triton: every call of an image
session and of a video session alternates between them, and the answers are those of the same
calls sent to one orchestrator. Sessions are adopted on first use, and closing or ending one through
either orchestrator ENDs it in Triton, so the other then answers NOT_FOUND."""
from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from segserve.client import SegservClient
from segserve.common.synthetic_video import moving_shapes
from segserve.orchestrator.triton_pool import IMAGE, VIDEO

from .conftest import TEST_ID_KEY

HW = (96, 128)
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def artifacts(family_artifacts) -> Path:
    """SAM 2 image and SAM 2 video side by side (the session's shared export)."""
    return family_artifacts("sam2", "sam2_video")


@pytest.fixture(scope="module")
def orchestrators(artifacts, tmp_path_factory):
    from segserve.orchestrator import server as orchestrator_server
    from segserve.orchestrator.settings import Settings
    from segserve.repository.builder import build_repository
    from segserve.runtime.stack import start_stack
    from segserve.runtime.triton import free_port

    repository = tmp_path_factory.mktemp("two_orchestrators_repository")
    build_repository(artifacts, repository, "embedded", session_ttl_s=600, max_sessions=8,
                     options={"max_video_objects": 4, "video_intra_op_threads": 1})
    with start_stack(repository, tmp_path_factory.mktemp("two_orchestrators_triton"),
                     Settings(id_key=TEST_ID_KEY)) as stack:
        other = orchestrator_server.start(Settings(triton_url=stack.triton.grpc_url, grpc_port=0, id_key=TEST_ID_KEY,
                                                   metrics_port=free_port(), host="127.0.0.1"))
        try:
            yield stack.orchestrator, other
        finally:
            other.stop(grace_s=0.5)


@pytest.fixture()
def clients(orchestrators):
    first, second = orchestrators
    with SegservClient(first.address) as a, SegservClient(second.address) as b:
        yield a, b


def _code(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kwargs)
        list(result) if hasattr(result, "__next__") else None
    return info.value.code()


# ---------------------------------------------------------------------------------- image sessions

PROMPTS = [[(100, 100, 1)], [(240, 150, 1), (60, 50, 0)], [(300, 220, 1)], [(120, 300, 1), (130, 310, 1)]]


def _image_script(open_on, prompt_on, close_on, photo) -> tuple[str, list]:
    opened = open_on.open_image(photo)
    results = [prompt_on[i % len(prompt_on)].mask_from_prompt(image_id=opened.image_id, points=p, multimask=True)
               for i, p in enumerate(PROMPTS)]
    close_on.close_image(opened.image_id)
    return opened.image_id, [[m.mask for obj in r.objects for m in obj.masks] for r in results]


def test_image_session_alternates_between_orchestrators(orchestrators, clients, photo):
    a, b = clients
    _, expected = _image_script(a, [a], a, photo)
    image_id, got = _image_script(a, [b, a], b, photo)  # OpenImage on A, prompts on B, A, B, A, CloseImage on B
    assert len(got) == len(expected) == len(PROMPTS)
    for want, have in zip(expected, got):
        assert len(want) == len(have) == 3
        assert all(np.array_equal(w, h) for w, h in zip(want, have))
        assert any(m.any() for m in have)
    # Closed through B: the opener finds it gone, and neither holds it any more.
    assert _code(a.mask_from_prompt, image_id=image_id, points=[(5, 5, 1)]) == NOT_FOUND
    assert _code(b.mask_from_prompt, image_id=image_id, points=[(5, 5, 1)]) == NOT_FOUND
    assert _code(a.close_image, image_id) == NOT_FOUND
    for orchestrator in orchestrators:
        assert orchestrator.service.images.held() == 0
        assert all(r.held[IMAGE] == 0 for r in orchestrator.service.pool.replicas())


# ---------------------------------------------------------------------------------- video sessions


def _video_script(video_on, frames, centres) -> tuple[str, list]:
    """StartVideoSession, AddPrompts, Propagate, AddPrompts (a second object), RemoveObject (the object
    the previous call added), EndSession: call i goes to video_on[i % len(video_on)]."""
    calls = iter(range(100))

    def on():
        return video_on[next(calls) % len(video_on)].video

    info = on().start_session(list(frames), batch_size=3)
    sid = info.session_id
    answers: list = [(info.num_frames, info.height, info.width)]
    answers.append(on().add_prompts(sid, 0, {1: {"points": [(*centres[1][0], 1)]}}).masks)
    answers.append([(f.frame_index, f.masks) for f in on().propagate(sid)])
    answers.append(on().add_prompts(sid, 3, {2: {"points": [(*centres[2][3], 1)]},
                                             1: {"points": [(*centres[1][3], 1)]}}).masks)
    answers.append(list(on().remove_object(sid, 2).object_ids))
    on().end_session(sid)
    return sid, answers


def _same_masks(want: dict, have: dict) -> None:
    assert sorted(want) == sorted(have)
    for obj_id in want:
        assert np.array_equal(want[obj_id], have[obj_id]), obj_id


def test_video_session_alternates_between_orchestrators(orchestrators, clients):
    a, b = clients
    frames, centres = moving_shapes(8, *HW)
    _, expected = _video_script([a], frames, centres)
    sid, got = _video_script([a, b], frames, centres)  # Start on A, AddPrompts on B, ..., EndSession on B
    assert got[0] == expected[0] == (8, *HW)
    _same_masks(expected[1], got[1])
    assert got[1][1].any()
    assert [i for i, _ in got[2]] == [i for i, _ in expected[2]] == list(range(8))
    for (_, want), (_, have) in zip(expected[2], got[2]):
        _same_masks(want, have)
    assert sum(m[1].sum() for _, m in got[2]) > 0
    _same_masks(expected[3], got[3])
    assert got[3][1].any() and got[3][2].any()
    assert got[4] == expected[4] == [1]  # A removed the object B added (A asked Triton for its objects)
    # Ended through B: A, which opened it, finds it gone (NOT_FOUND) and forgets it; B remembers it ended.
    assert _code(a.video.add_prompts, sid, 0, {1: {"points": [(10, 10, 1)]}}) == NOT_FOUND
    assert _code(a.video.propagate, sid) == NOT_FOUND
    assert _code(a.video.end_session, sid) == NOT_FOUND
    assert _code(b.video.end_session, sid) == NOT_FOUND
    for orchestrator in orchestrators:
        video = orchestrator.service.video
        assert video.sessions.held() == 0
        assert all(r.held[VIDEO] == 0 for r in orchestrator.service.pool.replicas())
    assert sid not in [s.session_id for s in a.video.list_sessions() + b.video.list_sessions()]


def test_an_adopted_video_session_is_not_counted_against_the_adopter(orchestrators, clients):
    """Adopted once Triton answered INFO for it; an id Triton does not hold is NOT_FOUND and never adopted."""
    a, b = clients
    first, second = orchestrators
    frames, centres = moving_shapes(3, *HW)
    info = a.video.start_session(list(frames))
    try:
        listed = {s.session_id: s for s in b.video.list_sessions()}
        assert info.session_id not in listed  # not adopted before it is used through B
        out = b.video.add_prompts(info.session_id, 1, {5: {"points": [(*centres[1][1], 1)]}})
        assert out.masks[5].any()
        adopted = {s.session_id: s for s in b.video.list_sessions()}[info.session_id]
        assert (adopted.num_frames, adopted.height, adopted.width, list(adopted.object_ids)) == (3, *HW, [5])
        assert second.service.video.sessions.held() == 1
        assert all(r.held[VIDEO] == 0 for r in second.service.pool.replicas())
        assert sum(r.held[VIDEO] for r in first.service.pool.replicas()) == 1
    finally:
        a.video.end_session(info.session_id)
    # Ended through A, which opened it: B, which adopted it, finds it gone.
    assert _code(b.video.propagate, info.session_id) == NOT_FOUND
    assert second.service.video.sessions.held() == 0
    # An authentic id of a sequence Triton never held: NOT_FOUND, not adopted.
    from segserve.orchestrator.ids import IdSigner, SessionRef

    ref = IdSigner(TEST_ID_KEY.encode()).verify(info.session_id, "video")
    unknown = IdSigner(TEST_ID_KEY.encode()).sign(SessionRef("video", ref.replica_url, ref.sequence_id + 1, 0, 0))
    assert _code(b.video.add_prompts, unknown, 0, {1: {"points": [(1, 1, 1)]}}) == NOT_FOUND
    assert _code(b.video.end_session, unknown) == NOT_FOUND
    assert second.service.video.sessions.held() == 0


def test_sessions_used_only_through_the_other_orchestrator_outlive_the_openers_idle_time(orchestrators, clients,
                                                                                            photo, photo_click_matches):
    """No affinity: a client may keep using a session through B long after A, which opened it, last
    saw it. A's idle time says nothing then: A forgets the session without ENDing it while the model
    (whose TTL sees every use) still holds it, and serves it again by adopting it."""
    photo_click_matches.reference(100, 100)  # the PyTorch reference first, outside the timed part
    import time

    a, b = clients
    first, _ = orchestrators
    frames, centres = moving_shapes(3, *HW)
    images, video = first.service.images, first.service.video
    video.params()
    saved = images.ttl_s, video._params["session_ttl_s"]
    images.ttl_s, video._params["session_ttl_s"] = 1.0, "1.0"  # A's idle limit only; the models keep 600 s
    try:
        opened = a.open_image(photo)
        started = a.video.start_session(list(frames))
        point = {1: {"points": [(*centres[1][0], 1)]}}
        for _ in range(3):
            time.sleep(0.6)
            photo_click_matches(b.mask_from_prompt(image_id=opened.image_id, points=[(100, 100, 1)]), 100, 100)
            assert b.video.add_prompts(started.session_id, 0, point).masks[1].any()
        time.sleep(1.2)
        # A's expiry passes (any call runs them) find both idle here: Triton still holds them, so no END.
        a.close_image(a.open_image(photo).image_id)
        a.video.list_sessions()
        assert images.held() == 0, "A still holds the image session"  # forgotten here ...
        assert video.sessions.held() == 0, "A still holds the video session"
        photo_click_matches(b.mask_from_prompt(image_id=opened.image_id, points=[(100, 100, 1)]), 100, 100)  # not ended
        assert b.video.add_prompts(started.session_id, 1, point).masks[1].any()
        photo_click_matches(a.mask_from_prompt(image_id=opened.image_id, points=[(100, 100, 1)]), 100, 100)  # adopted
        assert a.video.add_prompts(started.session_id, 2, point).masks[1].any()
    finally:
        images.ttl_s, video._params["session_ttl_s"] = saved
    b.close_image(opened.image_id)
    b.video.end_session(started.session_id)
    assert _code(a.mask_from_prompt, image_id=opened.image_id, points=[(1, 1, 1)]) == NOT_FOUND
    assert _code(a.video.add_prompts, started.session_id, 0, point) == NOT_FOUND
