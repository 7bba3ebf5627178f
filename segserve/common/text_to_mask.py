"""Glue of the text-to-mask ensemble (numpy only; runs inside Triton Python models and in tests).

`grounding_select` turns Grounding DINO's outputs into detections (phrase, score, box in original
pixels) and into SAM 2 box prompts in the 1024 frame; `text_mask_postprocess` joins the detections
with the decoder's masks. Both halves travel through the ensemble as a small JSON document, so the
ensemble's outputs have a fixed shape whatever the number of objects.

Zero detections. A Triton ensemble cannot skip a step, and the SAM 2 decoder cannot run on zero
prompts (P = 0). So when nothing is detected, `detection_prompts` emits ONE dummy prompt (a box over
the whole frame) and the detections document says `"count": 0`; the postprocess step then drops
every decoder output beyond `count`, and the result is an empty object list, not an error. The
dummy costs one decoder pass (a few ms); the SAM 2 encoder runs either way (it runs in parallel
with Grounding DINO, before the number of detections is known).
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from segserve.common import rle
from segserve.common.grounding import Detections
from segserve.common.sam2_transforms import BOX_LABELS, IMAGE_SIZE, PAD_LABEL, masks_from_logits, to_model_coords

PROMPT_POINTS = 3  # two box corners (labels 2, 3) and SAM 2's pad point (label -1)


def detections_document(detections: Detections) -> str:
    """The select step's result: phrases, scores and xyxy boxes in original pixels, best first."""
    return json.dumps({
        "count": len(detections),
        "phrases": list(detections.labels),
        "scores": [float(s) for s in detections.scores],
        "boxes": [[float(v) for v in box] for box in detections.boxes],
        "queries": [int(q) for q in detections.query_indices],
    })


def detection_prompts(boxes: np.ndarray, original_hw: tuple[int, int],
                      size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N, 4] in original pixels -> point_coords [P, 3, 2] and point_labels [P, 3] in the
    model frame, one prompt per box, exactly as `sam2_transforms.build_prompts` builds box prompts.
    N = 0 gives P = 1: a dummy whole-frame box whose masks the postprocess step drops."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        height, width = original_hw
        boxes = np.array([[0.0, 0.0, width, height]], dtype=np.float32)
    corners = to_model_coords(boxes.reshape(-1, 2), original_hw, size).reshape(-1, 2, 2)
    coords = np.concatenate([corners, np.zeros((len(boxes), 1, 2), np.float32)], axis=1)
    labels = np.tile(np.array([*BOX_LABELS, PAD_LABEL], np.int32), (len(boxes), 1))
    return coords.astype(np.float32), labels


def objects_document(detections: str | dict, masks: np.ndarray, mask_scores: np.ndarray,
                     object_scores: np.ndarray, original_hw: tuple[int, int], threshold: float = 0.0) -> str:
    """Detections + the decoder's single-mask outputs ([P, 1, h, w], [P, 1], [P, 1]) -> the objects
    document: per object phrase, score, box, mask score (predicted IoU), object score and COCO RLE at
    the original size. Decoder rows beyond `count` (the zero-detection dummy) are dropped."""
    doc = json.loads(detections) if isinstance(detections, (str, bytes)) else detections
    count = int(doc["count"])
    if masks.shape[0] < count:
        raise ValueError(f"decoder returned {masks.shape[0]} masks for {count} detections")
    objects = []
    if count:
        binary = masks_from_logits(np.asarray(masks[:count, 0], np.float32), original_hw, threshold)
        for i in range(count):
            objects.append({
                "phrase": doc["phrases"][i],
                "score": doc["scores"][i],
                "box": doc["boxes"][i],
                "mask_score": float(np.asarray(mask_scores).reshape(masks.shape[0], -1)[i, 0]),
                "object_score": float(np.asarray(object_scores).reshape(masks.shape[0], -1)[i, 0]),
                "rle": rle.encode(binary[i])["counts"],
            })
    return json.dumps({"height": int(original_hw[0]), "width": int(original_hw[1]), "objects": objects})


def parse_objects(document: str | bytes) -> list[dict]:
    return json.loads(document)["objects"]


def parse_detections(document: str | bytes) -> list[dict]:
    doc = json.loads(document)
    return [{"phrase": p, "score": s, "box": b} for p, s, b in zip(doc["phrases"], doc["scores"], doc["boxes"])]


def phrases_of(objects: Sequence[dict]) -> list[str]:
    return [o["phrase"] for o in objects]
