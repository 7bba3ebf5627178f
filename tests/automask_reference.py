"""PyTorch reference of automatic mask generation with transformers' Sam2Model (eager).

Written from the semantics of transformers' mask-generation pipeline and its image-processor
helpers (`generate_crop_boxes`, `filter_masks`, `post_process_for_mask_generation`) and of SAM's
automatic mask generator, independently of segserve.common.automask. Those helpers cannot be
imported here (their modules import torchvision, which cannot be installed beside this torch), so
each step is restated in torch:

- crop boxes per layer (2**i x 2**i crops with the pipeline's overlap rule), a centred point grid
  per layer scaled by crop_n_points_downscale_factor**i;
- each crop encoded on its own (`get_image_embeddings` on the crop's pixels), prompts of one point
  each (multimask), `points_per_batch` per forward;
- `filter_masks`: logits upscaled to the crop size, predicted-IoU and stability filters (stability
  on logits), binarise, boxes, drop boxes near a crop edge that is not an image edge, pad to the image;
- NMS: within a crop by predicted IoU at box_nms_thresh, across crops preferring smaller crops at
  crop_nms_thresh (SAM's generator; with one crop the pipeline's single NMS is the same thing);
- small-region clean-up with scikit-image's connected components.

Points go into the model frame per axis (SAM 2 resizes to a square); transformers' helper scales
by the longest side, which is SAM 1's frame, so that one step deliberately differs.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from skimage import measure

from tests.sam2_reference import pixel_values

DEFAULTS = dict(points_per_side=32, points_per_batch=64, pred_iou_thresh=0.8, stability_score_thresh=0.95,
                stability_score_offset=1.0, box_nms_thresh=0.7, crop_n_layers=0, crop_nms_thresh=0.7,
                crop_overlap_ratio=512 / 1500, crop_n_points_downscale_factor=1, min_mask_region_area=0,
                mask_threshold=0.0)


def crops(height: int, width: int, n_layers: int, overlap_ratio: float) -> list[tuple[list[int], int]]:
    boxes = [([0, 0, width, height], 0)]
    for layer in range(1, n_layers + 1):
        n = 2 ** layer
        overlap = int(overlap_ratio * min(height, width) * 2 / n)
        cw = math.ceil((overlap * (n - 1) + width) / n)
        ch = math.ceil((overlap * (n - 1) + height) / n)
        for i in range(n):
            for j in range(n):
                x0, y0 = int((cw - overlap) * i), int((ch - overlap) * j)
                boxes.append(([x0, y0, min(x0 + cw, width), min(y0 + ch, height)], layer))
    return boxes


def grid(n: int) -> torch.Tensor:
    side = torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n, dtype=torch.float64)
    ys, xs = torch.meshgrid(side, side, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """[N, H, W] bool -> XYXY (inclusive), zeros for empty masks."""
    out = torch.zeros(masks.shape[0], 4)
    for i, m in enumerate(masks):
        ys, xs = torch.where(m)
        if len(xs):
            out[i] = torch.tensor([xs.min(), ys.min(), xs.max(), ys.max()], dtype=torch.float32)
    return out


def nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    boxes = boxes.double()
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    alive = torch.ones(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if not alive[i]:
            continue
        keep.append(i)
        lt = torch.maximum(boxes[i, :2], boxes[:, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[:, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[:, 0] * wh[:, 1]
        alive &= ~(inter / (area[i] + area - inter) > thresh)
    return torch.tensor(keep, dtype=torch.long)


def _clean(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    changed = False
    background = measure.label(~mask, connectivity=2)
    sizes = np.bincount(background.ravel())
    small_holes = [k for k in range(1, len(sizes)) if sizes[k] < min_area]
    if small_holes:
        mask = mask | np.isin(background, small_holes)
        changed = True
    islands = measure.label(mask, connectivity=2)
    sizes = np.bincount(islands.ravel())
    if len(sizes) > 1 and (sizes[1:] < min_area).any():
        big = [k for k in range(1, len(sizes)) if sizes[k] >= min_area] or [int(np.argmax(sizes[1:])) + 1]
        mask = np.isin(islands, big)
        changed = True
    return mask, changed


@torch.no_grad()
def generate(model, rgb: np.ndarray, **overrides) -> list[dict]:
    """-> [{"mask": bool [H, W], "predicted_iou", "stability_score", "bbox" (XYXY), "point", "crop_box"}]."""
    p = {**DEFAULTS, **overrides}
    height, width = rgb.shape[:2]
    t, off = p["mask_threshold"], p["stability_score_offset"]
    kept_all = []
    crop_list = crops(height, width, p["crop_n_layers"], p["crop_overlap_ratio"])
    for box, layer in crop_list:
        x0, y0, x1, y1 = box
        cw, ch = x1 - x0, y1 - y0
        embeddings = model.get_image_embeddings(pixel_values(np.ascontiguousarray(rgb[y0:y1, x0:x1])))
        points = grid(int(p["points_per_side"] / p["crop_n_points_downscale_factor"] ** layer)) * torch.tensor(
            [cw, ch], dtype=torch.float64)
        masks, ious, stabs, boxes, pts = [], [], [], [], []
        for s in range(0, len(points), p["points_per_batch"]):
            batch = points[s:s + p["points_per_batch"]]
            model_xy = (batch * torch.tensor([1024.0 / cw, 1024.0 / ch], dtype=torch.float64)).float()
            out = model(image_embeddings=embeddings, input_points=model_xy[None, :, None, :],
                        input_labels=torch.ones(1, len(batch), 1, dtype=torch.long), multimask_output=True)
            logits = F.interpolate(out.pred_masks[0], (ch, cw), mode="bilinear", align_corners=False).flatten(0, 1)
            iou = out.iou_scores[0].flatten()
            point = batch.repeat_interleave(out.iou_scores.shape[-1], dim=0)
            stability = (logits > t + off).sum((1, 2)).double() / (logits > t - off).sum((1, 2)).double()
            keep = torch.ones(len(iou), dtype=torch.bool)
            if p["pred_iou_thresh"] > 0:
                keep &= iou > p["pred_iou_thresh"]
            if p["stability_score_thresh"] > 0:
                keep &= stability > p["stability_score_thresh"]
            binary = logits[keep] > t
            b = mask_boxes(binary) + torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
            near_crop = (b - torch.tensor(box, dtype=torch.float32)).abs() <= 20
            near_image = (b - torch.tensor([0, 0, width, height], dtype=torch.float32)).abs() <= 20
            edge_ok = ~(near_crop & ~near_image).any(dim=1)
            padded = F.pad(binary[edge_ok], (x0, width - x1, y0, height - y1))
            masks.append(padded)
            ious.append(iou[keep][edge_ok])
            stabs.append(stability[keep][edge_ok])
            boxes.append(b[edge_ok])
            pts.append(point[keep][edge_ok] + torch.tensor([x0, y0], dtype=torch.float64))
        masks, ious, stabs, boxes, pts = (torch.cat(v) for v in (masks, ious, stabs, boxes, pts))
        keep = nms(boxes, ious, p["box_nms_thresh"])
        for i in keep.tolist():
            kept_all.append({"mask": masks[i].numpy(), "predicted_iou": float(ious[i]),
                             "stability_score": float(stabs[i]), "bbox": boxes[i].tolist(),
                             "point": pts[i].tolist(), "crop_box": box})
    if len(crop_list) > 1 and kept_all:
        boxes = torch.tensor([r["bbox"] for r in kept_all])
        area = torch.tensor([(r["crop_box"][2] - r["crop_box"][0]) * (r["crop_box"][3] - r["crop_box"][1])
                             for r in kept_all], dtype=torch.float64)
        kept_all = [kept_all[i] for i in nms(boxes, 1.0 / area, p["crop_nms_thresh"]).tolist()]
    if p["min_mask_region_area"] > 0 and kept_all:
        cleaned = [_clean(r["mask"], p["min_mask_region_area"]) for r in kept_all]
        boxes = mask_boxes(torch.from_numpy(np.stack([m for m, _ in cleaned])))
        scores = torch.tensor([0.0 if changed else 1.0 for _, changed in cleaned])
        out = []
        for i in nms(boxes, scores, p["box_nms_thresh"]).tolist():
            record = dict(kept_all[i])
            if cleaned[i][1]:
                record["mask"], record["bbox"] = cleaned[i][0], boxes[i].tolist()
            out.append(record)
        kept_all = out
    return kept_all
