"""Panoptic segmentation demo step: one image through the `Segment` RPC, a labelled overlay PNG.

`run(client, image, out_dir)` is called by the main demo with a connected `SegservClient`; the
`segserve panoptic` command draws its overlay with `overlay_segmentation` too.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from segserve.client import SegmentationResult, SegservClient
from segserve.common.overlay import overlay


def overlay_segmentation(image: np.ndarray, result: SegmentationResult, alpha: float = 0.5) -> Image.Image:
    """Each segment tinted in its own colour and labelled `name score` (name only for semantic).
    Masks come from the segment map when there is one (what it shows, disjoint), else from each
    segment's own mask (instances: best drawn last, so on top)."""
    segments = list(result.segments)
    if result.segment_map is not None:
        masks = [result.segment_map == s.id for s in segments]
    else:
        segments = segments[::-1]
        masks = [s.mask for s in segments]
    labels = [s.label_name if result.task == "semantic" else f"{s.label_name} {s.score:.2f}" for s in segments]
    return overlay(image, masks, labels, alpha=alpha)


def run(client: SegservClient, image: np.ndarray, out_dir: Path, task: str = "panoptic") -> dict:
    """Segment `image` (RGB uint8) and write `out_dir/panoptic_overlay.png`; returns a summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = client.segment(image, task=task)
    latency = time.perf_counter() - start
    path = out_dir / "panoptic_overlay.png"
    overlay_segmentation(image, result).save(path)
    return {
        "task": result.task,
        "width": result.width,
        "height": result.height,
        "latency_s": round(latency, 3),
        "segments": [{"id": s.id, "label": s.label_name, "score": round(s.score, 4), "area": s.area}
                     for s in result.segments],
        "overlay": str(path),
        "random_weights": result.model.random_weights,
        "checkpoint": result.model.checkpoint,
    }
