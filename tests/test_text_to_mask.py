"""Text-to-mask through the real embedded Triton: the `text_to_mask` and `grounding_detect` ensembles
behind `MaskFromPrompt(text=...)` and `Detect`, against the PyTorch reference on the same tiny
random checkpoints (GroundingDinoProcessor's post-processing, Sam2Model with the detected boxes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests import sam2_reference  # noqa: E402
from tests.grounding_reference import grounding_detector  # noqa: E402

CAPTION = "a person. red ball. the sky."
IOU_MIN = 0.99


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_artifacts(family_artifacts):
    """SAM 2 and a tiny random Grounding DINO from the session's export, in a folder of their own (the
    other tests' repository stays SAM 2 only)."""
    return family_artifacts("sam2", "grounding_dino")


@pytest.fixture(scope="module")
def text_repository(text_artifacts, tmp_path_factory):
    from segserve.repository.builder import build_repository

    out = tmp_path_factory.mktemp("text_repository")
    build_repository(text_artifacts, out, "embedded")
    return out


@pytest.fixture(scope="module")
def text_stack(text_repository, tmp_path_factory):
    from segserve.orchestrator.settings import Settings
    from segserve.runtime.stack import start_stack

    with start_stack(text_repository, tmp_path_factory.mktemp("triton_text"), Settings()) as running:
        yield running


@pytest.fixture()
def tclient(text_stack):
    from segserve.client import SegservClient

    with SegservClient(text_stack.address) as c:
        yield c


@pytest.fixture(scope="module")
def reference(text_artifacts, photo):
    """Grounding DINO in PyTorch on the processor's own letterbox of the photo, at the export size."""
    return grounding_detector(text_artifacts, photo, CAPTION)


def _thresholds(scores: np.ndarray, count: int) -> float:
    """A box threshold halfway between the count-th and the next score (a clear cut, no near-tie)."""
    return float((scores[count - 1] + scores[count]) / 2)


def _mask(obj) -> np.ndarray:
    return obj.best.mask


def test_text_to_mask_matches_pytorch(tclient, reference, photo, sam2_torch_model):
    detect, scores = reference
    box_threshold, text_threshold = _thresholds(scores, 6), 0.5
    boxes, ref_scores, phrases = detect(box_threshold, text_threshold)
    assert 3 <= len(boxes) < 900 and any(phrases)  # thresholds that really select
    result = tclient.mask_from_text(photo, CAPTION, box_threshold=box_threshold, text_threshold=text_threshold,
                                    max_objects=100, nms_iou_threshold=1.0)
    assert (result.height, result.width) == photo.shape[:2] and result.model.random_weights
    assert [o.phrase for o in result.objects] == phrases
    np.testing.assert_allclose([o.detection_score for o in result.objects], ref_scores, rtol=1e-4)
    np.testing.assert_allclose([o.box for o in result.objects], boxes, rtol=1e-3, atol=1e-2)
    _, _, ref_masks = sam2_reference.predict(sam2_torch_model, photo, boxes=boxes, multimask=False)
    for obj, ref in zip(result.objects, ref_masks[:, 0]):
        assert len(obj.masks) == 1 and ref.any() and sam2_reference.iou(_mask(obj), ref) >= IOU_MIN


def test_concurrent_images_each_get_their_own_answer(text_stack, text_artifacts, reference, photo, sam2_torch_model):
    """Two different images at once with one caption (Grounding DINO's dynamic batcher may join them):
    each answer is the reference's for its own image, so results crossed over would fail."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from segserve.client import SegservClient

    flipped = np.ascontiguousarray(photo[:, ::-1])
    cases = []
    for image, (detect, scores) in ((photo, reference), (flipped, grounding_detector(text_artifacts, flipped, CAPTION))):
        threshold = _thresholds(scores, 4)
        boxes, ref_scores, phrases = detect(threshold, 0.5)
        assert len(boxes) == 4
        masks = sam2_reference.predict(sam2_torch_model, image, boxes=boxes)[2][:, 0]
        cases.append((image, threshold, boxes, ref_scores, phrases, masks))
    # the two images' boxes differ, so a swap would show
    assert np.abs(cases[0][2] - cases[1][2]).max() > 10
    barrier = threading.Barrier(len(cases))

    def call(case):
        with SegservClient(text_stack.address) as c:
            barrier.wait()
            return c.mask_from_text(case[0], CAPTION, box_threshold=case[1], text_threshold=0.5, max_objects=100,
                                    nms_iou_threshold=1.0)

    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(call, cases))
    for result, (_, _, boxes, ref_scores, phrases, masks) in zip(results, cases):
        assert [o.phrase for o in result.objects] == phrases
        np.testing.assert_allclose([o.detection_score for o in result.objects], ref_scores, rtol=1e-4)
        np.testing.assert_allclose([o.box for o in result.objects], boxes, rtol=1e-3, atol=1e-2)
        for obj, ref in zip(result.objects, masks):
            assert len(obj.masks) == 1 and sam2_reference.iou(_mask(obj), ref) >= IOU_MIN


def test_detect_with_nms_and_top_k(tclient, reference, photo):
    from segserve.common.grounding import class_aware_nms

    detect, scores = reference
    box_threshold = _thresholds(scores, 12)
    boxes, ref_scores, phrases = detect(box_threshold, 0.25)
    keep = class_aware_nms(boxes, ref_scores, phrases, 0.5)[:5]
    assert 0 < len(keep) < len(boxes)  # NMS or top-k really removed something
    got = tclient.detect(photo, CAPTION, box_threshold=box_threshold, text_threshold=0.25, max_objects=5,
                         nms_iou_threshold=0.5)
    assert [d.phrase for d in got] == [phrases[i] for i in keep]
    np.testing.assert_allclose([d.box for d in got], boxes[keep], rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose([d.score for d in got], ref_scores[keep], rtol=1e-4)
    # the same request through text_to_mask gives the same boxes, each with a mask
    objects = tclient.mask_from_text(photo, CAPTION, box_threshold=box_threshold, text_threshold=0.25,
                                     max_objects=5, nms_iou_threshold=0.5).objects
    assert [o.phrase for o in objects] == [d.phrase for d in got] and all(o.best.area > 0 for o in objects)


def test_nothing_detected_is_an_empty_result(tclient, photo):
    # box_threshold 1: a score must exceed 1, which a sigmoid never does
    result = tclient.mask_from_text(photo, CAPTION, box_threshold=1.0)
    assert result.objects == [] and (result.height, result.width) == photo.shape[:2]
    assert tclient.detect(photo, CAPTION, box_threshold=1.0) == []


def _box_iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_defaults_and_max_objects(tclient, reference, photo, sam2_torch_model):
    """No thresholds given: the server's defaults (box 0.35, text 0.25, NMS IoU 0.5), cut to max_objects=3.
    Expected: the processor's detections at those thresholds, best three."""
    detect, _ = reference
    boxes, scores, phrases = detect(0.35, 0.25)
    assert len(boxes) > 3  # more than max_objects: the cut is what is tested
    # No two of the best three share a phrase and overlap beyond 0.5, so NMS keeps all three and they
    # are the expected answer without running any NMS here.
    assert all(phrases[i] != phrases[j] or _box_iou(boxes[i], boxes[j]) <= 0.5 for i in range(3) for j in range(i))
    result = tclient.mask_from_text(photo, CAPTION, max_objects=3)
    assert [o.phrase for o in result.objects] == phrases[:3]
    np.testing.assert_allclose([o.detection_score for o in result.objects], scores[:3], rtol=1e-4)
    np.testing.assert_allclose([o.box for o in result.objects], boxes[:3], rtol=1e-3, atol=1e-2)
    _, _, ref_masks = sam2_reference.predict(sam2_torch_model, photo, boxes=boxes[:3], multimask=False)
    for obj, ref in zip(result.objects, ref_masks[:, 0]):
        assert sam2_reference.iou(_mask(obj), ref) >= IOU_MIN


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


@pytest.mark.parametrize("text, field, words", [
    ("", "text", "empty"),
    ("  \t\n ", "text", "whitespace"),
    (" . . ", "text", "no words"),
    ("cat " * 300, "text", "256"),
    ("x" * 9000, "text", "characters"),
])
def test_bad_text(tclient, photo, text, field, words):
    for call in (lambda: tclient.mask_from_text(photo, text), lambda: tclient.detect(photo, text)):
        code, details = _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:") and words in details


@pytest.mark.parametrize("options, field", [
    ({"box_threshold": -0.1}, "box_threshold"),
    ({"box_threshold": 1.5}, "box_threshold"),
    ({"text_threshold": float("nan")}, "text_threshold"),
    ({"nms_iou_threshold": 2.0}, "nms_iou_threshold"),
    ({"max_objects": -1}, "max_objects"),
])
def test_bad_options(tclient, photo, options, field):
    code, details = _code(lambda: tclient.mask_from_text(photo, CAPTION, **options))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:")
    code, _ = _code(lambda: tclient.detect(photo, CAPTION, **options))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_too_many_objects_and_combinations(tclient, photo):
    from segserve.api import pb
    from segserve.client import image_bytes

    code, details = _code(lambda: tclient.mask_from_text(photo, CAPTION, max_objects=101))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith("max_objects:")
    data = image_bytes(photo)
    for extra, field in (({"points": [pb.Point(x=5, y=5, label=1)]}, "points"),
                         ({"boxes": [pb.Box(x0=1, y0=1, x1=9, y1=9)]}, "boxes"),
                         ({"multimask_output": True}, "multimask_output"),
                         ({"return_low_res_logits": True}, "return_low_res_logits")):
        request = pb.MaskFromPromptRequest(image=data, text=CAPTION, **extra)
        code, details = _code(lambda r=request: tclient.stub.MaskFromPrompt(r))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:")
    image_id = tclient.open_image(photo).image_id
    code, details = _code(lambda: tclient.stub.MaskFromPrompt(pb.MaskFromPromptRequest(image_id=image_id, text="x")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("image_id:") and "image bytes" in details
    tclient.close_image(image_id)
    code, details = _code(lambda: tclient.detect(b"not an image", CAPTION))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("image")


def test_non_utf8_text_is_refused_naming_the_field(text_stack):
    """`text` is a proto3 string: a message carrying bytes that are not UTF-8 cannot be parsed; the
    request deserializer marks it and the RPC answers INVALID_ARGUMENT naming the field (the
    server keeps serving)."""
    from segserve.api import pb

    body = pb.DetectRequest(image=b"\x89PNG").SerializeToString() + b"\x12\x02\xff\xfe"  # field 2 (text)
    with grpc.insecure_channel(text_stack.address) as channel:
        call = channel.unary_unary("/segserve.v1.Segmentation/Detect", request_serializer=None,
                                   response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            call(body, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "text: must be valid UTF-8"
    from segserve.client import SegservClient

    with SegservClient(text_stack.address) as client:  # still serving
        assert client.detect(np.zeros((20, 30, 3), np.uint8), "red ball", box_threshold=1.0) == []


def test_cli_and_demo(text_stack, tclient, photo, tmp_path):
    from PIL import Image

    from segserve import demo_text

    image_path = tmp_path / "photo.png"
    Image.fromarray(photo).save(image_path)
    overlay_path = tmp_path / "overlay.png"
    out = subprocess.run([sys.executable, "-m", "segserve.cli", "segment", str(image_path), "--text", "red ball.",
                          "--max-objects", "4", "--overlay", str(overlay_path), "--server", text_stack.address],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0 < len(summary["objects"]) <= 4 and all("red" in o["phrase"] or "ball" in o["phrase"]
                                                     for o in summary["objects"])
    assert Image.open(overlay_path).size == (photo.shape[1], photo.shape[0])
    result = demo_text.run(tclient, photo, tmp_path / "demo")
    assert result["random_weights"] and result["objects"] and (tmp_path / "demo" / "text_overlay.png").is_file()
    assert [d["phrase"] for d in result["detections"]] == [o["phrase"] for o in result["objects"]]


def test_repository_description(text_repository, text_artifacts, tmp_path):
    from segserve.repository.builder import build_repository, validate_repository
    from segserve.repository.description import grounding_models

    configs = validate_repository(text_repository)
    steps = [s.model_name for s in configs["text_to_mask"].ensemble_scheduling.step]
    assert steps == ["grounding_preprocess", "grounding_tokenize", "grounding_dino", "grounding_select",
                     "sam2_image_encoder", "sam2_prompt_decoder", "text_mask_postprocess"]
    assert (text_repository / "grounding_tokenize" / "1" / "grounding_dino_tokenizer" / "tokenizer.json").is_file()
    # the fleet target: graphs on Triton's onnxruntime backend, the same ensembles, parsed back strictly
    fleet = tmp_path / "fleet"
    assert "text_to_mask" in build_repository(text_artifacts, fleet, "fleet")
    assert validate_repository(fleet)["grounding_dino"].platform == "onnxruntime_onnx"
    assert (fleet / "grounding_select" / "1" / "grounding_dino_tokenizer" / "tokenizer.json").is_file()
    # Grounding DINO without SAM 2: boxes only, no text_to_mask
    names = [s.name for s in grounding_models({"image_size": 256}, {"artifacts": {"grounding_dino": {}}})]
    assert "grounding_detect" in names and "text_to_mask" not in names
