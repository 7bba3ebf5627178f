"""The PyTorch reference for SAM 2 image prompts: SAM 2's transform and transformers' Sam2Model.

Written from the reference definitions, independently of segserve.common: the image goes through
torch's antialiased bilinear resize (what SAM 2's `Resize` does on float tensors), prompts are
passed the way transformers documents them, and masks are upscaled like `post_process_masks`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def pixel_values(rgb: np.ndarray, size: int = 1024) -> torch.Tensor:
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - MEAN) / STD


def predict(model, rgb, points=None, labels=None, boxes=None, mask_input=None, multimask=False, size=1024):
    """-> low-res logits [P, K, 256, 256], iou [P, K], binary masks [P, K, H, W] at the original size."""
    height, width = rgb.shape[:2]
    scale = torch.tensor([size / width, size / height])
    kwargs = {}
    n_objects = len(boxes) if boxes is not None and len(boxes) else 1
    if points is not None and len(points):
        pts = torch.tensor(np.asarray(points, np.float32)) * scale
        kwargs["input_points"] = pts[None, None].repeat(1, n_objects, 1, 1)
        kwargs["input_labels"] = torch.tensor(np.asarray(labels))[None, None].repeat(1, n_objects, 1)
    if boxes is not None and len(boxes):
        b = torch.tensor(np.asarray(boxes, np.float32)).reshape(-1, 2, 2) * scale
        kwargs["input_boxes"] = b.reshape(1, -1, 4)
    if mask_input is not None:
        kwargs["input_masks"] = torch.from_numpy(np.asarray(mask_input, np.float32)).reshape(1, 1, 256, 256)
    with torch.no_grad():
        out = model(pixel_values=pixel_values(rgb, size), multimask_output=multimask, **kwargs)
    low_res = out.pred_masks[0]
    masks = F.interpolate(low_res, (height, width), mode="bilinear", align_corners=False) > 0.0
    return low_res.numpy(), out.iou_scores[0].numpy(), masks.numpy()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union; two empty masks have none (an error, not a perfect match)."""
    union = np.logical_or(a, b).sum()
    if union == 0:
        raise ValueError("IoU of two empty masks: nothing was compared")
    return float(np.logical_and(a, b).sum() / union)
