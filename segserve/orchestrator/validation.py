"""Prompt validation: every rejection names the field and picks the status code."""
from __future__ import annotations

import math

import numpy as np

from .errors import exhausted, invalid

LOW_RES = 256


def _finite(field: str, *values: float) -> None:
    if not all(math.isfinite(v) for v in values):
        raise invalid(field, "must be finite numbers (got NaN or infinity)")


def points(request, width: int, height: int, max_points: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    if len(request.points) > max_points:
        raise exhausted("points", f"{len(request.points)} points exceed the limit of {max_points}")
    if not request.points:
        return None, None
    for i, p in enumerate(request.points):
        field = f"points[{i}]"
        _finite(field, p.x, p.y)
        if not (0 <= p.x <= width and 0 <= p.y <= height):
            raise invalid(field, f"({p.x}, {p.y}) lies outside the {width}x{height} image")
        if p.label not in (0, 1):
            raise invalid(f"{field}.label", f"must be 1 (foreground) or 0 (background), got {p.label}")
    xy = np.array([[p.x, p.y] for p in request.points], np.float32)
    return xy, np.array([p.label for p in request.points], np.int32)


def boxes(request, width: int, height: int, max_boxes: int) -> np.ndarray | None:
    if len(request.boxes) > max_boxes:
        raise exhausted("boxes", f"{len(request.boxes)} boxes exceed the limit of {max_boxes}")
    if not request.boxes:
        return None
    for i, b in enumerate(request.boxes):
        field = f"boxes[{i}]"
        _finite(field, b.x0, b.y0, b.x1, b.y1)
        if not (0 <= b.x0 <= width and 0 <= b.x1 <= width and 0 <= b.y0 <= height and 0 <= b.y1 <= height):
            raise invalid(field, f"({b.x0}, {b.y0}, {b.x1}, {b.y1}) lies outside the {width}x{height} image")
        if b.x0 > b.x1 or b.y0 > b.y1:
            raise invalid(field, "needs x0 <= x1 and y0 <= y1")
    return np.array([[b.x0, b.y0, b.x1, b.y1] for b in request.boxes], np.float32)


def mask_input(request) -> np.ndarray | None:
    if not request.HasField("mask_input"):
        return None
    m = request.mask_input
    if (m.height, m.width) != (LOW_RES, LOW_RES):
        raise invalid("mask_input", f"must be {LOW_RES}x{LOW_RES} low-res logits, got {m.height}x{m.width}")
    if len(m.float32_data) != LOW_RES * LOW_RES * 4:
        raise invalid("mask_input.float32_data", f"must hold {LOW_RES * LOW_RES} float32 values, got {len(m.float32_data)} bytes")
    logits = np.frombuffer(m.float32_data, dtype="<f4").reshape(1, 1, LOW_RES, LOW_RES)
    if not np.isfinite(logits).all():
        raise invalid("mask_input.float32_data", "must be finite numbers (got NaN or infinity)")
    return logits.astype(np.float32)
