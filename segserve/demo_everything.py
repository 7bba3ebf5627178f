"""Segment-everything demo step: automatic masks for one image, a coloured overlay PNG.

`run(client, image, out_dir)` is called by the main demo with a connected `SegservClient`; the
`segserve everything` command draws its overlay with `overlay_masks` too.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from segserve.client import AutoMaskResult, SegservClient
from segserve.common import rle as rle_codec
from segserve.common.overlay import overlay


def overlay_masks(image: np.ndarray, result: AutoMaskResult, alpha: float = 0.5) -> Image.Image:
    """Every mask tinted in its own colour, largest first so that small ones stay visible."""
    records = sorted(result.masks, key=lambda r: r["area"], reverse=True)
    return overlay(image, [rle_codec.decode(r["segmentation"]) for r in records], alpha=alpha)


def run(client: SegservClient, image: np.ndarray, out_dir: Path, **parameters) -> dict:
    """Generate masks for `image` (RGB uint8), write `out_dir/everything_overlay.png`; returns a summary.
    `parameters` go to `generate_masks` (default here: a 16x16 grid, 64 prompts per decoder call)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"points_per_side": 16, "points_per_batch": 64, **parameters}
    start = time.perf_counter()
    result = client.generate_masks(image=image, **parameters)
    latency = time.perf_counter() - start
    path = out_dir / "everything_overlay.png"
    overlay_masks(image, result).save(path)
    return {
        "width": result.width,
        "height": result.height,
        "latency_s": round(latency, 3),
        "masks": len(result.masks),
        "decoder_calls": result.decoder_calls,
        "points": result.progress.points_total if result.progress is not None else 0,
        "top_masks": [{"area": r["area"], "bbox": [round(v, 1) for v in r["bbox"]],
                       "predicted_iou": round(r["predicted_iou"], 4), "stability_score": round(r["stability_score"], 4)}
                      for r in sorted(result.masks, key=lambda r: -r["predicted_iou"])[:10]],
        "overlay": str(path),
        "random_weights": bool(result.model.random_weights) if result.model is not None else None,
        "checkpoint": result.model.checkpoint if result.model is not None else "",
    }
