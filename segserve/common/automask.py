"""Automatic mask generation ("segment everything") on SAM 2 decoder outputs, without torch.

The algorithm of SAM's automatic mask generator, written for arrays that come back from the served
decoder:

1. Crops: layer 0 is the whole image; layer i (1..crop_n_layers) cuts it into 2**i x 2**i crops
   that overlap by `crop_overlap_ratio * short_side * 2 / 2**i` pixels. Each crop is encoded on its
   own (its own image session), so its pixels fill the model's 1024x1024 frame.
2. Points: a regular grid of `points_per_side / crop_n_points_downscale_factor**i` points per side,
   centred in its cells, scaled to the crop's pixels. Each point is one prompt (label 1), decoded
   with multimask output, `points_per_batch` prompts per decoder call.
3. Per batch: keep masks whose predicted IoU > `pred_iou_thresh`; upscale the kept low-res logits
   to the crop's size (bilinear, as SAM 2's post-processing), keep those whose stability score
   (|logits > t + offset| / |logits > t - offset|, t = mask_threshold) > `stability_score_thresh`;
   binarise; drop masks whose box touches a crop edge that is not an image edge (20 px); paste into
   the full image and COCO-RLE encode.
4. Per crop: greedy box NMS by predicted IoU at `box_nms_thresh`. Across crops (when there are
   several): box NMS at `crop_nms_thresh` preferring masks from smaller crops.
5. Optionally (`min_mask_region_area` > 0): fill holes and drop islands smaller than that, then box
   NMS at `box_nms_thresh` preferring masks that did not change.

Records have SAM's layout: segmentation (COCO RLE), area, bbox (XYWH, with SAM's `w = x1 - x0`
from an inclusive XYXY box), predicted_iou, point_coords [[x, y]], stability_score, crop_box
(XYWH). Ties in NMS are broken by order of arrival (stable sort), so results are deterministic.

Points are scaled into the model frame per axis (x * 1024 / crop_width, y * 1024 / crop_height):
SAM 2 resizes every image to a square, which is also what Meta's SAM 2 generator does.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import product

import numpy as np
from scipy import ndimage

from segserve.common import rle as rle_codec

EDGE_ATOL = 20.0


@dataclass
class AutoMaskParams:
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Crop:
    box: tuple[int, int, int, int]  # XYXY in the full image
    layer: int
    points: np.ndarray  # [N, 2] float, pixels of the crop

    @property
    def size(self) -> tuple[int, int]:  # (height, width)
        return self.box[3] - self.box[1], self.box[2] - self.box[0]


def point_grid(n_per_side: int) -> np.ndarray:
    """[n*n, 2] points in [0, 1]^2, centred in their cells, x varying fastest."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def crop_boxes(height: int, width: int, n_layers: int, overlap_ratio: float) -> list[tuple[tuple[int, int, int, int], int]]:
    """[(XYXY box, layer)]: the whole image, then 4**i overlapping crops for layer i."""
    out = [((0, 0, width, height), 0)]
    short = min(height, width)
    for layer in range(1, n_layers + 1):
        per_side = 2 ** layer
        overlap = int(overlap_ratio * short * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + width) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + height) / per_side))
        lefts = [int((crop_w - overlap) * i) for i in range(per_side)]
        tops = [int((crop_h - overlap) * i) for i in range(per_side)]
        for left, top in product(lefts, tops):
            if left < width and top < height:  # a few-pixel image can leave crops past its edge
                out.append(((left, top, min(left + crop_w, width), min(top + crop_h, height)), layer))
    return out


def points_per_layer(params: AutoMaskParams) -> list[int]:
    return [int(params.points_per_side / (params.crop_n_points_downscale_factor ** i))
            for i in range(params.crop_n_layers + 1)]


def plan(height: int, width: int, params: AutoMaskParams) -> list[Crop]:
    sides = points_per_layer(params)
    crops = []
    for box, layer in crop_boxes(height, width, params.crop_n_layers, params.crop_overlap_ratio):
        crop_w, crop_h = box[2] - box[0], box[3] - box[1]
        crops.append(Crop(box, layer, point_grid(sides[layer]) * np.array([crop_w, crop_h], dtype=np.float64)))
    return crops


def total_points(params: AutoMaskParams) -> int:
    """Prompts decoded for these parameters (independent of the image size)."""
    return sum((4 ** i) * n * n for i, n in enumerate(points_per_layer(params)))


def _axis_weights(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of bilinear resizing (align_corners=False), in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = (src - low.astype(np.float32)).astype(np.float32)
    return low, high, frac


def upscale(logits: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """[N, h, w] -> [N, H, W] bilinear (torch's `interpolate(..., "bilinear", align_corners=False)`):
    four taps per pixel, columns then rows, as torch's CPU kernel weighs them; cheaper than the
    matrix form in sam2_transforms when many masks go to a large size."""
    height, width = size_hw
    logits = np.asarray(logits, dtype=np.float32)
    c_low, c_high, c_frac = _axis_weights(width, logits.shape[-1])
    r_low, r_high, r_frac = _axis_weights(height, logits.shape[-2])
    cols = logits[..., c_low] * (np.float32(1) - c_frac) + logits[..., c_high] * c_frac  # [N, h, W]
    r_frac = r_frac[:, None]
    return cols[..., r_low, :] * (np.float32(1) - r_frac) + cols[..., r_high, :] * r_frac


def stability_scores(logits: np.ndarray, threshold: float, offset: float) -> np.ndarray:
    """[N, H, W] logits -> [N]: IoU of the masks thresholded at t + offset and t - offset."""
    inter = (logits > (threshold + offset)).sum(axis=(-1, -2), dtype=np.int64)
    union = (logits > (threshold - offset)).sum(axis=(-1, -2), dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """[N, H, W] bool -> [N, 4] XYXY with inclusive max coordinates; [0, 0, 0, 0] when empty."""
    boxes = np.zeros((len(masks), 4), dtype=np.float64)
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if len(rows) and len(cols):
            boxes[i] = (cols[0], rows[0], cols[-1], rows[-1])
    return boxes


def near_crop_edge(boxes: np.ndarray, crop_box, image_box) -> np.ndarray:
    """Boxes (full-image XYXY) within EDGE_ATOL of a crop edge that is not also an image edge."""
    crop = np.asarray(crop_box, dtype=np.float64)[None]
    image = np.asarray(image_box, dtype=np.float64)[None]
    at_crop = np.abs(boxes - crop) <= EDGE_ATOL
    at_image = np.abs(boxes - image) <= EDGE_ATOL
    return np.any(at_crop & ~at_image, axis=1)


def box_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy NMS (IoU > thresh suppressed), highest score first, ties in input order."""
    if len(boxes) == 0:
        return np.zeros((0,), dtype=np.int64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    boxes = np.asarray(boxes, dtype=np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for idx in order:
        if suppressed[idx]:
            continue
        keep.append(idx)
        x0 = np.maximum(boxes[idx, 0], boxes[:, 0])
        y0 = np.maximum(boxes[idx, 1], boxes[:, 1])
        x1 = np.minimum(boxes[idx, 2], boxes[:, 2])
        y1 = np.minimum(boxes[idx, 3], boxes[:, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (areas[idx] + areas - inter)
        suppressed |= iou > thresh
    return np.array(keep, dtype=np.int64)


@dataclass
class Candidates:
    """Masks that passed the per-batch filters, in full-image coordinates."""
    rles: list[dict] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # XYXY inclusive
    iou: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    stability: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    crop_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # XYXY

    def __len__(self) -> int:
        return len(self.rles)

    def extend(self, other: "Candidates") -> None:
        self.rles.extend(other.rles)
        for name in ("boxes", "iou", "stability", "points", "crop_boxes"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))

    def select(self, keep: np.ndarray) -> "Candidates":
        keep = np.asarray(keep, dtype=np.int64)
        return Candidates([self.rles[i] for i in keep], self.boxes[keep], self.iou[keep], self.stability[keep],
                          self.points[keep], self.crop_boxes[keep])


def filter_batch(low_res: np.ndarray, iou: np.ndarray, points: np.ndarray, crop: Crop,
                 image_hw: tuple[int, int], params: AutoMaskParams, chunk: int = 8) -> Candidates:
    """Decoder outputs for one batch of prompts of one crop -> the masks that pass the filters.

    low_res [P, K, h, w] logits, iou [P, K], points [P, 2] (crop pixels)."""
    prompts, k = iou.shape
    logits = low_res.reshape(prompts * k, *low_res.shape[-2:])
    scores = iou.reshape(-1).astype(np.float64)
    point_of = np.repeat(points, k, axis=0)
    index = np.arange(len(scores))
    if params.pred_iou_thresh > 0.0:
        index = index[scores[index] > params.pred_iou_thresh]
    crop_hw = crop.size
    height, width = image_hw
    left, top, right, bottom = crop.box
    out = Candidates()
    for start in range(0, len(index), chunk):
        part = index[start:start + chunk]
        full = upscale(logits[part], crop_hw)
        stability = stability_scores(full, params.mask_threshold, params.stability_score_offset)
        keep = np.ones(len(part), dtype=bool)
        if params.stability_score_thresh > 0.0:
            keep &= stability > params.stability_score_thresh
        if not keep.any():
            continue
        masks = full[keep] > params.mask_threshold
        part, stability = part[keep], stability[keep]
        boxes = masks_to_boxes(masks) + np.array([left, top, left, top], dtype=np.float64)
        keep = ~near_crop_edge(boxes, crop.box, (0, 0, width, height))
        if not keep.any():
            continue
        masks, part, stability, boxes = masks[keep], part[keep], stability[keep], boxes[keep]
        rles = []
        for mask in masks:
            if (left, top, right, bottom) != (0, 0, width, height):
                padded = np.zeros((height, width), dtype=bool)
                padded[top:bottom, left:right] = mask
                mask = padded
            rles.append(rle_codec.encode(mask))
        out.extend(Candidates(rles, boxes, scores[part], np.nan_to_num(stability, nan=0.0),
                              point_of[part] + np.array([left, top], dtype=np.float64),
                              np.tile(np.array(crop.box, dtype=np.float64), (len(part), 1))))
    return out


def crop_nms(candidates: Candidates, params: AutoMaskParams) -> Candidates:
    """Within one crop: box NMS by predicted IoU."""
    return candidates.select(box_nms(candidates.boxes, candidates.iou, params.box_nms_thresh))


def merge_crops(per_crop: list[Candidates], params: AutoMaskParams) -> Candidates:
    """Across crops: box NMS preferring masks from smaller crops."""
    merged = Candidates()
    for candidates in per_crop:
        merged.extend(candidates)
    if len(per_crop) > 1 and len(merged):
        cb = merged.crop_boxes
        scores = 1.0 / ((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1]))
        merged = merged.select(box_nms(merged.boxes, scores, params.crop_nms_thresh))
    return merged


def remove_small_regions(mask: np.ndarray, min_area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes ("holes") or drop islands ("islands") smaller than min_area (8-connectivity).
    Islands: when every island is small, the largest one stays."""
    holes = mode == "holes"
    working = ~mask if holes else mask
    labels, count = ndimage.label(working, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return mask, False
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    small = np.flatnonzero(sizes < min_area) + 1
    if len(small) == 0:
        return mask, False
    if holes:
        return mask | np.isin(labels, small), True
    large = np.flatnonzero(sizes >= min_area) + 1
    if len(large) == 0:
        large = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, large), True


def postprocess_small_regions(candidates: Candidates, min_area: int, nms_thresh: float) -> Candidates:
    if len(candidates) == 0:
        return candidates
    masks, unchanged = [], []
    for rle in candidates.rles:
        mask = rle_codec.decode(rle)
        mask, changed_holes = remove_small_regions(mask, min_area, "holes")
        mask, changed_islands = remove_small_regions(mask, min_area, "islands")
        masks.append(mask)
        unchanged.append(0.0 if (changed_holes or changed_islands) else 1.0)
    boxes = masks_to_boxes(np.stack(masks))
    keep = box_nms(boxes, np.array(unchanged), nms_thresh)
    out = candidates.select(keep)
    for j, i in enumerate(keep):
        if unchanged[i] == 0.0:
            out.rles[j] = rle_codec.encode(masks[i])
            out.boxes[j] = boxes[i]
    return out


def records(candidates: Candidates, max_masks: int = 0) -> list[dict]:
    """SAM-style records; with max_masks > 0, the best max_masks by predicted IoU (stable)."""
    order = np.arange(len(candidates))
    if max_masks and len(order) > max_masks:
        order = np.sort(np.argsort(-candidates.iou, kind="stable")[:max_masks])
    out = []
    for i in order:
        x0, y0, x1, y1 = (float(v) for v in candidates.boxes[i])
        cx0, cy0, cx1, cy1 = (float(v) for v in candidates.crop_boxes[i])
        out.append({
            "segmentation": candidates.rles[i],
            "area": rle_codec.area(candidates.rles[i]),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "predicted_iou": float(candidates.iou[i]),
            "point_coords": [[float(v) for v in candidates.points[i]]],
            "stability_score": float(candidates.stability[i]),
            "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
        })
    return out
