"""A short synthetic clip with moving shapes (tests, demo, CLI, benchmark): no media files needed."""
from __future__ import annotations

import numpy as np


def moving_shapes(frames: int = 8, height: int = 120, width: int = 160, seed: int = 0):
    """RGB uint8 frames [T, H, W, 3] of a disc moving right and a square moving down over a smooth
    textured background, plus each shape's centre per frame: {1: [(x, y), ...], 2: [...]}."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([60 + 30 * np.sin(xx / 9.0), 70 + 25 * np.cos(yy / 7.0),
                           80 + 20 * np.sin((xx + yy) / 11.0)], axis=-1)
    background += rng.normal(0, 4, background.shape)
    clip, centres = [], {1: [], 2: []}
    radius, half = height * 0.14, height * 0.12
    for t in range(frames):
        frame = background.copy()
        progress = t / max(frames - 1, 1)
        cx, cy = width * (0.22 + 0.45 * progress), height * 0.35
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
        frame[disc] = (220, 40, 40)
        sx, sy = width * 0.72, height * (0.3 + 0.4 * progress)
        square = (np.abs(xx - sx) <= half) & (np.abs(yy - sy) <= half)
        frame[square] = (40, 60, 220)
        clip.append(np.clip(frame, 0, 255).astype(np.uint8))
        centres[1].append((float(cx), float(cy)))
        centres[2].append((float(sx), float(sy)))
    return np.stack(clip), centres
