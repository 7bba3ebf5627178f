"""Whole-image segmentation results as they travel: one map of segment ids plus a list of segments
(label, score, COCO RLE mask), built from Mask2Former outputs (inside Triton) and read back by the
orchestrator and the client. numpy, PIL and pycocotools only (no torch).

The map holds, per pixel, the id of the segment covering it and 0 where none does, for all tasks:
- panoptic: the post-processing's segment ids (1, 2, ...);
- semantic: one segment per label present, id = label_id + 1 (so no pixel is 0);
- instance: instances best first with ids 1, 2, ...; where instances overlap the map shows the best
  one, while each segment's RLE mask is its whole binary mask.
The map travels as a grayscale PNG (8-bit, 16-bit when an id exceeds 255) or as row-major runs.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from segserve.common import mask2former_post as post

TASKS = ("panoptic", "semantic", "instance")
FORMAT_PNG, FORMAT_RLE, FORMAT_NONE = 0, 1, 2  # the API's LabelMapFormat values


@dataclass
class Segmentation:
    segment_map: np.ndarray  # int32 [H, W], 0 = no segment
    segments: list[dict[str, Any]] = field(default_factory=list)


def _segment(ident: int, label: int, score: float, mask: np.ndarray, names: dict[int, str],
             was_fused: bool = False) -> dict[str, Any]:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": int(ident), "label_id": int(label), "label_name": names.get(int(label), str(label)),
        "score": float(score), "was_fused": bool(was_fused), "area": int(coco_mask.area(encoded)),
        "bbox": [float(v) for v in coco_mask.toBbox(encoded)],
        "rle": {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")},
    }


def segment_image(task: str, class_logits: np.ndarray, mask_logits: np.ndarray, size: tuple[int, int],
                  id2label: dict[int, str] | None = None, threshold: float = 0.5, mask_threshold: float = 0.5,
                  overlap_mask_area_threshold: float = 0.8, label_ids_to_fuse: Iterable[int] = (),
                  mask_size: int | None = post.HF_MASK_SIZE) -> Segmentation:
    """One image's Mask2Former outputs (class logits [Q, C+1], mask logits [Q, h, w]) -> the
    segmentation at `size` (height, width) for `task`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    names = {int(k): v for k, v in (id2label or {}).items()}
    classes, masks = class_logits[None], mask_logits[None]
    sizes = [(int(size[0]), int(size[1]))]
    if task == "semantic":
        labels = post.post_process_semantic_segmentation(classes, masks, sizes, mask_size=mask_size)[0]
        segment_map = (labels + 1).astype(np.int32)
        segments = [_segment(label + 1, label, 0.0, labels == label, names) for label in np.unique(labels)]
        return Segmentation(segment_map, segments)
    if task == "panoptic":
        result = post.post_process_panoptic_segmentation(
            classes, masks, threshold, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse, sizes,
            mask_size=mask_size)[0]
        segments = [_segment(s["id"], s["label_id"], s["score"], result.segmentation == s["id"], names, s["was_fused"])
                    for s in result.segments_info]
        return Segmentation(result.segmentation.astype(np.int32), segments)
    result = post.post_process_instance_segmentation(
        classes, masks, threshold, mask_threshold, target_sizes=sizes, return_binary_maps=True, mask_size=mask_size)[0]
    segment_map = np.zeros(sizes[0], dtype=np.int32)
    for i in range(len(result.segments_info) - 1, -1, -1):  # best last: it wins where instances overlap
        segment_map[result.segmentation[i]] = i + 1
    segments = [_segment(i + 1, s["label_id"], s["score"], mask, names)
                for i, (s, mask) in enumerate(zip(result.segments_info, result.segmentation))]
    return Segmentation(segment_map, segments)


# ----------------------------------------------------------------------------- label map encodings


def encode_png(segment_map: np.ndarray) -> bytes:
    peak = int(segment_map.max()) if segment_map.size else 0
    if segment_map.size and int(segment_map.min()) < 0 or peak > 65535:
        raise ValueError("segment ids must lie in [0, 65535] for a PNG label map")
    array = segment_map.astype(np.uint8 if peak <= 255 else np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).astype(np.int32)


def encode_runs(segment_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-major runs: (values, lengths), int32."""
    flat = np.ascontiguousarray(segment_map).reshape(-1)
    if flat.size == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return flat[starts].astype(np.int32), lengths.astype(np.int32)


def decode_runs(values: Iterable[int], lengths: Iterable[int], height: int, width: int) -> np.ndarray:
    values, lengths = np.asarray(values, np.int32), np.asarray(lengths, np.int64)
    if values.shape != lengths.shape or int(lengths.sum()) != height * width:
        raise ValueError(f"runs cover {int(lengths.sum())} pixels, not {height}x{width}")
    return np.repeat(values, lengths).reshape(height, width)


def encode_label_map(segment_map: np.ndarray, label_map_format: int) -> bytes:
    """What the postprocess model returns: PNG bytes, runs as little-endian int32 pairs, or nothing."""
    if label_map_format == FORMAT_PNG:
        return encode_png(segment_map)
    if label_map_format == FORMAT_RLE:
        values, lengths = encode_runs(segment_map)
        return np.stack([values, lengths], 1).astype("<i4").tobytes()
    return b""


def runs_from_bytes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.frombuffer(data, dtype="<i4").reshape(-1, 2)
    return pairs[:, 0].astype(np.int32), pairs[:, 1].astype(np.int32)
