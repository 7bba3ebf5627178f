"""Overlay PNGs: masks tinted over the image, prompts and labels drawn on top."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

PALETTE = np.array([(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
                    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)], dtype=np.float32)


def overlay(image: np.ndarray, masks: Sequence[np.ndarray], labels: Sequence[str] | None = None,
            points: Sequence[Sequence[float]] = (), boxes: Sequence[Sequence[float]] = (),
            alpha: float = 0.5) -> Image.Image:
    canvas = image.astype(np.float32).copy()
    for i, mask in enumerate(masks):
        color = PALETTE[i % len(PALETTE)]
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * color
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    radius = max(3, min(image.shape[:2]) // 100)
    for p in points:
        fill = (0, 255, 0) if (len(p) < 3 or p[2]) else (255, 0, 0)
        draw.ellipse([p[0] - radius, p[1] - radius, p[0] + radius, p[1] + radius], fill=fill, outline=(255, 255, 255))
    for b in boxes:
        draw.rectangle(list(b[:4]), outline=(255, 255, 0), width=max(2, radius // 2))
    for i, (mask, label) in enumerate(zip(masks, labels or [])):
        ys, xs = np.nonzero(mask)
        if len(xs):
            draw.text((int(xs.min()), max(0, int(ys.min()) - 12)), label, fill=tuple(int(c) for c in PALETTE[i % len(PALETTE)]))
    return out
