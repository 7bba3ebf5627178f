"""Video sessions beyond clicks: mask prompts and text prompts in `AddPrompts`, and video files
(PyAV) in the SDK and `segserve track`. Served end to end on the real embedded Triton (SAM 2 video
tracker + Grounding DINO's `grounding_detect`), against transformers' `Sam2VideoModel` and
`GroundingDinoProcessor` on the same tiny random checkpoints."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from segserve.common.synthetic_video import moving_shapes  # noqa: E402
from tests.grounding_reference import grounding_detector  # noqa: E402
from tests.sam2_video_reference import compare, run_reference  # noqa: E402
from tests.video_tracker_run import run_tracker  # noqa: E402

HW = (96, 128)
CAPTION = "a red disc. a blue square. the ground."


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def artifacts(family_artifacts) -> Path:
    """SAM 2 video and Grounding DINO (tiny, random weights) side by side, from the session's export."""
    return family_artifacts("sam2_video", "grounding_dino")


@pytest.fixture(scope="module")
def video_model(artifacts):
    from transformers import Sam2VideoModel

    return Sam2VideoModel.from_pretrained(artifacts / "checkpoints" / "sam2-video-random-tiny").eval()


@pytest.fixture(scope="module")
def clip():
    return moving_shapes(8, *HW)


@pytest.fixture(scope="module")
def stack(artifacts, tmp_path_factory):
    from segserve.orchestrator.settings import Settings
    from segserve.repository.builder import build_repository
    from segserve.runtime.stack import start_stack

    repository = tmp_path_factory.mktemp("video_text_repository")
    build_repository(artifacts, repository, "embedded", session_ttl_s=120, max_sessions=8,
                     options={"max_video_objects": 8, "video_intra_op_threads": 1})
    with start_stack(repository, tmp_path_factory.mktemp("video_text_triton"), Settings()) as running:
        yield running


@pytest.fixture()
def client(stack):
    from segserve.client import SegservClient

    with SegservClient(stack.address) as c:
        yield c


def disc_mask(centre, radius: float = 13.0) -> np.ndarray:
    yy, xx = np.mgrid[:HW[0], :HW[1]]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < radius ** 2


def mask_script(centres):
    """A mask prompt (object 1) beside clicks (object 2) on frame 0, propagated; then a mask as a
    correction on the already tracked frame 4, propagated from there."""
    c2 = centres[2]
    return [("prompt", 0, {1: disc_mask(centres[1][0]), 2: ([c2[0]], [1])}),
            ("propagate", None, False),
            ("prompt", 4, {2: disc_mask(c2[4], 9.0)}),
            ("propagate", 4, False)]


def served(client, frames, script) -> list[tuple[int, dict[int, np.ndarray]]]:
    """Run a script of prompts (points, a box as corners labelled 2/3, or a mask) and propagations
    through the gRPC API; (frame index, masks) per answer."""
    video = client.video
    info = video.start_session(list(frames))
    results = []
    try:
        for action in script:
            if action[0] == "prompt":
                prompts = {}
                for oid, prompt in action[2].items():
                    if isinstance(prompt, np.ndarray):
                        prompts[oid] = {"mask": prompt}
                    elif list(prompt[1]) == [2, 3]:
                        prompts[oid] = {"box": (*prompt[0][0], *prompt[0][1])}
                    else:
                        prompts[oid] = {"points": [(x, y, label) for (x, y), label in zip(*prompt)]}
                out = video.add_prompts(info.session_id, action[1], prompts)
                results.append((out.frame_index, out.masks))
            else:
                for out in video.propagate(info.session_id, start_frame_index=action[1], reverse=action[2]):
                    results.append((out.frame_index, out.masks))
    finally:
        video.end_session(info.session_id)
    return results


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


# ---- mask prompts ----------------------------------------------------------------------------

def test_mask_resize_matches_the_processor():
    """The processor's mask resize (antialiased bilinear to the model square, >= 0.5) in numpy."""
    import torch.nn.functional as F

    from segserve.common.sam2_transforms import mask_to_model

    rng = np.random.default_rng(0)
    for (h, w), size in (((96, 128), 256), ((300, 200), 256), ((17, 700), 256), ((256, 256), 64)):
        mask = rng.random((h, w)) > 0.5
        expected = F.interpolate(torch.from_numpy(mask).float()[None, None], size=(size, size), mode="bilinear",
                                 align_corners=False, antialias=True)[0, 0].numpy() >= 0.5
        assert np.array_equal(mask_to_model(mask, size) > 0, expected), (h, w, size)


def test_mask_prompt_tracker_matches_transformers(artifacts, video_model, clip):
    from segserve.export.manifest import Manifest
    from segserve.triton_models.sam2_video_core import OrtGraphs, VideoTracker

    frames, centres = clip
    # (the mask-prompt graph itself is measured against PyTorch in test_sam2_video.py)
    record = Manifest(artifacts).records["sam2_video_mask_prompt"]
    tracker = VideoTracker(OrtGraphs.from_artifacts(artifacts, threads=1), record.model_config)
    reference = run_reference(video_model, frames, mask_script(centres))
    ours = run_tracker(tracker, frames, mask_script(centres))
    worst, count = compare(ours, reference)
    assert count == 2 * (1 + 8 + 1 + 4) and worst >= 0.99, worst
    # the mask really is the output on its frame, and tracking moves away from it
    assert np.array_equal(ours[0][1][1], reference[0][1][1]) and ours[0][1][1].sum() > 100
    assert any(not np.array_equal(m[1], ours[0][1][1]) for _, m in ours[2:9])


def test_mask_prompt_served_matches_transformers(client, video_model, clip):
    frames, centres = clip
    reference = run_reference(video_model, frames, mask_script(centres))
    worst, count = compare(served(client, frames, mask_script(centres)), reference)
    assert count == 28 and worst >= 0.99, f"worst per-frame IoU {worst:.4f}"


def test_mask_prompt_png_and_bad_masks(client, clip):
    from PIL import Image

    from segserve.client import image_bytes
    from segserve.common import rle
    from segserve.video_client import vpb

    frames, centres = clip
    video = client.video
    info = video.start_session(list(frames[:3]))
    sid = info.session_id
    mask = disc_mask(centres[1][0])

    def request(**mask_fields):
        message = vpb.AddPromptsRequest(session_id=sid, frame_index=0)
        obj = message.objects.add(object_id=1)
        for key, value in mask_fields.items():
            if key == "rle":
                obj.mask.rle.size.extend(value["size"])
                obj.mask.rle.counts = value["counts"]
            elif key == "points":
                obj.points.add(x=5, y=5, label=1)
            else:
                setattr(obj.mask, key, value)
        return message

    good = rle.encode(mask)
    bad = [
        (request(rle={"size": [HW[0], HW[1] + 1], "counts": rle.encode(np.zeros((HW[0], HW[1] + 1)))["counts"]}),
         "objects[0].mask.rle.size"),
        (request(rle={"size": list(HW), "counts": ""}), "objects[0].mask.rle.counts"),
        (request(rle={"size": list(HW), "counts": good["counts"] + "5"}), "objects[0].mask.rle.counts"),
        (request(rle={"size": list(HW), "counts": "\x7f\x7f"}), "objects[0].mask.rle.counts"),
        (request(png=b"\x89PNG not really"), "objects[0].mask.png"),
        (request(png=image_bytes(np.zeros((HW[0] + 2, HW[1], 3), np.uint8))), "objects[0].mask.png"),
        (request(rle=good, points=True), "objects[0].mask"),
        (request(score=1.0), "objects[0].mask"),  # neither rle nor png
    ]
    for message, field in bad:
        code, details = _code(lambda m=message: video.stub.AddPrompts(m))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:"), (field, details)
    assert list(next(s for s in video.list_sessions() if s.session_id == sid).object_ids) == []
    # PNG (RGB or grey, nonzero = object) and RLE give the same masks
    grey = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 200).save(grey, format="PNG")
    by_rle = video.stub.AddPrompts(request(rle=good))
    by_png = video.stub.AddPrompts(request(png=grey.getvalue()))
    by_rgb = video.stub.AddPrompts(request(png=image_bytes(np.repeat(mask[..., None], 3, axis=2).astype(np.uint8) * 255)))
    assert by_rle.objects[0].mask.rle.counts == by_png.objects[0].mask.rle.counts == by_rgb.objects[0].mask.rle.counts
    assert by_rle.objects[0].object_score == pytest.approx(10.0)
    # an empty mask marks the object absent; tracking still runs
    absent = video.add_prompts(sid, 1, {2: {"mask": np.zeros(HW, bool)}})
    assert not absent.masks[2].any() and absent.object_scores[2] == pytest.approx(-10.0)
    assert len(list(video.propagate(sid))) == 3
    video.end_session(sid)


# ---- text prompts ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grounding_reference(artifacts, clip):
    """Grounding DINO in PyTorch on frame 2, post-processed by GroundingDinoProcessor."""
    frame = clip[0][2]
    detect, scores = grounding_detector(artifacts, frame, CAPTION)
    box_threshold = float((scores[3] + scores[4]) / 2)  # four boxes, with a clear cut
    return (box_threshold, *detect(box_threshold, 0.25))


def test_text_prompt_matches_reference(client, video_model, clip, grounding_reference):
    """Text on frame 2: the detections are Detect's for that frame and the reference processor's;
    each becomes an object with its box, and tracking equals Sam2VideoModel prompted with those boxes."""
    frames, centres = clip
    box_threshold, boxes, scores, phrases = grounding_reference
    assert len(boxes) == 4
    options = {"box_threshold": box_threshold, "text_threshold": 0.25, "max_objects": 100, "nms_iou_threshold": 1.0}
    detected = client.detect(frames[2], CAPTION, **options)
    video = client.video
    info = video.start_session(list(frames))
    sid = info.session_id
    first = video.add_prompts(sid, 0, {7: {"points": [(*centres[1][0], 1)]}})
    out = video.add_prompts(sid, 2, text=CAPTION, **options)
    new_ids = [8, 9, 10, 11]  # after the largest id in the session
    assert sorted(out.detections) == new_ids and list(out.masks) == [7, *new_ids]
    got = [out.detections[i] for i in new_ids]
    assert [d["phrase"] for d in got] == phrases == [d.phrase for d in detected]
    np.testing.assert_allclose([d["score"] for d in got], scores, rtol=1e-4)
    np.testing.assert_allclose([d["box"] for d in got], boxes, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose([d["box"] for d in got], [d.box for d in detected], rtol=1e-6, atol=1e-4)
    tracked = [(0, first.masks), (2, out.masks)]
    tracked += [(f.frame_index, f.masks) for f in video.propagate(sid)]
    video.end_session(sid)
    # the reference, prompted with the served boxes (equal to the processor's, checked above)
    objects = {i: ([d["box"][:2], d["box"][2:]], [2, 3]) for i, d in zip(new_ids, got)}
    reference = run_reference(video_model, frames, [("prompt", 0, {7: ([centres[1][0]], [1])}),
                                                    ("prompt", 2, objects), ("propagate", None, False)])
    worst, count = compare(tracked, reference)
    assert count == 1 + 5 + 5 * 8 and worst >= 0.99, f"worst per-frame IoU {worst:.4f}"
    assert np.mean([m.mean() for _, objs in tracked for m in objs.values()]) > 0.01


def test_text_prompt_ids_nothing_found_and_bad_input(client, clip):
    frames, centres = clip
    video = client.video
    sid = video.start_session(list(frames[:4])).session_id
    # nothing detected: no objects, no error, the session unchanged
    nothing = video.add_prompts(sid, 1, text=CAPTION, box_threshold=1.0)
    assert nothing.masks == {} and nothing.frame_index == 1
    assert list(next(s for s in video.list_sessions() if s.session_id == sid).object_ids) == []
    # ids from first_object_id, best detection first
    out = video.add_prompts(sid, 1, text=CAPTION, box_threshold=0.0, first_object_id=100, max_objects=2)
    assert sorted(out.detections) == [100, 101]
    assert out.detections[100]["score"] >= out.detections[101]["score"]
    # text and objects in one request; ids continue after the largest in the request
    both = video.add_prompts(sid, 0, {200: {"points": [(*centres[1][0], 1)]}}, text=CAPTION,
                             box_threshold=0.0, max_objects=1)
    assert list(both.detections) == [201] and set(both.masks) == {100, 101, 200, 201}
    bad = [
        (dict(text=""), "text.text"),
        (dict(text=" . . "), "text.text"),
        (dict(text=CAPTION, box_threshold=1.5), "text.box_threshold"),
        (dict(text=CAPTION, text_threshold=-0.1), "text.text_threshold"),
        (dict(text=CAPTION, nms_iou_threshold=float("nan")), "text.nms_iou_threshold"),
        (dict(text=CAPTION, max_objects=-1), "text.max_objects"),
        (dict(text="cat " * 300), "text.text"),
        (dict(text=CAPTION, box_threshold=0.0, first_object_id=101), "text.first_object_id"),
    ]
    for options, field in bad:
        code, details = _code(lambda o=options: video.add_prompts(sid, 0, **o))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:"), (field, details)
    code, details = _code(lambda: video.add_prompts(sid, 4, text=CAPTION))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("frame_index:")
    # the session still tracks all of them
    assert [sorted(f.masks) for f in video.propagate(sid)][-1] == [100, 101, 200, 201]
    video.end_session(sid)


# ---- video files -----------------------------------------------------------------------------

def test_video_io_roundtrip(tmp_path, clip):
    from segserve.video_io import VideoError, frame_rate, read_frames, write_video

    frames, _ = clip
    codec, count = write_video(tmp_path / "clip.mp4", frames, fps=8)
    assert codec == "libx264" and count == len(frames)
    decoded = list(read_frames(tmp_path / "clip.mp4"))
    assert len(decoded) == len(frames) and decoded[0].shape == frames[0].shape
    assert np.abs(decoded[3].astype(int) - frames[3]).mean() < 8  # lossy, but the same picture
    assert frame_rate(tmp_path / "clip.mp4") == 8
    strided = list(read_frames(tmp_path / "clip.mp4", stride=3, max_frames=2))
    assert len(strided) == 2 and np.array_equal(strided[1], decoded[3])
    assert write_video(tmp_path / "odd.avi", [np.zeros((31, 33, 3), np.uint8)] * 2, codecs=("nope", "mpeg4")) == ("mpeg4", 2)
    with pytest.raises(VideoError):
        list(read_frames(tmp_path / "missing.mp4"))
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoError):
        list(read_frames(tmp_path / "junk.mp4"))


def test_track_video_file_cli(stack, client, tmp_path, clip, capsys):
    """`segserve track clip.mp4 --point ... --text ... --out --overlay-video` equals tracking the
    decoded frames directly, and the overlay video has every frame."""
    from PIL import Image

    from segserve.cli import main
    from segserve.demo_video import track_frames
    from segserve.video_io import read_frames, write_video

    frames, centres = clip
    write_video(tmp_path / "clip.mp4", frames, fps=8)
    decoded = np.stack(list(read_frames(tmp_path / "clip.mp4")))
    x, y = centres[2][1]
    main(["track", str(tmp_path / "clip.mp4"), "--server", stack.address, "--point", f"1,{x},{y}",
          "--text", CAPTION, "--text-frame", "3", "--box-threshold", "0", "--max-objects", "2",
          "--out", str(tmp_path / "masks"), "--overlay-video", str(tmp_path / "overlay.mp4")])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["tracked_frames"] == len(frames) and printed["objects"] == [1, 2, 3]
    assert sorted(printed["detections"]) == ["2", "3"] and printed["overlay_video"]["frames"] == len(frames)
    text = {"text": CAPTION, "frame": 3, "box_threshold": 0.0, "max_objects": 2}
    _, direct, _ = track_frames(client, decoded, {1: {"points": [(x, y, 1)]}}, 1, reverse_too=True, text=text)
    for index, objects in direct.items():
        for obj, mask in objects.items():
            written = np.asarray(Image.open(tmp_path / "masks" / f"frame{index:04d}_object{obj}.png")) > 0
            assert np.array_equal(written, mask), (index, obj)
    overlay = list(read_frames(tmp_path / "overlay.mp4"))
    assert len(overlay) == len(frames) and overlay[0].shape == frames[0].shape
    # a frame folder as VIDEO, with stride and a cap
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:03d}.png")
    main(["track", str(folder), "--stride", "2", "--max-frames", "3", "--server", stack.address,
          "--point", "0,40,40"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["frames"] == 3 and printed["tracked_frames"] == 3
