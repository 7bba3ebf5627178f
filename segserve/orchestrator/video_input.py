"""What a client sends to a video session, checked before anything reaches Triton: frames (decoded,
one size per video) and point / box prompts (in the frame, mapped to the model frame). Mask and
text prompts: `video_prompts.py`."""
from __future__ import annotations

import math

import grpc
import numpy as np

from segserve.common import sam2_transforms
from segserve.common.image import ImageError, decode_image

from .errors import ServiceError, exhausted, invalid
from .settings import Settings
from .video_prompts import decode_mask

MAX_POINTS_PER_OBJECT = 64
MAX_OBJECTS_PER_REQUEST = 64


def decode_frames(message, first_index: int, expected_hw: tuple[int, int] | None, settings: Settings) -> np.ndarray:
    """The frames of one `VideoFrames` message -> uint8 [F, H, W, 3], all of the video's size (the
    first frame's when `expected_hw` is None)."""
    frames = []
    for i, frame in enumerate(message.frames):
        where = f"frames[{first_index + i}]"
        kind = frame.WhichOneof("data")
        if kind == "image":
            try:
                rgb = decode_image(frame.image, where, settings.max_image_pixels, settings.max_image_bytes)
            except ImageError as exc:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED if exc.too_large else grpc.StatusCode.INVALID_ARGUMENT
                raise ServiceError(code, str(exc)) from exc
        elif kind == "raw":
            raw = frame.raw
            if raw.width <= 0 or raw.height <= 0 or len(raw.rgb) != raw.width * raw.height * 3:
                raise invalid(where, f"raw frame needs width*height*3 = {max(raw.width, 0) * max(raw.height, 0) * 3} "
                                     f"bytes, got {len(raw.rgb)}")
            if raw.width * raw.height > settings.max_image_pixels:
                raise exhausted(where, f"{raw.width}x{raw.height} is over {settings.max_image_pixels} pixels")
            rgb = np.frombuffer(raw.rgb, np.uint8).reshape(raw.height, raw.width, 3)
        else:
            raise invalid(where, "set image (encoded bytes) or raw")
        hw = expected_hw or (frames[0].shape[:2] if frames else rgb.shape[:2])
        if rgb.shape[:2] != tuple(hw):
            raise invalid(where, f"size {rgb.shape[1]}x{rgb.shape[0]} differs from the video's {hw[1]}x{hw[0]}")
        frames.append(rgb)
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def check_add_prompts(request, num_frames: int) -> list[int]:
    """The object ids of an `AddPromptsRequest`, once its shape is right."""
    if not request.objects and not request.HasField("text"):
        raise invalid("objects", "give at least one object (or a text prompt)")
    if len(request.objects) > MAX_OBJECTS_PER_REQUEST:
        raise exhausted("objects", f"at most {MAX_OBJECTS_PER_REQUEST} objects per request")
    ids = [o.object_id for o in request.objects]
    if len(set(ids)) != len(ids):
        raise invalid("objects", "each object_id at most once per request")
    if not 0 <= request.frame_index < num_frames:
        raise invalid("frame_index", f"{request.frame_index} is out of range: the session has {num_frames} frames")
    return ids


def object_prompt(obj, index: int, height: int, width: int, image_size: int) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
    """One `ObjectPrompt` -> (coords in the model frame, labels), or a uint8 mask [H, W] for a mask prompt."""
    where = f"objects[{index}]"
    if obj.HasField("mask"):
        if obj.points or obj.HasField("box"):  # as Sam2VideoProcessor: one or the other
            raise invalid(f"{where}.mask", "cannot be combined with points or a box")
        return decode_mask(obj.mask, f"{where}.mask", height, width)
    coords, labels = [], []
    if obj.HasField("box"):
        b = obj.box
        if not all(math.isfinite(v) for v in (b.x0, b.y0, b.x1, b.y1)):
            raise invalid(f"{where}.box", "must be finite numbers")
        if not (0 <= b.x0 <= width and 0 <= b.x1 <= width and 0 <= b.y0 <= height and 0 <= b.y1 <= height):
            raise invalid(f"{where}.box", f"({b.x0}, {b.y0}, {b.x1}, {b.y1}) lies outside the {width}x{height} frame")
        if b.x1 < b.x0 or b.y1 < b.y0:
            raise invalid(f"{where}.box", "needs x0 <= x1 and y0 <= y1")
        coords += [(b.x0, b.y0), (b.x1, b.y1)]
        labels += [2, 3]
    if len(obj.points) > MAX_POINTS_PER_OBJECT:
        raise exhausted(f"{where}.points", f"at most {MAX_POINTS_PER_OBJECT} points per object")
    for j, p in enumerate(obj.points):
        if not (math.isfinite(p.x) and math.isfinite(p.y)):
            raise invalid(f"{where}.points[{j}]", "must be finite numbers")
        if not (0 <= p.x <= width and 0 <= p.y <= height):
            raise invalid(f"{where}.points[{j}]", f"({p.x}, {p.y}) is outside the {width}x{height} frame")
        if p.label not in (0, 1):
            raise invalid(f"{where}.points[{j}].label", "must be 1 (foreground) or 0 (background)")
        coords.append((p.x, p.y))
        labels.append(p.label)
    if not coords:
        raise invalid(where, "give points or a box")
    return model_coords(coords, height, width, image_size), np.array(labels, np.int32)


def model_coords(points, height: int, width: int, image_size: int) -> np.ndarray:
    """Points in the frame -> the model frame."""
    return sam2_transforms.to_model_coords(np.array(points, np.float32), (height, width), image_size)
