"""TensorRT optimization profiles cover every shape the fleet sends each graph.

The shapes are produced by the code that sends them, run with recorded real-size signatures
(model_repository/default_graphs: hiera-tiny at 1024², Grounding DINO at 800² with 256 tokens,
Mask2Former at 512²): the orchestrator's prompt building and automatic-mask batches for the image
decoder, text-to-mask's detection prompts, and the video tracker itself over fake graphs that
record every call. Shapes past the limits are refused before any graph sees them, or (memory
attention past `Limits.prompted_frames`) fall outside the profiles as documented.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from segserve.common import sam2_transforms
from segserve.common.status import RESOURCE_EXHAUSTED, ModelRefusal
from segserve.common.text_to_mask import detection_prompts
from segserve.engines.profiles import PROMPTED_FRAMES, Limits, covers, envelope, profiles_for
from segserve.export.manifest import Manifest
from segserve.orchestrator import automask, validation
from segserve.orchestrator.errors import ServiceError
from segserve.orchestrator.video_input import MAX_POINTS_PER_OBJECT, object_prompt
from segserve.triton_models.sam2_video_core import GRAPH_NAMES, VideoTracker

REAL = Path(__file__).parents[1] / "model_repository" / "default_graphs"


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest(REAL)


@pytest.fixture(scope="module")
def limits(manifest) -> Limits:
    return Limits().resolved(manifest)


def _fixed(manifest: Manifest, graph: str, **dynamic: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """A call's input shapes: `dynamic` ones given, the rest as recorded (all fixed there)."""
    shapes = {}
    for name, info in manifest.records[graph].inputs.items():
        shapes[name] = dynamic[name] if name in dynamic else tuple(info["shape"])
        assert all(isinstance(d, int) for d in shapes[name]), (graph, name)
    return shapes


def _inside(manifest, graph, shapes, limits=None) -> bool:
    return any(covers(p, shapes) for p in profiles_for(manifest, graph, limits))


def test_every_graph_has_sane_profiles_that_keep_recorded_dims(manifest):
    assert set(manifest.records) == {"sam2_image_encoder", "sam2_prompt_decoder", "grounding_dino", "mask2former",
                                     *GRAPH_NAMES}
    for graph, record in manifest.records.items():
        profiles = profiles_for(manifest, graph)
        assert profiles, graph
        for profile in profiles:
            assert set(profile) == set(record.inputs), graph
            for name, (low, opt, high) in profile.items():
                recorded = record.inputs[name]["shape"]
                assert len(low) == len(opt) == len(high) == len(recorded), (graph, name)
                for lo, op, hi, dim in zip(low, opt, high, recorded):
                    assert 0 <= lo <= op <= hi, (graph, name, profile[name])
                    if isinstance(dim, int):
                        assert lo == op == hi == dim, (graph, name)
        # the onnxruntime accelerator's single profile holds all of them
        merged = envelope(profiles)
        for profile in profiles:
            for name, (low, _, high) in profile.items():
                assert all(a <= b for a, b in zip(merged[name][0], low))
                assert all(a >= b for a, b in zip(merged[name][2], high))


def test_limits_are_read_from_the_code(manifest, limits):
    from segserve.orchestrator.settings import Settings
    from segserve.orchestrator.text import MAX_OBJECTS

    assert (limits.image_points, limits.image_boxes) == (Settings().max_points, Settings().max_boxes)
    assert (limits.automask_batch, limits.text_objects, limits.video_points) == (256, MAX_OBJECTS, MAX_POINTS_PER_OBJECT)
    assert (limits.encoder_batch, limits.grounding_batch, limits.mask2former_batch) == (4, 4, 8)
    assert (limits.video_objects, limits.num_maskmem, limits.max_object_pointers, limits.max_cond_frame_num) == (16, 7, 16, -1)
    # build options reach the limits as they reach the repository description
    assert Limits(options={"max_video_objects": 4, "batching": False}).resolved(manifest).video_objects == 4
    assert Limits(options={"batching": False}).resolved(manifest).mask2former_batch == 1


def test_opt_is_the_common_case(manifest):
    decoder = profiles_for(manifest, "sam2_prompt_decoder")[0]
    assert decoder["point_coords"][1] == (1, 2, 2)  # one click + pad
    assert profiles_for(manifest, "sam2_image_encoder")[0]["pixel_values"][1] == (1, 3, 1024, 1024)
    attention = profiles_for(manifest, "sam2_video_memory_attention")[0]
    # one object per call at opt ([objects, frames, ...]), the frame's features once
    assert attention["maskmem_features"][1][:2] == (1, 7) and attention["object_pointers"][1][:2] == (1, 16)
    assert attention["vision_feat"][1][0] == 1


# ----------------------------------------------------------------------------- image graphs


def test_batched_graphs_cover_every_batch_the_batchers_form(manifest, limits):
    for graph, top in (("sam2_image_encoder", limits.encoder_batch), ("mask2former", limits.mask2former_batch)):
        recorded = manifest.records[graph].inputs["pixel_values"]["shape"][1:]
        for batch in range(1, top + 1):
            assert _inside(manifest, graph, {"pixel_values": (batch, *recorded)}), (graph, batch)
        assert not _inside(manifest, graph, {"pixel_values": (top + 1, *recorded)})
    for batch in range(1, limits.grounding_batch + 1):
        for tokens in range(1, limits.text_tokens + 1):
            text = {n: (batch, tokens) for n in ("input_ids", "attention_mask", "token_type_ids")}
            shapes = _fixed(manifest, "grounding_dino", pixel_values=(batch, 3, 800, 800),
                            pixel_mask=(batch, 800, 800), **text)
            assert _inside(manifest, "grounding_dino", shapes), (batch, tokens)


def test_decoder_covers_every_interactive_prompt(manifest, limits):
    hw = (480, 640)
    seen = set()
    for clicks in range(0, limits.image_points + 1):
        for boxes in range(0, limits.image_boxes + 1):
            for mask in (False, True):
                if not (clicks or boxes or mask):
                    continue
                xy = np.full((clicks, 2), 5, np.float32) if clicks else None
                labels = np.ones(clicks, np.int32) if clicks else None
                box = np.tile(np.array([[1, 2, 30, 40]], np.float32), (boxes, 1)) if boxes else None
                coords, point_labels = sam2_transforms.build_prompts(xy, labels, box, hw)
                seen.add((coords.shape, point_labels.shape))
    for coords, point_labels in seen:
        shapes = _decoder_shapes(manifest, coords, point_labels)
        assert _inside(manifest, "sam2_prompt_decoder", shapes), coords
    # The image session's batch: the requests of up to `image_batch` sessions in one call, one image
    # per prompt, padded to the longest prompt (up to every box of clicks + 2 corners + pad each).
    assert limits.image_batch == 8
    for sessions in range(2, limits.image_batch + 1):
        for prompts in (sessions, sessions * limits.image_boxes):
            for points in (2, limits.image_points + 3):
                shapes = _decoder_shapes(manifest, (prompts, points, 2), (prompts, points), images=prompts)
                assert _inside(manifest, "sam2_prompt_decoder", shapes), (sessions, prompts, points)


def _decoder_shapes(manifest, coords, labels, images: int = 1) -> dict[str, tuple[int, ...]]:
    """The decoder's input shapes for prompts `coords` / `labels` on `images` images (1: every prompt
    on one image; else one image per prompt)."""
    record = manifest.records["sam2_prompt_decoder"].inputs
    per_image = {n: (images, *info["shape"][1:]) for n, info in record.items() if info["shape"][0] == "images"}
    return _fixed(manifest, "sam2_prompt_decoder", point_coords=tuple(coords), point_labels=tuple(labels), **per_image)


def test_decoder_covers_automask_batches_and_text_to_mask(manifest, limits):
    class Session:  # the orchestrator's image session: records what reaches the session model
        def infer(self, inputs, outputs, scope):
            coords = next(i for i in inputs if i.name() == "POINT_COORDS")
            labels = next(i for i in inputs if i.name() == "POINT_LABELS")
            sent.append((tuple(coords.shape()[1:]), tuple(labels.shape()[1:])))  # [1, P, M, 2]: one request
            p = coords.shape()[1]
            return SimpleNamespace(as_numpy=lambda n: np.zeros((1, p, 3) if n == "SCORES" else (1, p, 3, 1, 1)))

    sent: list = []
    for batch in range(1, limits.automask_batch + 1):
        automask.decode_points(Session(), np.full((batch, 2), 3.0, np.float32), scope=None)
    # text-to-mask: one box prompt per detection, at least the dummy prompt, up to max_objects
    for count in range(0, limits.text_objects + 1):
        coords, labels = detection_prompts(np.tile(np.array([[1, 2, 30, 40]], np.float32), (count, 1)), (480, 640), 1024)
        sent.append((coords.shape, labels.shape))
    for coords, labels in sent:  # a request of many prompts is a decoder call of its own, on one image
        shapes = _decoder_shapes(manifest, coords, labels)
        assert _inside(manifest, "sam2_prompt_decoder", shapes), coords


def test_image_prompts_past_the_limits_are_refused_before_triton(limits):
    def request(points=0, boxes=0):
        return SimpleNamespace(points=[SimpleNamespace(x=1.0, y=1.0, label=1)] * points,
                               boxes=[SimpleNamespace(x0=0.0, y0=0.0, x1=1.0, y1=1.0)] * boxes)

    validation.points(request(points=limits.image_points), 10, 10, limits.image_points)
    with pytest.raises(ServiceError) as caught:
        validation.points(request(points=limits.image_points + 1), 10, 10, limits.image_points)
    assert caught.value.code.name == "RESOURCE_EXHAUSTED"
    validation.boxes(request(boxes=limits.image_boxes), 10, 10, limits.image_boxes)
    with pytest.raises(ServiceError):
        validation.boxes(request(boxes=limits.image_boxes + 1), 10, 10, limits.image_boxes)
    high = next(row for row in automask._LIMITS if row[0] == "points_per_batch")[4]
    assert high == limits.automask_batch  # GenerateMasks refuses points_per_batch above it


# ----------------------------------------------------------------------------- video graphs


class RecordingGraphs:
    """The tracker's graphs: zeros of the recorded real-size outputs; every call's shapes kept."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.calls: list[tuple[str, dict[str, tuple[int, ...]]]] = []

    def run(self, name, feeds):
        shapes = {k: tuple(np.shape(v)) for k, v in feeds.items()}
        self.calls.append((name, shapes))
        record = self.manifest.records[name]
        bound = {}
        for input_name, info in record.inputs.items():
            for dim, size in zip(info["shape"], shapes[input_name]):
                if isinstance(dim, str):
                    bound[dim] = size
        return {k: np.zeros([bound[d] if isinstance(d, str) else d for d in info["shape"]], np.float32)
                for k, info in record.outputs.items()}


def _tracker(manifest, limits):
    from segserve.triton_models.sam2_video_core import VideoSession

    config = manifest.records["sam2_video_decoder"].model_config
    graphs = RecordingGraphs(manifest)
    tracker = VideoTracker(graphs, config, max_objects=limits.video_objects, max_frames=limits.video_frames)
    session = VideoSession()
    return tracker, session, graphs


def _click(n=1, box=False):
    coords = [(10.0, 10.0)] * n
    labels = [1] * n
    if box:
        coords, labels = [(1.0, 1.0), (50.0, 50.0)] + coords, [2, 3] + labels
    return np.array(coords, np.float32), np.array(labels, np.int32)


def _assert_covered(manifest, graphs, limits=None):
    assert graphs.calls
    for name, shapes in graphs.calls:
        assert _inside(manifest, name, shapes, limits), (name, shapes)


def test_tracker_calls_fit_the_profiles_at_their_limits(manifest, limits):
    # as many objects as the tracker takes, each with the most points a prompt may carry (box + clicks)
    tracker, session, graphs = _tracker(manifest, limits)
    tracker.add_frames(session, [np.zeros((16, 16, 3), np.uint8)] * 2)
    ids = list(range(limits.video_objects))
    tracker.add_prompts(session, 0, ids, [_click(limits.video_points, box=True)] * len(ids))
    tracker.step(session, 1)
    calls = list(graphs.calls)
    # one object prompted on `prompted_frames` frames (one of them a mask), tracked past all of them both ways
    tracker, session, graphs = _tracker(manifest, limits)
    frames = 2 * PROMPTED_FRAMES + 20  # 15 tracked frames after the last prompted one
    tracker.add_frames(session, [np.zeros((16, 16, 3), np.uint8)] * frames)
    tracker.add_prompts(session, 0, [0, 1], [_click(), _click()])
    for frame in range(2, 2 * PROMPTED_FRAMES - 1, 2):
        tracker.add_prompts(session, frame, [0], [_click()])
    tracker.add_prompts(session, 5, [1], [np.ones((16, 16), np.uint8)])  # a mask prompt
    for frame in range(frames):
        tracker.step(session, frame)
    for frame in range(frames - 1, -1, -1):
        tracker.step(session, frame, reverse=True)
    graphs.calls[:0] = calls
    assert {n for n, _ in graphs.calls} == set(GRAPH_NAMES)
    attention = [s for n, s in graphs.calls if n == "sam2_video_memory_attention"]
    assert max(s["maskmem_features"][1] for s in attention) == limits.memory_frames()
    assert max(s["object_pointers"][1] for s in attention) == limits.pointers()
    # every object of a frame in one call (all prompted alike: one shape group)
    assert max(s["maskmem_features"][0] for s in attention) == limits.video_objects
    assert max(s["pix_feat"][0] for n, s in graphs.calls if n == "sam2_video_decoder") == limits.video_objects
    assert max(s["vision_feat"][0] for n, s in graphs.calls if n == "sam2_video_memory_encoder") == limits.video_objects
    assert max(s["point_coords"][1] for n, s in graphs.calls if n == "sam2_video_decoder") == limits.video_points + 3
    _assert_covered(manifest, graphs)


def test_tracker_sends_no_object_pointer_for_an_object_prompted_later(manifest, limits):
    tracker, session, graphs = _tracker(manifest, limits)
    tracker.add_frames(session, [np.zeros((16, 16, 3), np.uint8)] * 6)
    tracker.add_prompts(session, 0, [1], [_click()])
    tracker.add_prompts(session, 4, [2], [_click()])  # object 2 exists only from frame 4 on
    graphs.calls.clear()
    tracker.step(session, 1)
    pointers = [s["object_pointers"][1] for n, s in graphs.calls if n == "sam2_video_memory_attention"]
    assert 0 in pointers
    _assert_covered(manifest, graphs)


def test_video_shapes_past_the_limits(manifest, limits):
    # more objects than the tracker takes: refused before any graph runs
    tracker, session, graphs = _tracker(manifest, limits)
    tracker.add_frames(session, [np.zeros((16, 16, 3), np.uint8)] * 2)
    ids = list(range(limits.video_objects + 1))
    with pytest.raises(ModelRefusal) as caught:
        tracker.add_prompts(session, 0, ids, [_click()] * len(ids))
    assert caught.value.code == RESOURCE_EXHAUSTED and not graphs.calls
    # more points per object: refused by the orchestrator
    many = SimpleNamespace(HasField=lambda f: False, points=[SimpleNamespace(x=1.0, y=1.0, label=1)] * (MAX_POINTS_PER_OBJECT + 1))
    with pytest.raises(ServiceError):
        object_prompt(many, 0, 16, 16, 1024)
    # prompted on more frames than the profiles cover: memory attention (only) sees a shape outside them
    tracker, session, graphs = _tracker(manifest, limits)
    tracker.add_frames(session, [np.zeros((16, 16, 3), np.uint8)] * (PROMPTED_FRAMES + 10))
    for frame in range(PROMPTED_FRAMES + 1):
        tracker.add_prompts(session, frame, [0], [_click()])
    graphs.calls.clear()
    for frame in range(PROMPTED_FRAMES + 1, PROMPTED_FRAMES + 10):
        tracker.step(session, frame)
    outside = {n for n, s in graphs.calls if not _inside(manifest, n, s)}
    assert outside == {"sam2_video_memory_attention"}
    # a deployment that expects more raises the bound, and the profiles follow
    wider = Limits(prompted_frames=PROMPTED_FRAMES + 1)
    _assert_covered(manifest, graphs, wider)
