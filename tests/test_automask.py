"""Segment everything: GenerateMasks through orchestrator + real embedded Triton vs a PyTorch reference.

The tiny random-weight SAM 2 gives noisy masks on a photo (every box spans the image and NMS
keeps one); on an image of flat shapes its masks are compact enough for the thresholds below to
keep a real number of them, which each case checks so that no comparison passes on nothing.
"""
import json
import math

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from segserve.common import automask as amg
from segserve.common import rle as rle_codec
from tests import automask_reference
from tests.sam2_reference import iou

BASE = dict(points_per_side=8, points_per_batch=16, mask_threshold=1.0)
CASES = {
    "filters": (dict(pred_iou_thresh=0.5, stability_score_thresh=0.2), 4),
    "loose_nms": (dict(pred_iou_thresh=0.4, stability_score_thresh=0.1, box_nms_thresh=0.8), 8),
    "crop_layer": (dict(pred_iou_thresh=0.4, stability_score_thresh=0.1, crop_n_layers=1,
                        crop_n_points_downscale_factor=2), 4),
    "small_regions": (dict(pred_iou_thresh=0.4, stability_score_thresh=0.1, min_mask_region_area=50), 2),
}


def shapes(height=320, width=384) -> np.ndarray:
    image = np.full((height, width, 3), 30, np.uint8)
    yy, xx = np.mgrid[:height, :width]
    image[(yy - 100) ** 2 + (xx - 110) ** 2 < 70 ** 2] = (250, 240, 20)
    image[180:300, 200:360] = (20, 60, 250)
    image[30:120, 240:350] = (240, 30, 30)
    image[(yy - 240) ** 2 + (xx - 80) ** 2 < 50 ** 2] = (20, 230, 80)
    return image


@pytest.fixture(scope="module")
def image():
    return shapes()


def assert_same_masks(served, expected, min_count):
    assert len(expected) >= min_count, f"reference kept only {len(expected)} masks: the case tests nothing"
    # every reference mask is non-trivial, so no IoU below compares empty with empty
    assert all(0 < e["mask"].sum() < e["mask"].size for e in expected)
    assert len(served) == len(expected)
    unmatched = list(range(len(expected)))
    for record in served:
        mask = rle_codec.decode(record["segmentation"])
        assert record["area"] == int(mask.sum())
        scores = [iou(mask, expected[j]["mask"]) for j in unmatched]
        best = int(np.argmax(scores))
        assert scores[best] >= 0.99, scores
        ref = expected[unmatched.pop(best)]
        assert abs(record["predicted_iou"] - ref["predicted_iou"]) < 1e-3
        assert abs(record["stability_score"] - ref["stability_score"]) < 1e-2
        x0, y0, x1, y1 = ref["bbox"]
        np.testing.assert_allclose(record["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=2)
        np.testing.assert_allclose(record["point_coords"][0], ref["point"], atol=1e-3)
        cx0, cy0, cx1, cy1 = ref["crop_box"]
        assert record["crop_box"] == [cx0, cy0, cx1 - cx0, cy1 - cy0]


def session_stats(stack):
    triton = grpcclient.InferenceServerClient(stack.triton.grpc_url)
    try:
        stats = triton.get_inference_statistics("sam2_image_session").model_stats[0]
        return stats.execution_count, stats.inference_stats.success.count
    finally:
        triton.close()


@pytest.mark.parametrize("name", list(CASES))
def test_generate_masks_matches_pytorch_reference(client, stack, sam2_torch_model, image, name):
    overrides, min_count = CASES[name]
    params = {**BASE, **overrides}
    before = session_stats(stack)
    result = client.generate_masks(image=image, **params)
    after = session_stats(stack)
    expected = automask_reference.generate(sam2_torch_model, image, **params)
    assert_same_masks(result.masks, expected, min_count)
    assert (result.width, result.height) == (image.shape[1], image.shape[0])
    if params.get("crop_n_layers"):  # masks from the crops themselves survive the cross-crop NMS
        assert any(m["crop_box"] != [0, 0, image.shape[1], image.shape[0]] for m in result.masks)
    crops = amg.plan(image.shape[0], image.shape[1], amg.AutoMaskParams(**params))
    points = sum(len(c.points) for c in crops)
    assert result.progress.points_total == points
    batches = sum(math.ceil(len(c.points) / params["points_per_batch"]) for c in crops)
    # Batched for real: one decoder call per batch of prompts, and Triton saw no more executions
    # than batches plus encodes (one per crop, or none when the embedding cache had the image).
    assert result.decoder_calls == batches
    executions = after[0] - before[0]
    assert batches <= executions <= batches + 2 * len(crops) and executions * 4 <= points


def test_streaming_progress_and_max_masks(client, image):
    params = {**BASE, **CASES["loose_nms"][0]}
    whole = client.generate_masks(image=image, **params)
    seen = []
    streamed = client.generate_masks(image=image, stream=True, on_progress=lambda p: seen.append(p.points_done), **params)
    assert seen == [16, 32, 48, 64]
    assert [m["segmentation"] for m in streamed.masks] == [m["segmentation"] for m in whole.masks]
    best = client.generate_masks(image=image, max_masks=3, **params)
    assert best.truncated and len(best.masks) == 3
    top = sorted((m["predicted_iou"] for m in whole.masks), reverse=True)[:3]
    assert sorted((m["predicted_iou"] for m in best.masks), reverse=True) == pytest.approx(top)


def test_image_id_source(client, image):
    params = {**BASE, **CASES["filters"][0]}
    opened = client.open_image(image)
    try:
        by_id = client.generate_masks(image_id=opened.image_id, **params)
    finally:
        client.close_image(opened.image_id)
    by_bytes = client.generate_masks(image=image, **params)
    assert by_id.image_id == opened.image_id
    assert [m["segmentation"] for m in by_id.masks] == [m["segmentation"] for m in by_bytes.masks]


@pytest.mark.parametrize("field, value", [
    ("points_per_side", 0), ("points_per_side", 100_000), ("points_per_batch", 0), ("pred_iou_thresh", 1.5),
    ("stability_score_thresh", -0.1), ("box_nms_thresh", 2.0), ("crop_nms_thresh", float("nan")),
    ("crop_overlap_ratio", 1.0), ("crop_n_layers", -1), ("stability_score_offset", 0.0),
    ("crop_n_points_downscale_factor", 0), ("min_mask_region_area", -5),
])
def test_parameters_out_of_range(client, image, field, value):
    with pytest.raises(grpc.RpcError) as info:
        client.generate_masks(image=image, **{field: value})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()


def test_request_limits(client, image):
    with pytest.raises(grpc.RpcError) as info:  # 128^2 * (1 + 4 + 16) points, over the 16384 limit
        client.generate_masks(image=image, points_per_side=128, crop_n_layers=2)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "points" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        client.generate_masks(image_id="bm9wZQ", points_per_side=4)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    opened = client.open_image(image)
    try:
        with pytest.raises(grpc.RpcError) as info:
            client.generate_masks(image_id=opened.image_id, points_per_side=4, crop_n_layers=1)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "crop_n_layers" in info.value.details()
    finally:
        client.close_image(opened.image_id)
    with pytest.raises(grpc.RpcError) as info:
        client.generate_masks(image=b"not an image", points_per_side=4)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image" in info.value.details()


def test_cli_and_demo(stack, client, image, tmp_path):
    from PIL import Image

    from segserve import cli, demo_everything

    path = tmp_path / "shapes.png"
    Image.fromarray(image).save(path)
    args = ["everything", str(path), "--server", stack.address, "--overlay", str(tmp_path / "o.png"),
            "--json", str(tmp_path / "m.json"), "--points-per-side", "8", "--pred-iou-thresh", "0.5",
            "--stability-score-thresh", "0.2", "--mask-threshold", "1.0"]
    cli.main(args)
    coco = json.loads((tmp_path / "m.json").read_text())
    assert len(coco["annotations"]) >= 4 and coco["images"][0]["width"] == image.shape[1]
    first = coco["annotations"][0]
    assert {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"} <= set(first)
    assert rle_codec.area(first["segmentation"]) == first["area"]
    assert Image.open(tmp_path / "o.png").size == (image.shape[1], image.shape[0])
    summary = demo_everything.run(client, image, tmp_path / "demo", points_per_side=8, pred_iou_thresh=0.5,
                                  stability_score_thresh=0.2, mask_threshold=1.0)
    assert summary["masks"] >= 4 and (tmp_path / "demo" / "everything_overlay.png").is_file()
    json.dumps(summary)


def test_nms_and_small_regions_units():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    assert amg.box_nms(boxes, np.array([0.5, 0.9, 0.1, 0.9]), 0.7).tolist() == [1, 2]
    assert amg.box_nms(boxes, np.array([1.0, 1.0, 1.0, 1.0]), 0.7).tolist() == [0, 2]
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5, 5] = False  # a 1-px hole
    mask[16, 16] = True  # a 1-px island
    cleaned, changed = amg.remove_small_regions(mask, 4, "holes")
    assert changed and cleaned[5, 5]
    cleaned, changed = amg.remove_small_regions(cleaned, 4, "islands")
    assert changed and not cleaned[16, 16] and cleaned.sum() == 100
    assert amg.total_points(amg.AutoMaskParams(points_per_side=8, crop_n_layers=2, crop_n_points_downscale_factor=2)) == 64 * 3
    # A few-pixel image with many crop layers: every crop keeps a positive size.
    assert all(x1 > x0 and y1 > y0 for (x0, y0, x1, y1), _ in amg.crop_boxes(3, 2, 4, 0.9))
