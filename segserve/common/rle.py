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


def runs(counts: str) -> list[int]:
    """Run lengths of COCO's compressed counts string (pycocotools' `rleFrString`), refusing what
    pycocotools would silently misread (it decodes "" or a truncated string to garbage)."""
    lengths: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                raise ValueError("the counts string ends inside a number")
            code = ord(counts[pos]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {counts[pos]!r} is not in COCO's counts alphabet")
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            pos += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        if len(lengths) > 2:
            value += lengths[-2]
        if value < 0:
            raise ValueError("a run length is negative")
        lengths.append(value)
    return lengths
