"""The video tracker's batching (issue 15): every object of a frame through memory attention and the
decoder in one call per shape group, and the STEPs of several sessions computed together
(`VideoTracker.step_many`), against the one-call-per-object path (`batch_objects=False`) and
transformers' `Sam2VideoModel`; one failing request of a batch fails alone."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks.gpu_check_video_state import run_raw
from segserve.common import sam2_transforms
from segserve.common.status import CANCELLED, INVALID_ARGUMENT, ModelRefusal
from segserve.common.synthetic_video import moving_shapes
from tests.sam2_video_reference import compare, iou, masks_from_low_res, run_reference

HW = (96, 128)
FRAMES = 8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def video_artifacts(family_artifacts) -> Path:
    return family_artifacts("sam2_video")  # the session's one video export (tests/conftest.py)


@pytest.fixture(scope="module")
def config(video_artifacts) -> dict:
    from segserve.export.manifest import Manifest

    return Manifest(video_artifacts).records["sam2_video_decoder"].model_config


@pytest.fixture(scope="module")
def graphs(video_artifacts):
    from segserve.triton_models.sam2_video_core import LocalGraphs

    return LocalGraphs.from_artifacts(video_artifacts, threads=1)


@pytest.fixture(scope="module")
def clip():
    return moving_shapes(FRAMES, *HW)


# The input whose leading axis counts a call's objects (frames, for the encoder).
COUNTED = {"sam2_video_image_encoder": "pixel_values", "sam2_video_memory_attention": "maskmem_features",
           "sam2_video_decoder": "pix_feat", "sam2_video_memory_encoder": "high_res_masks", "sam2_video_mask_prompt": "mask"}


class CountingGraphs:
    """The graphs, with each call's name and object count kept."""

    def __init__(self, graphs, fail=None):
        self.graphs = graphs
        self.calls: list[tuple[str, int]] = []
        self.fail = fail  # (name, feeds) -> True: this call raises, as a failing graph would

    def run(self, name, feeds):
        self.calls.append((name, int(np.shape(feeds[COUNTED[name]])[0])))
        if self.fail is not None and self.fail(name, feeds):
            raise RuntimeError(f"{name}: injected failure")
        return self.graphs.run(name, feeds)


def mixed_script(centres):
    """Five objects, each its own prompt kind: one click, two clicks (one negative), a box, a box
    with a click, and a mask on a later frame (so objects carry different memory counts and are
    grouped apart); forward to the end, a correction of one object, then backward from it."""
    (x1, y1), (x2, y2) = centres[1][0], centres[2][0]
    yy, xx = np.mgrid[:HW[0], :HW[1]]
    disc = (xx - 24) ** 2 + (yy - HW[0] * 0.78) ** 2 < 11 ** 2
    c1 = centres[1][5]
    return [("prompt", 0, {1: ([(x1, y1)], [1]),
                           2: ([(x2, y2), (5.0, 5.0)], [1, 0]),
                           3: ([(4.0, HW[0] * 0.55), (44.0, HW[0] * 0.95)], [2, 3]),
                           4: ([(x2 - 14, y2 - 14), (x2 + 14, y2 + 14), (x2, y2)], [2, 3, 1])}),
            ("prompt", 2, {5: disc}),
            ("propagate", None, False),
            ("prompt", 5, {1: ([c1, (min(c1[0] + 30, HW[1] - 1), c1[1])], [1, 0])}),
            ("propagate", 5, True)]


def _run(graphs, config, frames, script, batch):
    from segserve.triton_models.sam2_video_core import VideoTracker

    counting = CountingGraphs(graphs)
    results, session = run_raw(VideoTracker(counting, config, batch_objects=batch), frames, script)
    return results, session, counting.calls


def test_batched_objects_equal_one_at_a_time(graphs, config, clip):
    """Every step's low-res logits and scores equal the one-object-at-a-time path's, bit for bit,
    with five objects prompted by clicks, boxes, box + click and a mask, on two frames."""
    frames, centres = clip
    script = mixed_script(centres)
    batched, batched_session, batched_calls = _run(graphs, config, frames, script, True)
    solo, solo_session, solo_calls = _run(graphs, config, frames, script, False)
    assert len(batched) == len(solo) == 2 + FRAMES + 1 + 6
    for a, b in zip(batched, solo):
        assert a[:2] == b[:2]
        np.testing.assert_array_equal(a[2], b[2])
        np.testing.assert_array_equal(a[3], b[3])
    assert batched_session.recount() == solo_session.recount() == (batched_session.frame_bytes,
                                                                   batched_session.memory_bytes)
    # Non-trivial: masks neither empty nor full, and the objects told apart. (The tiny random model
    # pulls tracked objects towards similar masks, so they are compared on the prompt frames and
    # on the logits.)
    masks = {(i, oid): m for i, (_, ids, low, _) in enumerate(batched) for oid, m in zip(ids, masks_from_low_res(low, HW))}
    assert 0.05 < np.median([m.mean() for m in masks.values()]) < 0.95
    first = [masks[(0, oid)] for oid in (1, 2, 3, 4)]
    assert min(iou(a, b) for i, a in enumerate(first) for b in first[i + 1:]) < 0.9
    assert masks[(1, 5)].mean() < 0.1 < masks[(1, 1)].mean()  # the mask prompt is the small disc
    for _, _, low, _ in batched:
        assert all(np.abs(low[i] - low[j]).max() > 1e-2 for i in range(len(low)) for j in range(i + 1, len(low)))
    # The batched path did batch: a tracked frame of five objects is one memory attention and one
    # decoder call (the mask-prompted object, with fewer memories, in its own group at first).
    batched_by = Counter(n for n, _ in batched_calls)
    solo_by = Counter(n for n, _ in solo_calls)
    assert max(b for n, b in batched_calls if n == "sam2_video_memory_attention") == 5
    assert max(b for n, b in batched_calls if n == "sam2_video_decoder") == 5
    assert all(b == 1 for n, b in solo_calls if n in ("sam2_video_memory_attention", "sam2_video_decoder"))
    for name in ("sam2_video_memory_attention", "sam2_video_decoder"):
        assert batched_by[name] * 2 < solo_by[name], (name, batched_by[name], solo_by[name])


def test_batched_objects_match_transformers(video_artifacts, graphs, config, clip):
    """Several objects, mixed prompt kinds: the batched tracker against Sam2VideoModel."""
    from transformers import Sam2VideoModel

    frames, centres = clip
    script = mixed_script(centres)
    model = Sam2VideoModel.from_pretrained(video_artifacts / "checkpoints" / "sam2-video-random-tiny").eval()
    reference = run_reference(model, frames, script)
    batched = [(f, {oid: m for oid, m in zip(ids, masks_from_low_res(low, HW))})
               for f, ids, low, _ in _run(graphs, config, frames, script, True)[0]]
    areas = [m.mean() for _, objs in reference for m in objs.values()]
    assert 0.02 < np.median(areas) < 0.98  # the reference masks are not trivial
    worst, count = compare(batched, reference)
    assert count >= 5 * (FRAMES + 6)
    assert worst >= 0.99, f"worst per-frame IoU {worst:.4f}"


def _sessions(tracker, clips, counts=(1, 2, 3)):
    """One session per clip, each with its own objects and prompts (`counts`: objects per session)."""
    from segserve.triton_models.sam2_video_core import VideoSession

    size = tracker.image_size
    sessions = []
    for count, (frames, centres) in zip(counts, clips):
        session = VideoSession()
        tracker.add_frames(session, list(frames))
        prompts = [([centres[1][0]], [1]), ([centres[2][0], (5.0, 5.0)], [1, 0]),
                   ([(4.0, HW[0] * 0.55), (44.0, HW[0] * 0.95)], [2, 3])][:count]
        tracker.add_prompts(session, 0, list(range(1, count + 1)),
                            [(sam2_transforms.to_model_coords(np.array(p, np.float32), HW, size), np.array(lab, np.int32))
                             for p, lab in prompts])
        sessions.append(session)
    return sessions


def test_steps_of_several_sessions_equal_solo_steps(graphs, config):
    """`step_many` over three sessions (different videos, 1-3 objects, different prompts) gives each
    the result of its own one-object-at-a-time step, in fewer, bigger calls."""
    from segserve.triton_models.sam2_video_core import StepRequest, VideoTracker

    clips = [moving_shapes(5, *HW, seed=seed) for seed in (1, 2, 3)]
    together = CountingGraphs(graphs)
    batched = VideoTracker(together, config)
    solo = VideoTracker(graphs, config, batch_objects=False)
    ours, theirs = _sessions(batched, clips), _sessions(solo, clips)
    together.calls.clear()
    for frame in range(1, 5):
        results = batched.step_many([StepRequest(s, frame) for s in ours])
        for result, session in zip(results, theirs):
            expected = solo.step(session, frame)
            assert result.obj_ids == expected.obj_ids
            np.testing.assert_array_equal(result.low_res_masks, expected.low_res_masks)
            np.testing.assert_array_equal(result.object_scores, expected.object_scores)
    # one encoder call for the three frames; one memory attention / decoder call for the six objects
    assert together.calls.count(("sam2_video_image_encoder", 3)) == 4
    assert together.calls.count(("sam2_video_memory_attention", 6)) == 4
    assert together.calls.count(("sam2_video_decoder", 6)) == 4
    assert len(together.calls) == 4 * 4
    assert [s.recount() for s in ours] == [s.recount() for s in theirs]


def _snapshot(session):
    return (session.memory_bytes, [(o.obj_id, sorted(o.cond), sorted(o.non_cond), dict(o.tracked))
                                   for o in session.objects], session.new_inputs[:])


def test_one_bad_request_in_a_batch_fails_alone(graphs, config):
    """In one `step_many`: a frame out of range, a cancelled request and a request whose graph call
    fails each fail with their own error and leave their session as it was; the others get exactly
    what they get alone (a failed call shared with them is run again without the failing one)."""
    from segserve.triton_models.sam2_video_core import StepRequest, VideoTracker

    clips = [moving_shapes(5, *HW, seed=seed) for seed in (1, 2, 3, 4, 5)]
    solo = VideoTracker(graphs, config, batch_objects=False)
    expected = [solo.step(s, 1) for s in _sessions(solo, clips[:2])]
    poisoned = []  # the failing session's frame features: any call carrying them fails

    def fail(name, feeds):
        if name != "sam2_video_memory_attention" or not poisoned:
            return False
        return any(np.array_equal(row, poisoned[0][0]) for row in feeds["vision_feat"])

    counting = CountingGraphs(graphs, fail)
    tracker = VideoTracker(counting, config)
    good_a, good_b, out_of_range, cancelled, failing = sessions = _sessions(tracker, clips, (1, 2, 1, 2, 3))
    tracker.step(failing, 2)  # caches this frame's features, then they mark its calls
    poisoned.append(failing.feature_cache[1]["vision_feat"])
    failing.feature_cache = None
    before = {id(s): _snapshot(s) for s in sessions}
    counting.calls.clear()
    results = tracker.step_many([StepRequest(good_a, 1), StepRequest(out_of_range, 9),
                                 StepRequest(cancelled, 1, cancelled=lambda: True), StepRequest(failing, 2),
                                 StepRequest(good_b, 1)])
    (a, bad, stopped, broken, b) = results
    for got, want in ((a, expected[0]), (b, expected[1])):
        assert not isinstance(got, BaseException), got
        np.testing.assert_array_equal(got.low_res_masks, want.low_res_masks)
        np.testing.assert_array_equal(got.object_scores, want.object_scores)
    assert isinstance(bad, ModelRefusal) and bad.code == INVALID_ARGUMENT and "frame_index 9" in bad.message
    assert isinstance(stopped, ModelRefusal) and stopped.code == CANCELLED
    assert isinstance(broken, RuntimeError) and "injected" in str(broken)
    for session in (out_of_range, cancelled, failing):
        assert _snapshot(session) == before[id(session)]
        assert session.recount() == (session.frame_bytes, session.memory_bytes)
    # the shared memory attention call failed once, then ran for each step on its own
    attention = [b for n, b in counting.calls if n == "sam2_video_memory_attention"]
    assert attention[0] == 1 + 2 + 3 and sorted(attention[1:]) == [1, 2, 3]
    # step() of the failing session alone raises its error
    with pytest.raises(RuntimeError, match="injected"):
        tracker.step(failing, 2)
