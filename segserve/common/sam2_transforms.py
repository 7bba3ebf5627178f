"""SAM 2 pre/post-processing shared by the orchestrator, the Triton models and the tests.

No torch here: these run inside Triton Python-backend models. The reference is SAM 2's own
transform (float image in [0, 1], bilinear resize to 1024x1024 with antialiasing, ImageNet
normalisation) and transformers' `post_process_masks` (bilinear upscale of 256x256 logits straight
to the original size, threshold at 0). Pillow's float ("F") resize is the same triangle filter as
torch's antialiased bilinear; the mask upscale is written as two interpolation matrices.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

IMAGE_SIZE = 1024
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PAD_LABEL = -1
# Not a point: pads a prompt to a batch's common point count; the decoder graph leaves it out of
# attention, so a padded prompt gives what it gives alone (`segserve.export.sam2`).
ABSENT_LABEL = -10
BOX_LABELS = (2, 3)


def preprocess(rgb: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> normalised float32 [1, 3, size, size]."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {rgb.shape}")
    channels = []
    for c in range(3):
        plane = Image.fromarray(rgb[:, :, c].astype(np.float32) / np.float32(255.0))
        resized = np.asarray(plane.resize((size, size), Image.BILINEAR), dtype=np.float32)
        channels.append((resized - MEAN[c]) / STD[c])
    return np.stack(channels)[None]


def to_model_coords(xy: np.ndarray, original_hw: tuple[int, int], size: int = IMAGE_SIZE) -> np.ndarray:
    """Pixel coordinates in the original image -> the 1024x1024 model frame."""
    height, width = original_hw
    scale = np.array([size / width, size / height], dtype=np.float32)
    return (np.asarray(xy, dtype=np.float32).reshape(-1, 2) * scale).astype(np.float32)


def build_prompts(points: np.ndarray | None, labels: np.ndarray | None, boxes: np.ndarray | None,
                  original_hw: tuple[int, int], size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Points [N,2] + labels [N] and/or boxes [B,4] (original pixels) -> decoder point_coords
    [P, M, 2] and point_labels [P, M]: one prompt per box (the points join each box), or a single
    prompt of points; boxes become corners labelled 2/3, and each prompt ends with a pad point."""
    points = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32).reshape(-1, 2)
    labels = np.zeros((0,), np.int32) if labels is None else np.asarray(labels, np.int32).reshape(-1)
    boxes = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
    clicks = to_model_coords(points, original_hw, size)
    pad_xy, pad_label = np.zeros((1, 2), np.float32), np.array([PAD_LABEL], np.int32)
    if len(boxes) == 0:
        return np.concatenate([clicks, pad_xy])[None], np.concatenate([labels, pad_label])[None]
    coords, out_labels = [], []
    for box in boxes:
        corners = to_model_coords(box.reshape(2, 2), original_hw, size)
        coords.append(np.concatenate([clicks, corners, pad_xy]))
        out_labels.append(np.concatenate([labels, np.array(BOX_LABELS, np.int32), pad_label]))
    return np.stack(coords), np.stack(out_labels)


@lru_cache(maxsize=64)
def _interp_matrix(out_size: int, in_size: int) -> np.ndarray:
    """Rows of torch's bilinear interpolation (align_corners=False, no antialias) as a matrix."""
    # float32 arithmetic, as torch's CPU kernel does, so thresholded masks agree pixel for pixel.
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low.astype(np.float32)
    matrix = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), (1.0 - frac).astype(np.float32))
    np.add.at(matrix, (rows, high), frac.astype(np.float32))
    return matrix


def upscale_logits(low_res: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
    """Logits [..., h, w] -> [..., H, W] at the original size."""
    height, width = original_hw
    rows = _interp_matrix(height, low_res.shape[-2])
    cols = _interp_matrix(width, low_res.shape[-1])
    return np.matmul(np.matmul(rows, low_res), cols.T)


def masks_from_logits(low_res: np.ndarray, original_hw: tuple[int, int], threshold: float = 0.0) -> np.ndarray:
    return upscale_logits(low_res, original_hw) > threshold



@lru_cache(maxsize=64)
def _antialias_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps of torch's bilinear interpolation with `antialias=True` (align_corners=False): aten's
    `_compute_weights_aa` in float32 (a triangle filter widened by the scale when downsampling,
    weights renormalised at the borders). Returns source indices and weights, both [out, taps]."""
    f = np.float32
    scale = f(in_size) / f(out_size)
    support = scale if scale >= 1 else f(1)
    invscale = f(1) / scale if scale >= 1 else f(1)
    rows = []
    for i in range(out_size):
        center = scale * f(i + 0.5)
        first = max(int(center - support + f(0.5)), 0)
        last = min(int(center + support + f(0.5)), in_size)
        x = np.abs((np.arange(first, last, dtype=np.float32) - center + f(0.5)) * invscale)
        weights = np.where(x < 1, f(1) - x, f(0)).astype(np.float32)
        total = np.cumsum(weights, dtype=np.float32)[-1]
        rows.append((first, weights / total if total else weights))
    taps = max(len(w) for _, w in rows)
    index = np.zeros((out_size, taps), np.int64)
    weight = np.zeros((out_size, taps), np.float32)
    for i, (first, w) in enumerate(rows):
        index[i] = np.minimum(first + np.arange(taps), in_size - 1)
        weight[i, :len(w)] = w
    return index, weight


def _resize_antialias_axis(x: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    index, weight = _antialias_taps(out_size, x.shape[axis])
    x = np.moveaxis(x, axis, -1)
    out = x[..., index[:, 0]] * weight[:, 0]
    for j in range(1, index.shape[1]):  # tap by tap in float32, as the CPU kernel accumulates
        out = out + x[..., index[:, j]] * weight[:, j]
    return np.moveaxis(out.astype(np.float32), -1, axis)


def mask_to_model(mask: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """A binary mask at the frame size [H, W] -> the float {0, 1} mask [size, size] that
    transformers' `Sam2VideoProcessor.process_new_mask_for_video_frame` stores: antialiased
    bilinear resize (width, then height, as torch's separable kernel), then `>= 0.5`; a mask
    already at size x size is kept as it is."""
    mask = np.asarray(mask).astype(np.float32)
    if mask.shape == (size, size):
        return mask
    resized = _resize_antialias_axis(_resize_antialias_axis(mask, size, 1), size, 0)
    return (resized >= 0.5).astype(np.float32)
