"""Numpy Mask2Former pre/post-processing against transformers' image processor, on the outputs of
the tiny random model (the same weights the exporter builds) for several images, sizes and
thresholds. Results must be non-empty, so these comparisons cannot pass vacuously."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Mask2FormerImageProcessorPil

from segserve.common import mask2former_post as post
from segserve.export import mask2former as m2f

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 384
IMAGE_SIZES = [(300, 400), (480, 360), (200, 640), (90, 100)]


def _scene(seed: int, height: int, width: int) -> np.ndarray:
    """A synthetic photo: coloured rectangles and discs on a gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)),
                      np.full_like(xx, int(rng.integers(0, 256)))], -1).astype(np.float64)
    for _ in range(6):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(height // 10, height // 3 + 1), rng.integers(width // 10, width // 3 + 1)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1 if rng.random() < 0.5 else \
            (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        image[inside] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


@pytest.fixture(scope="module")
def processor():
    return Mask2FormerImageProcessorPil(size={"height": SIZE, "width": SIZE})


@pytest.fixture(scope="module")
def images(photo):
    return [photo] + [_scene(i, h, w) for i, (h, w) in enumerate(IMAGE_SIZES)]


@pytest.fixture(scope="module")
def outputs(images, processor):
    """Model outputs for all images, as the processor and as our numpy code take them."""
    torch.manual_seed(m2f.TINY_SEED)
    model = m2f.build_random_model("tiny")
    pixel_values = processor([Image.fromarray(i) for i in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixel_values)
    sizes = [(i.shape[0], i.shape[1]) for i in images]
    hf = SimpleNamespace(class_queries_logits=out.class_queries_logits, masks_queries_logits=out.masks_queries_logits)
    return hf, out.class_queries_logits.numpy(), out.masks_queries_logits.numpy(), sizes


# Mask logits x4: the saturated masks of a confident (trained) model. An instance's score is its class
# probability times its mask's mean probability, and the random model's soft masks keep almost every
# score below 0.8 (2 instances in 5 images, one of them at 0.800); with sharp masks each image has 3+.
SHARP_MASKS = 4.0


@pytest.fixture(scope="module")
def sharp_outputs(outputs):
    hf, classes, masks, sizes = outputs
    hf = SimpleNamespace(class_queries_logits=hf.class_queries_logits,
                         masks_queries_logits=hf.masks_queries_logits * SHARP_MASKS)
    return hf, classes, masks * SHARP_MASKS, sizes


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Two empty masks have no IoU: an error here, never a perfect match."""
    union = np.logical_or(a, b).sum()
    if not union:
        raise ValueError("IoU of two empty masks: nothing was compared")
    return float(np.logical_and(a, b).sum() / union)


def test_module_does_not_import_torch():
    code = "import sys, segserve.common.mask2former_post; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_preprocess_matches_processor(images, processor):
    config = post.PreprocessConfig(SIZE)
    ours, sizes = post.preprocess(images, config)
    reference = processor([Image.fromarray(i) for i in images], return_tensors="np")["pixel_values"]
    assert ours.shape == reference.shape == (len(images), 3, SIZE, SIZE) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= 1e-5
    assert sizes == [(i.shape[0], i.shape[1]) for i in images]
    # PIL input, grayscale input, other normalisation and size
    gray = images[1][:, :, 0]
    config = post.PreprocessConfig(128, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    other = Mask2FormerImageProcessorPil(size={"height": 128, "width": 128}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    ours, _ = post.preprocess([Image.fromarray(images[2]), gray], config)
    reference = other([Image.fromarray(images[2]), Image.fromarray(gray).convert("RGB")], return_tensors="np")
    assert np.abs(ours - reference["pixel_values"]).max() <= 1e-5


@pytest.mark.parametrize("size", [(384, 384), (100, 90), (500, 700), (37, 1000)])
def test_resize_matches_torch(size):
    rng = np.random.default_rng(sum(size))
    x = rng.normal(size=(3, 96, 80)).astype(np.float32) * 5
    expected = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=size, mode="bilinear",
                                               align_corners=False)[0].numpy()
    assert np.abs(post.resize_bilinear(x, size) - expected).max() <= 1e-5
    binary = (x > 0).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(binary)[None], size=size, mode="nearest")[0].numpy()
    assert np.array_equal(post.resize_nearest(binary, size), expected)


@pytest.mark.parametrize("resized", [True, False])
def test_semantic_matches_processor(outputs, processor, resized):
    hf, classes, masks, sizes = outputs
    target_sizes = sizes if resized else None
    reference = processor.post_process_semantic_segmentation(hf, target_sizes=target_sizes)
    ours = post.post_process_semantic_segmentation(classes, masks, target_sizes=target_sizes)
    for ref, got, size in zip(reference, ours, sizes):
        assert got.shape == (size if resized else (SIZE, SIZE))
        assert (ref.numpy() == got).mean() >= 0.999
        assert len(np.unique(got)) >= 2  # not a one-class map


def _compare_panoptic(ref, got) -> None:
    """Our segments against the processor's. Every one of ours must lie in one processor segment of
    the same label, and each processor segment must be the union of ours mapped to it (IoU >= 0.99).
    The mapping must be one-to-one unless the processor reused an id: it numbers a segment after a
    fused label from that label's id, so two different segments can share an id there."""
    ref_map = ref["segmentation"].numpy()
    ref_labels: dict[int, set[int]] = {}
    reused = False
    for info in ref["segments_info"]:
        seen = ref_labels.get(info["id"])
        reused |= seen is not None and (not info["was_fused"] or info["label_id"] not in seen)
        ref_labels.setdefault(info["id"], set()).add(info["label_id"])
    groups: dict[int, list[int]] = {}
    for info in got.segments_info:
        ids, counts = np.unique(ref_map[got.segmentation == info["id"]], return_counts=True)
        ref_id = int(ids[counts.argmax()])
        assert info["label_id"] in ref_labels.get(ref_id, ())
        groups.setdefault(ref_id, []).append(info["id"])
    assert set(groups) == set(ref_labels)
    for ref_id, ours in groups.items():
        assert _iou(ref_map == ref_id, np.isin(got.segmentation, ours)) >= 0.99
        assert reused or len(ours) == 1
    assert (ref_map <= 0).sum() == pytest.approx((got.segmentation == 0).sum(), abs=0.001 * ref_map.size)


@pytest.mark.parametrize("threshold,mask_threshold,overlap,fuse", [
    (0.5, 0.5, 0.8, set()),
    (0.3, 0.5, 0.5, {1}),
    (0.5, 0.3, 0.8, {1, 5}),
    (0.7, 0.6, 0.9, set()),
])
def test_panoptic_matches_processor(outputs, processor, threshold, mask_threshold, overlap, fuse):
    hf, classes, masks, sizes = outputs
    kwargs = dict(threshold=threshold, mask_threshold=mask_threshold, overlap_mask_area_threshold=overlap,
                  label_ids_to_fuse=fuse, target_sizes=sizes)
    reference = processor.post_process_panoptic_segmentation(hf, **kwargs)
    ours = post.post_process_panoptic_segmentation(classes, masks, **kwargs)
    for ref, got, size in zip(reference, ours, sizes):
        assert got.segmentation.shape == size and got.segmentation.dtype == np.int32
        ids = [s["id"] for s in got.segments_info]
        assert ids == list(range(1, len(ids) + 1))
        assert set(np.unique(got.segmentation)) <= {0, *ids}
        assert all(s["was_fused"] == (s["label_id"] in fuse) for s in got.segments_info)
        for label in fuse:  # one segment per fused label
            assert sum(s["label_id"] == label for s in got.segments_info) <= 1
        # The random model gives segments on every image in each of these settings (2 to 10 each),
        # the strictest (0.7, 0.6, 0.9) included: no case compares empty with empty.
        assert len(ids) >= 2 and len(ref["segments_info"]) >= 2
        _compare_panoptic(ref, got)


@pytest.mark.parametrize("threshold,mask_threshold,sharp", [(0.5, 0.5, False), (0.3, 0.5, False), (0.8, 0.5, True)])
def test_instance_matches_processor(request, processor, threshold, mask_threshold, sharp):
    hf, classes, masks, sizes = request.getfixturevalue("sharp_outputs" if sharp else "outputs")
    reference = processor.post_process_instance_segmentation(hf, threshold=threshold, mask_threshold=mask_threshold,
                                                             target_sizes=sizes, return_binary_maps=True)
    ours = post.post_process_instance_segmentation(classes, masks, threshold=threshold, mask_threshold=mask_threshold,
                                                   target_sizes=sizes, return_binary_maps=True)
    for ref, got, size in zip(reference, ours, sizes):
        n = len(got.segments_info)
        assert got.segmentation.shape == (n, *size) and got.segmentation.dtype == bool
        scores = [s["score"] for s in got.segments_info]
        assert scores == sorted(scores, reverse=True) and all(s >= threshold for s in scores)
        assert len(ref["segments_info"]) == n
        assert n >= 3  # instances on every image at each threshold (0.8 with sharp masks: 3 to 10)
        ref_masks = ref["segmentation"].numpy().astype(bool)
        unmatched = list(range(n))
        ref_info = ref["segments_info"]
        for info, mask in zip(got.segments_info, got.segmentation):
            def closeness(j: int, info=info, mask=mask, ref_info=ref_info, ref_masks=ref_masks) -> float:
                same_label = ref_info[j]["label_id"] == info["label_id"]
                return _iou(ref_masks[j], mask) - abs(ref_info[j]["score"] - info["score"]) - (not same_label)
            j = max(unmatched, key=closeness)
            unmatched.remove(j)
            assert ref_info[j]["label_id"] == info["label_id"]
            assert ref_info[j]["score"] == pytest.approx(info["score"], abs=1e-4)
            assert _iou(ref_masks[j], mask) >= 0.99

    # the label-map form: the best-scored instance wins where instances overlap
    maps = post.post_process_instance_segmentation(classes, masks, threshold=threshold, target_sizes=sizes)
    for label_map, binary in zip(maps, ours):
        expected = np.full(label_map.segmentation.shape, -1, dtype=np.int32)
        for i in range(len(binary.segmentation) - 1, -1, -1):
            expected[binary.segmentation[i]] = i
        assert np.array_equal(label_map.segmentation, expected)


def test_nothing_above_threshold(outputs):
    _, classes, masks, sizes = outputs
    panoptic = post.post_process_panoptic_segmentation(classes, masks, threshold=1.0, target_sizes=sizes)
    instance = post.post_process_instance_segmentation(classes, masks, threshold=1.0, target_sizes=sizes,
                                                       return_binary_maps=True)
    for p, i, size in zip(panoptic, instance, sizes):
        assert p.segments_info == [] and p.segmentation.shape == size and not p.segmentation.any()
        assert i.segments_info == [] and i.segmentation.shape == (0, *size)
