"""Mask2Former served: the `mask2former_segment` ensemble in the real embedded Triton behind the
`Segment` RPC, compared with transformers (PyTorch `Mask2FormerForUniversalSegmentation` on
`Mask2FormerImageProcessorPil` output, then the processor's post_process_*), on the same tiny
random-weight checkpoint. Also: Triton's dynamic batcher really batches, bad input, the repository
description (ensemble rendering and validation), CLI and demo.

The stack here serves SAM 2 and Mask2Former from one artifacts folder (a copy of the session's SAM 2
artifacts plus a Mask2Former export)."""
from __future__ import annotations

import io
import json
import shutil
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc

from segserve.api import pb, pb_grpc
from segserve.client import SegservClient, image_bytes
from segserve.common import segments as seg

pytestmark = pytest.mark.usefixtures("one_thread")
INVALID = grpc.StatusCode.INVALID_ARGUMENT
SCENE_SIZES = [(300, 400), (200, 640), (90, 100)]


def _scene(seed: int, height: int, width: int) -> np.ndarray:
    """Synthetic photo: a colour gradient with a few filled ellipses and rectangles."""
    rng = np.random.default_rng(100 + seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1),
                      np.full_like(xx, int(rng.integers(0, 256)))], -1).astype(np.uint8)
    for _ in range(6):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(height // 10, height // 3 + 1), rng.integers(width // 10, width // 3 + 1)
        if rng.random() < 0.5:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            inside = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        image[inside] = rng.integers(0, 256, 3)
    return image


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with a tiny body."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Two empty masks have no IoU: an error here, never a perfect match."""
    union = np.logical_or(a, b).sum()
    if not union:
        raise ValueError("IoU of two empty masks: nothing was compared")
    return float(np.logical_and(a, b).sum() / union)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def artifacts(family_artifacts):
    return family_artifacts("sam2", "mask2former")


@pytest.fixture(scope="module")
def repository(artifacts, tmp_path_factory):
    from segserve.repository.builder import build_repository

    out = tmp_path_factory.mktemp("m2f_repository")
    build_repository(artifacts, out, "embedded")
    return out


@pytest.fixture(scope="module")
def m2f_stack(repository, tmp_path_factory):
    from segserve.orchestrator.settings import Settings
    from segserve.runtime.stack import start_stack

    settings = Settings(max_image_pixels=4_000_000)
    with start_stack(repository, tmp_path_factory.mktemp("m2f_triton"), settings) as running:
        yield running


@pytest.fixture(scope="module")
def m2f_client(m2f_stack):
    with SegservClient(m2f_stack.address) as c:
        yield c


@pytest.fixture(scope="module")
def reference(artifacts):
    """(image) -> (processor, model outputs, target size), transformers only."""
    from transformers import Mask2FormerImageProcessorPil

    from segserve.export.manifest import Manifest
    from segserve.export.mask2former import load_mask2former

    record = Manifest(artifacts).records["mask2former"]
    size = record.model_config["image_size"]
    model = load_mask2former(artifacts / "checkpoints" / "mask2former-random-tiny")
    processor = Mask2FormerImageProcessorPil(size={"height": size, "width": size})

    def run(image: np.ndarray):
        pixel_values = processor([Image.fromarray(image)], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            outputs = model(pixel_values=pixel_values)
        return processor, outputs, [image.shape[:2]]

    return run


@pytest.fixture(scope="module")
def images(photo):
    return {"photo": photo, **{f"scene{h}x{w}": _scene(i, h, w) for i, (h, w) in enumerate(SCENE_SIZES)}}


# ----------------------------------------------------------------------------- parity with transformers


@pytest.mark.parametrize("name", ["photo", *[f"scene{h}x{w}" for h, w in SCENE_SIZES]])
def test_semantic_matches_transformers(m2f_client, reference, images, name):
    image = images[name]
    result = m2f_client.segment(image, task="semantic")
    processor, outputs, sizes = reference(image)
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)[0].numpy()
    labels = result.label_map()
    assert labels.shape == expected.shape == image.shape[:2] and (result.height, result.width) == image.shape[:2]
    assert (labels == expected).mean() >= 0.999
    assert len(np.unique(expected)) >= 2  # not a one-class map: the comparison means something
    for s in result.segments:
        assert s.id == s.label_id + 1 and s.area == int((result.segment_map == s.id).sum())
    assert (result.segment_map > 0).all()


PANOPTIC_SETTINGS = {
    "defaults": {},
    "loose": dict(threshold=0.3, mask_threshold=0.4, overlap_mask_area_threshold=0.5),
}


@pytest.mark.parametrize("setting", list(PANOPTIC_SETTINGS))
@pytest.mark.parametrize("name", ["photo", *[f"scene{h}x{w}" for h, w in SCENE_SIZES]])
def test_panoptic_matches_transformers(m2f_client, reference, images, name, setting):
    image, kwargs = images[name], PANOPTIC_SETTINGS[setting]
    result = m2f_client.segment(image, task="panoptic", **kwargs)
    processor, outputs, sizes = reference(image)
    expected = processor.post_process_panoptic_segmentation(outputs, target_sizes=sizes, **kwargs)[0]
    ref_map = expected["segmentation"].numpy()
    ref_segments = expected["segments_info"]
    assert len(ref_segments) >= 1  # the random model gives segments here
    assert len(result.segments) == len(ref_segments)
    unmatched = {s.id: s for s in result.segments}
    for info in ref_segments:
        ref_mask = ref_map == info["id"]
        ids, counts = np.unique(result.segment_map[ref_mask], return_counts=True)
        ours = unmatched.pop(int(ids[counts.argmax()]))
        assert ours.label_id == info["label_id"]
        assert ours.score == pytest.approx(info["score"], abs=1e-4)
        assert _iou(result.segment_map == ours.id, ref_mask) >= 0.99
    assert not unmatched
    for s in result.segments:  # each segment's RLE mask is its part of the map
        mask = s.mask
        assert np.array_equal(mask, result.segment_map == s.id) and s.area == int(mask.sum())
        ys, xs = np.nonzero(mask)
        assert s.bbox == pytest.approx([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])


@pytest.mark.parametrize("name", ["photo", "scene300x400"])
def test_panoptic_fusion_matches_transformers(m2f_client, reference, images, name):
    image, fuse = images[name], {1, 5}
    kwargs = dict(threshold=0.3, overlap_mask_area_threshold=0.5)
    result = m2f_client.segment(image, task="panoptic", label_ids_to_fuse=sorted(fuse), **kwargs)
    processor, outputs, sizes = reference(image)
    expected = processor.post_process_panoptic_segmentation(outputs, target_sizes=sizes, label_ids_to_fuse=fuse,
                                                            **kwargs)[0]
    ref_map = expected["segmentation"].numpy()
    # The processor may give two segments the same id after a fused label, so compare per label.
    ref_labels = {info["label_id"] for info in expected["segments_info"]}
    assert ref_labels == {s.label_id for s in result.segments} and ref_labels & fuse
    for label in ref_labels:
        ref_ids = [i["id"] for i in expected["segments_info"] if i["label_id"] == label]
        ours = [s.id for s in result.segments if s.label_id == label]
        assert _iou(np.isin(ref_map, ref_ids), np.isin(result.segment_map, ours)) >= 0.99
        if label in fuse:
            assert len(ours) == 1 and result.segments[ours[0] - 1].was_fused


@pytest.mark.parametrize("threshold", [0.5, 0.3])
@pytest.mark.parametrize("name", ["photo", "scene200x640"])
def test_instance_matches_transformers(m2f_client, reference, images, name, threshold):
    image = images[name]
    result = m2f_client.segment(image, task="instance", threshold=threshold)
    processor, outputs, sizes = reference(image)
    expected = processor.post_process_instance_segmentation(outputs, threshold=threshold, target_sizes=sizes,
                                                            return_binary_maps=True)[0]
    ref_info, ref_masks = expected["segments_info"], expected["segmentation"].numpy().astype(bool)
    assert len(result.segments) == len(ref_info) >= 2
    scores = [s.score for s in result.segments]
    assert scores == sorted(scores, reverse=True)
    unmatched = list(range(len(ref_info)))
    for s in result.segments:
        mask = s.mask
        j = max(unmatched, key=lambda k: _iou(ref_masks[k], mask) - abs(ref_info[k]["score"] - s.score)
                - (ref_info[k]["label_id"] != s.label_id))
        unmatched.remove(j)
        assert ref_info[j]["label_id"] == s.label_id and ref_info[j]["score"] == pytest.approx(s.score, abs=1e-4)
        assert _iou(ref_masks[j], mask) >= 0.99
    # the map shows the best-scored instance where instances overlap
    expected_map = np.zeros(image.shape[:2], np.int32)
    for s in result.segments[::-1]:
        expected_map[s.mask] = s.id
    assert np.array_equal(result.segment_map, expected_map)


def test_label_map_formats_and_model_info(m2f_client, artifacts, images):
    from segserve.export.manifest import Manifest

    image = images["scene300x400"]
    png = m2f_client.segment(image, task="panoptic")
    runs = m2f_client.segment(image, task="panoptic", label_map_format="rle")
    none = m2f_client.segment(image, task="panoptic", label_map_format="none")
    assert np.array_equal(png.segment_map, runs.segment_map) and none.segment_map is None
    assert [s.rle for s in png.segments] == [s.rle for s in runs.segments] == [s.rle for s in none.segments]
    assert [s.label_name for s in png.segments] == [
        ("sky", "ground", "wall", "person", "car", "animal")[s.label_id] for s in png.segments]
    record = Manifest(artifacts).records["mask2former"]
    model = png.model
    assert model.family == "mask2former" and model.random_weights is True
    assert model.checkpoint_sha256 == record.checkpoint_sha256
    assert dict(model.artifact_sha256) == {"mask2former": record.sha256}
    families = {m.family for m in m2f_client.model_info().models}
    assert {"sam2", "mask2former"} <= families


def test_sam2_still_served_beside_mask2former(m2f_client, photo):
    result = m2f_client.mask_from_prompt(image=photo, points=[(120, 150, 1)])
    assert (result.height, result.width) == photo.shape[:2] and result.objects[0].masks[0].mask.any()


# ----------------------------------------------------------------------------- dynamic batching


def _graph_stats(url: str) -> tuple[int, int]:
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics("mask2former", as_json=True)["model_stats"][0]
    finally:
        client.close()
    return int(stats["inference_stats"]["success"].get("count", 0)), int(stats.get("execution_count", 0))


def test_dynamic_batching_batches_concurrent_requests(m2f_stack, reference):
    """Eight different images at once: Triton batches them, and each answer is transformers' answer
    for its own image (so a batch that crossed results over would fail here)."""
    concurrent = 8
    # One size for all, so a crossed-over result would still have the right shape.
    scenes = [_scene(20 + k, 120, 160) for k in range(concurrent)]
    expected = []
    for image in scenes:
        processor, outputs, sizes = reference(image)
        expected.append(processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)[0].numpy())
        assert len(np.unique(expected[-1])) >= 2  # not a one-class map
    # Any two references differ on more pixels than the 0.1% allowed below: a swap cannot pass.
    assert max((a == b).mean() for i, a in enumerate(expected) for b in expected[i + 1:]) < 0.99
    requests_before, executions_before = _graph_stats(m2f_stack.triton.grpc_url)
    barrier = threading.Barrier(concurrent)

    def call(k):
        with SegservClient(m2f_stack.address) as c:
            barrier.wait()
            return c.segment(image_bytes(scenes[k]), task="semantic")

    with ThreadPoolExecutor(concurrent) as pool:
        results = list(pool.map(call, range(concurrent)))
    requests_after, executions_after = _graph_stats(m2f_stack.triton.grpc_url)
    requests, executions = requests_after - requests_before, executions_after - executions_before
    assert requests == concurrent
    assert executions < requests, f"{requests} requests ran in {executions} executions: no batching"
    for k, (result, labels) in enumerate(zip(results, expected)):
        assert (result.label_map() == labels).mean() >= 0.999, k


# ----------------------------------------------------------------------------- bad input


def _expect(code, field, call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    assert info.value.code() == code, info.value.details()
    assert field in info.value.details(), info.value.details()
    return info.value.details()


def test_bad_images(m2f_client):
    _expect(INVALID, "image", m2f_client.segment, b"definitely not an image")
    _expect(INVALID, "image", m2f_client.segment, b"")
    truncated = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(truncated, format="PNG")
    _expect(INVALID, "image", m2f_client.segment, truncated.getvalue()[:60])
    details = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, "image", m2f_client.segment,
                      _png_header_only(100_000, 100_000))
    assert "pixel" in details
    big = io.BytesIO()
    Image.new("L", (2100, 2100)).save(big, format="PNG")  # valid, over this stack's 4 MPix limit
    _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, "image", m2f_client.segment, big.getvalue())
    assert m2f_client.segment(_scene(9, 60, 80)).height == 60  # still serving


@pytest.mark.parametrize("field,value", [
    ("threshold", -0.1), ("threshold", 1.5), ("threshold", float("nan")),
    ("mask_threshold", 2.0), ("mask_threshold", float("inf")),
    ("overlap_mask_area_threshold", -1e-3),
])
def test_invalid_thresholds(m2f_client, images, field, value):
    _expect(INVALID, field, m2f_client.segment, images["scene90x100"], **{field: value})


def test_unknown_task_labels_and_format(m2f_stack, m2f_client, images):
    data = image_bytes(images["scene90x100"])
    with grpc.insecure_channel(m2f_stack.address) as channel:
        stub = pb_grpc.SegmentationStub(channel)
        _expect(INVALID, "task", stub.Segment, pb.SegmentRequest(image=data, task=42))
        _expect(INVALID, "label_map_format", stub.Segment, pb.SegmentRequest(image=data, label_map_format=9))
        # unset task means panoptic
        assert stub.Segment(pb.SegmentRequest(image=data)).task == pb.SEGMENT_TASK_PANOPTIC
    _expect(INVALID, "label_ids_to_fuse[1]", m2f_client.segment, data, label_ids_to_fuse=[1, 6])
    _expect(INVALID, "label_ids_to_fuse[0]", m2f_client.segment, data, label_ids_to_fuse=[-1])
    with pytest.raises(ValueError):
        m2f_client.segment(data, task="depth")


def test_models_refuse_bad_requests_themselves(m2f_stack, images):
    """Called straight at Triton (no orchestrator checks), the ensemble's steps answer with a code
    prefix the orchestrator maps; the server keeps serving."""
    client = grpcclient.InferenceServerClient(m2f_stack.triton.grpc_url)

    def tensor(name, array, dtype):
        t = grpcclient.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    def inputs(task=b"panoptic", threshold=0.5, fuse=-1):
        return [tensor("IMAGE", images["scene90x100"][None], "UINT8"),
                tensor("TASK", np.array([[task]], dtype=object), "BYTES"),
                tensor("THRESHOLD", np.array([[threshold]], np.float32), "FP32"),
                tensor("MASK_THRESHOLD", np.array([[0.5]], np.float32), "FP32"),
                tensor("OVERLAP_MASK_AREA_THRESHOLD", np.array([[0.8]], np.float32), "FP32"),
                tensor("LABEL_IDS_TO_FUSE", np.array([[fuse]], np.int32), "INT32"),
                tensor("LABEL_MAP_FORMAT", np.array([[0]], np.int32), "INT32")]

    from segserve.orchestrator.segment import ensemble_message
    from segserve.orchestrator.triton_pool import map_triton_error
    from tritonclient.utils import InferenceServerException

    try:
        for kwargs, field in ((dict(task=b"depth"), "TASK"), (dict(threshold=3.0), "THRESHOLD"),
                              (dict(fuse=99), "LABEL_IDS_TO_FUSE")):
            with pytest.raises(InferenceServerException) as info:
                client.infer("mask2former_segment", inputs(**kwargs))
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"  # a typed code, not a text prefix
            error = ensemble_message(map_triton_error(info.value, "image"))
            assert error.code == INVALID and field in error.message, info.value.message()
        result = client.infer("mask2former_segment", inputs())
        document = json.loads(result.as_numpy("SEGMENTS")[0, 0])
        assert document["task"] == "panoptic"
    finally:
        client.close()


def test_no_mask2former_means_unimplemented(client, photo, photo_click_matches):
    """The session stack's repository has SAM 2 only."""
    details = _expect(grpc.StatusCode.UNIMPLEMENTED, "Mask2Former", client.segment, photo)
    assert "segserve export" in details
    photo_click_matches(client.mask_from_prompt(image=photo, points=[(100, 100, 1)]), 100, 100)  # SAM 2 unaffected


# ----------------------------------------------------------------------------- repository description


def _configs(root):
    from segserve.repository.builder import validate_repository

    return validate_repository(root)


def test_embedded_repository_holds_the_ensemble(repository):
    configs = _configs(repository)
    assert {"mask2former_preprocess", "mask2former", "mask2former_postprocess", "mask2former_segment",
            "sam2_image_session"} <= set(configs)
    ensemble = configs["mask2former_segment"]
    assert ensemble.platform == "ensemble" and not ensemble.instance_group
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "mask2former_preprocess", "mask2former", "mask2former_postprocess"]
    graph = configs["mask2former"]
    assert graph.backend == "python" and graph.max_batch_size == 8 and graph.HasField("dynamic_batching")
    assert 0 < graph.dynamic_batching.max_queue_delay_microseconds <= 10_000
    post = configs["mask2former_postprocess"]
    assert json.loads(post.parameters["id2label"].string_value)["5"] == "animal"
    assert json.loads(post.parameters["model_info"].string_value)["mask2former"]["random_weights"] is True
    assert (repository / "mask2former_segment" / "1").is_dir()


def test_fleet_and_unbatched_targets(artifacts, tmp_path):
    from segserve.repository.builder import build_repository

    build_repository(artifacts, tmp_path / "fleet", "fleet")
    fleet = _configs(tmp_path / "fleet")
    assert fleet["mask2former"].platform == "onnxruntime_onnx" and fleet["mask2former"].HasField("dynamic_batching")
    assert fleet["mask2former_segment"].platform == "ensemble"
    for name in ("mask2former_preprocess", "mask2former_postprocess"):
        assert fleet[name].backend == "python"
        assert fleet[name].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    # no copy of segserve in the repository: the image's runtime, checked when model.py is imported
    version_dir = tmp_path / "fleet" / "mask2former_postprocess" / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == ["model.py"]
    assert 'check_runtime("mask2former_postprocess", ' in (version_dir / "model.py").read_text()
    build_repository(artifacts, tmp_path / "unbatched", "embedded", batching=False)
    graph = _configs(tmp_path / "unbatched")["mask2former"]
    assert graph.max_batch_size == 1 and not graph.HasField("dynamic_batching")


@pytest.mark.parametrize("change,message", [
    (lambda c: c.ensemble_scheduling.step[1].input_map.__setitem__("pixel_values", "nowhere"), "never produced"),
    (lambda c: c.ensemble_scheduling.step[2].input_map.__delitem__("TASK"), "not mapped"),
    (lambda c: c.ensemble_scheduling.step[2].input_map.__setitem__("TASK", "THRESHOLD"), "cannot take"),
    (lambda c: setattr(c.ensemble_scheduling.step[1], "model_name", "missing_model"), "missing model"),
    (lambda c: c.ensemble_scheduling.step[0].output_map.__setitem__("NO_SUCH_OUTPUT", "x"), "unknown output"),
    (lambda c: c.output.add(name="EXTRA", data_type=mc.TYPE_FP32, dims=[1]), "not produced"),
    (lambda c: setattr(c, "max_batch_size", 16), "below the ensemble"),
])
def test_validation_catches_broken_ensembles(repository, tmp_path, change, message):
    from segserve.repository.builder import RepositoryError

    root = tmp_path / "repo"
    shutil.copytree(repository, root)
    path = root / "mask2former_segment" / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    change(config)
    path.write_text(text_format.MessageToString(config))
    with pytest.raises(RepositoryError, match=message):
        _configs(root)


def test_label_map_codecs():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 7, (33, 17)).astype(np.int32)
    large = small * 1000
    for segment_map in (small, large):
        assert np.array_equal(seg.decode_png(seg.encode_png(segment_map)), segment_map)
        values, lengths = seg.runs_from_bytes(seg.encode_label_map(segment_map, seg.FORMAT_RLE))
        assert np.array_equal(seg.decode_runs(values, lengths, 33, 17), segment_map)
    assert seg.encode_label_map(small, seg.FORMAT_NONE) == b""
    with pytest.raises(ValueError):
        seg.decode_runs([1], [5], 2, 2)


# ----------------------------------------------------------------------------- CLI and demo


def test_cli_panoptic_and_demo(m2f_stack, m2f_client, images, tmp_path, capsys):
    from segserve import cli, demo_panoptic

    image = images["photo"]
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    cli.main(["panoptic", str(path), "--task", "semantic", "--overlay", str(tmp_path / "overlay.png"),
              "--out", str(tmp_path / "map.png"), "--server", m2f_stack.address])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["task"] == "semantic" and summary["random_weights"] is True and summary["segments"]
    overlay = np.asarray(Image.open(tmp_path / "overlay.png"))
    assert overlay.shape == image.shape and (overlay != image).any()
    assert np.asarray(Image.open(tmp_path / "map.png")).shape == image.shape[:2]

    report = demo_panoptic.run(m2f_client, image, tmp_path / "demo")
    assert (tmp_path / "demo" / "panoptic_overlay.png").is_file() and report["task"] == "panoptic"
    assert report["segments"] and report["random_weights"] is True
