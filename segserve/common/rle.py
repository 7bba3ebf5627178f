"""COCO run-length encoding of binary masks (pycocotools' compressed string form)."""
from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_mask


def encode(mask: np.ndarray) -> dict:
    """Binary mask [H, W] -> {"size": [H, W], "counts": str} exactly as COCO tools write it."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict) -> np.ndarray:
    counts = rle["counts"]
    return coco_mask.decode({"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}).astype(bool)


def area(rle: dict) -> int:
    counts = rle["counts"]
    return int(coco_mask.area({"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}))
