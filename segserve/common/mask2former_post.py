"""Mask2Former pre- and post-processing in numpy (no torch: this runs inside Triton Python models).

Re-implements what `transformers`' `Mask2FormerImageProcessor` / `Mask2FormerImageProcessorPil` do
around the exported graph (`segserve.export.mask2former`), and is tested against them.

Image size. The graph is exported at one fixed size S x S, so `preprocess` resizes every image to
exactly S x S (aspect ratio not kept), the same as the processor with
`size={"height": S, "width": S}` (PIL bilinear on uint8, then rescale by 1/255, then normalise).
Results come back at the original size by passing `target_sizes=[(height, width), ...]` (as returned
by `preprocess`): because nothing was padded or cropped, resizing the S x S prediction to the
original size is the exact inverse mapping. The processor's own default (shortest edge 800 with
batch padding) is not usable with a fixed-size graph, and its post-processing ignores the padding.

Post-processing follows the processor step by step: mask logits are first upsampled (bilinear,
align_corners=False, as torch.nn.functional.interpolate) to `mask_size` x `mask_size`, 384 by
default because the processor always does that, then to the target size. Differences from the
processor, all deliberate:
- Work is done in row chunks at the target size, so memory stays bounded for large images
  (the processor materialises [queries or classes, H, W] float tensors at full size).
- Panoptic: segment ids are numbered 1, 2, ... without gaps and never collide (the processor reuses
  the counter of a fused label, so a later segment can get an id already in use); one
  `segments_info` entry per segment (a fused segment gets the highest score of its queries; the
  processor lists one entry per query); the map is 0 where no segment is, also when no query
  passes `threshold` (the processor returns -1 then).
- Instance: instances are ordered by score, best first (the processor keeps torch's unsorted top-k
  order); in the label map a higher-scored instance wins where instances overlap; `mask_threshold`
  binarises the masks (the processor ignores it and always uses 0.5, which is our default);
  `return_binary_maps` with no instance gives an empty [0, H, W] array (the processor returns the
  -1 label map).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

HF_MASK_SIZE = 384  # the processor's fixed intermediate size for mask logits
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
             "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
_CHUNK_BYTES = 32 << 20  # working-set target for one row chunk of target-size float data

Size = tuple[int, int]


# ----------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: int
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    rescale_factor: float = 1 / 255
    resample: str = "bilinear"

    @classmethod
    def from_model_config(cls, model_config: dict[str, Any]) -> "PreprocessConfig":
        """From the `model_config` the exporter stores in the manifest record."""
        pre = model_config.get("preprocess", {})
        resize = pre.get("resize", {})
        return cls(
            image_size=int(model_config["image_size"]),
            image_mean=tuple(pre.get("image_mean", IMAGENET_MEAN)),
            image_std=tuple(pre.get("image_std", IMAGENET_STD)),
            rescale_factor=float(pre.get("rescale_factor", 1 / 255)),
            resample=resize.get("resample", "bilinear"),
        )


def to_rgb_array(image: Any) -> np.ndarray:
    """PIL image or uint8 array (H,W), (H,W,1), (H,W,3) or (H,W,4) -> uint8 RGB [H,W,3]."""
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape (H, W[, 1|3|4]), got {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def preprocess_image(image: Any, config: PreprocessConfig) -> tuple[np.ndarray, Size]:
    """One image -> (pixel_values float32 [3,S,S], original (height, width))."""
    rgb = to_rgb_array(image)
    size = config.image_size
    resized = np.asarray(Image.fromarray(rgb).resize((size, size), _RESAMPLE[config.resample]))
    # Same arithmetic as the processor: rescale in float64, cast to float32, normalise in float32.
    pixels = (resized.astype(np.float64) * config.rescale_factor).astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)), (rgb.shape[0], rgb.shape[1])


def preprocess(images: Iterable[Any], config: PreprocessConfig) -> tuple[np.ndarray, list[Size]]:
    """Images -> (pixel_values float32 [B,3,S,S], original sizes to pass as `target_sizes`)."""
    processed = [preprocess_image(image, config) for image in images]
    if not processed:
        raise ValueError("no images")
    return np.stack([p for p, _ in processed]), [s for _, s in processed]


# ----------------------------------------------------------------------------- resizing


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's bilinear resize (align_corners=False, no antialias),
    computed in float32 the way torch's CPU kernel does."""
    if in_size == out_size:
        index = np.arange(out_size)
        return index, index, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    # float32 scale, source index rounded once to float32 (torch's kernel evaluates it as one fused
    # multiply-add); float64 here reproduces that single rounding.
    source = (np.float64(scale) * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    source = np.maximum(source, np.float32(0.0))
    index0 = source.astype(np.int64)
    index1 = np.minimum(index0 + 1, in_size - 1)
    weight1 = np.clip(source - index0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return index0, index1, (np.float32(1.0) - weight1).astype(np.float32), weight1


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of torch's 'nearest' resize (floor(dst * in/out) in float32)."""
    if in_size == out_size:
        return np.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64), in_size - 1)


class _BilinearPlan:
    """Bilinear resize of [..., H, W] arrays to (h, w), computable one block of output rows at a time."""

    def __init__(self, in_size: Size, out_size: Size):
        self.out_size = out_size
        self.rows = _linear_taps(in_size[0], out_size[0])
        self.cols = _linear_taps(in_size[1], out_size[1])

    def rows_block(self, x: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Output rows [start, stop): [..., stop - start, w]."""
        r0, r1, rw0, rw1 = (a[start:stop] for a in self.rows)
        c0, c1, cw0, cw1 = self.cols
        low, high = int(r0[0]), int(r1[-1]) + 1  # source rows this block reads (indices are monotonic)
        source = x[..., low:high, :]
        # Along the width first, then along the height, each as w0 * a + w1 * b: torch's arithmetic.
        # np.take plus in-place updates is several times faster than fancy indexing here.
        wide = np.take(source, c0, axis=-1)
        wide *= cw0
        other = np.take(source, c1, axis=-1)
        other *= cw1
        wide += other
        out = np.take(wide, r0 - low, axis=-2)
        out *= rw0[:, None]
        other = np.take(wide, r1 - low, axis=-2)
        other *= rw1[:, None]
        out += other
        return out

    def blocks(self, x: np.ndarray) -> Iterable[tuple[int, int, np.ndarray]]:
        height, width = self.out_size
        leading = int(np.prod(x.shape[:-2], dtype=np.int64)) or 1
        step = max(1, _CHUNK_BYTES // max(1, 4 * leading * width * 3))
        for start in range(0, height, step):
            stop = min(height, start + step)
            yield start, stop, self.rows_block(x, start, stop)


def resize_bilinear(x: np.ndarray, size: Size) -> np.ndarray:
    """torch.nn.functional.interpolate(mode='bilinear', align_corners=False) on [..., H, W]."""
    x = np.asarray(x, dtype=np.float32)
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return _BilinearPlan(x.shape[-2:], size).rows_block(x, 0, size[0])


def resize_nearest(x: np.ndarray, size: Size) -> np.ndarray:
    """torch.nn.functional.interpolate(mode='nearest') on [..., H, W]."""
    rows = _nearest_index(x.shape[-2], int(size[0]))
    cols = _nearest_index(x.shape[-1], int(size[1]))
    return x[..., rows[:, None], cols[None, :]]


def sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.negative(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += np.float32(1.0)
    return np.reciprocal(out, out=out)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return (shifted / shifted.sum(axis=axis, keepdims=True)).astype(np.float32)


def _mask_logits(masks_queries_logits: np.ndarray, mask_size: int | None) -> np.ndarray:
    masks = np.asarray(masks_queries_logits, dtype=np.float32)
    if mask_size is None:
        return masks
    return resize_bilinear(masks, (mask_size, mask_size))


def _target_sizes(target_sizes: Sequence[Size] | None, batch: int, default: Size) -> list[Size]:
    if target_sizes is None:
        return [default] * batch
    if len(target_sizes) != batch:
        raise ValueError(f"{len(target_sizes)} target sizes for a batch of {batch}")
    return [(int(h), int(w)) for h, w in target_sizes]


def _check(class_queries_logits: np.ndarray, masks_queries_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes = np.asarray(class_queries_logits, dtype=np.float32)
    masks = np.asarray(masks_queries_logits, dtype=np.float32)
    if classes.ndim != 3 or masks.ndim != 4 or classes.shape[:2] != masks.shape[:2]:
        raise ValueError(f"expected class logits [B,Q,C+1] and mask logits [B,Q,H,W], got {classes.shape} "
                         f"and {masks.shape}")
    return classes, masks


# ----------------------------------------------------------------------------- semantic


def post_process_semantic_segmentation(
    class_queries_logits: np.ndarray,
    masks_queries_logits: np.ndarray,
    target_sizes: Sequence[Size] | None = None,
    mask_size: int | None = HF_MASK_SIZE,
) -> list[np.ndarray]:
    """Per image an int64 [H,W] map of label ids (argmax of sum over queries of class probability
    times mask probability, without the null class)."""
    classes, masks = _check(class_queries_logits, masks_queries_logits)
    masks = _mask_logits(masks, mask_size)
    sizes = _target_sizes(target_sizes, classes.shape[0], masks.shape[-2:])
    results = []
    for probs_c, logits, size in zip(softmax(classes)[..., :-1], masks, sizes):
        queries, height, width = logits.shape
        scores = (probs_c.T @ sigmoid(logits).reshape(queries, -1)).reshape(-1, height, width)
        out = np.empty(size, dtype=np.int64)
        if (height, width) == size:
            out[:] = scores.argmax(0)
        else:
            for start, stop, block in _BilinearPlan((height, width), size).blocks(scores):
                out[start:stop] = block.argmax(0)
        results.append(out)
    return results


# ----------------------------------------------------------------------------- panoptic


@dataclass
class Segments:
    """`segmentation`: int32 [H,W] (panoptic: segment id, 0 = none; instance: id, -1 = none) or
    bool [N,H,W] binary maps; `segments_info`: dicts with id, label_id, was_fused, score."""

    segmentation: np.ndarray
    segments_info: list[dict[str, Any]] = field(default_factory=list)

    def __getitem__(self, key: str):  # dict-style access, like the processor's results
        return getattr(self, key)


def post_process_panoptic_segmentation(
    class_queries_logits: np.ndarray,
    masks_queries_logits: np.ndarray,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse: Iterable[int] | None = None,
    target_sizes: Sequence[Size] | None = None,
    mask_size: int | None = HF_MASK_SIZE,
) -> list[Segments]:
    """Queries whose best class is not the null class and whose probability exceeds `threshold`
    compete per pixel (mask probability x class probability); a query becomes a segment when it
    wins more than `overlap_mask_area_threshold` of the pixels where its weighted probability is at
    least `mask_threshold`. Labels in `label_ids_to_fuse` get one segment per image."""
    fuse = {int(label) for label in (label_ids_to_fuse or ())}
    classes, masks = _check(class_queries_logits, masks_queries_logits)
    masks = _mask_logits(masks, mask_size)
    num_labels = classes.shape[-1] - 1
    probs = softmax(classes)
    sizes = _target_sizes(target_sizes, classes.shape[0], masks.shape[-2:])
    results = []
    for item_probs, logits, size in zip(probs, masks, sizes):
        scores, labels = item_probs.max(-1), item_probs.argmax(-1)
        keep = (labels != num_labels) & (scores > threshold)
        if not keep.any():
            results.append(Segments(np.zeros(size, dtype=np.int32)))
            continue
        results.append(_panoptic_item(sigmoid(logits[keep]), scores[keep], labels[keep], size, mask_threshold,
                                      overlap_mask_area_threshold, fuse))
    return results


def _panoptic_item(mask_probs: np.ndarray, scores: np.ndarray, labels: np.ndarray, size: Size,
                   mask_threshold: float, overlap_threshold: float, fuse: set[int]) -> Segments:
    kept = mask_probs.shape[0]
    winner = np.empty(size, dtype=np.int32)
    won_area = np.zeros(kept, dtype=np.int64)
    own_area = np.zeros(kept, dtype=np.int64)
    weights = scores.astype(np.float32)[:, None, None]
    if tuple(mask_probs.shape[-2:]) == size:
        blocks: Iterable = [(0, size[0], mask_probs)]
    else:
        blocks = _BilinearPlan(mask_probs.shape[-2:], size).blocks(mask_probs)
    for start, stop, block in blocks:
        weighted = block * weights
        best = weighted.argmax(0)
        winner[start:stop] = best
        won_area += np.bincount(best.ravel(), minlength=kept)
        own_area += (weighted >= mask_threshold).reshape(kept, -1).sum(1)
    segment_of_query = np.zeros(kept, dtype=np.int32)
    info: list[dict[str, Any]] = []
    fused_segment: dict[int, dict[str, Any]] = {}
    for k in range(kept):
        if won_area[k] == 0 or own_area[k] == 0:
            continue
        # The ratio in float32, as torch divides two integer tensors: an exact tie such as
        # 1220 / 1525 = 0.8 rounds up to 0.80000001 there and passes `> 0.8`.
        if not float(np.float32(won_area[k]) / np.float32(own_area[k])) > overlap_threshold:
            continue
        label, score = int(labels[k]), round(float(scores[k]), 6)
        if label in fused_segment:
            entry = fused_segment[label]
            entry["score"] = max(entry["score"], score)
        else:
            entry = {"id": len(info) + 1, "label_id": label, "was_fused": label in fuse, "score": score}
            info.append(entry)
            if label in fuse:
                fused_segment[label] = entry
        segment_of_query[k] = entry["id"]
    return Segments(segment_of_query[winner], info)


# ----------------------------------------------------------------------------- instance


def post_process_instance_segmentation(
    class_queries_logits: np.ndarray,
    masks_queries_logits: np.ndarray,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    target_sizes: Sequence[Size] | None = None,
    return_binary_maps: bool = False,
    mask_size: int | None = HF_MASK_SIZE,
) -> list[Segments]:
    """The Q best (query, label) pairs by class probability; each pair's mask is its query's mask
    binarised at `mask_threshold` and its score is class probability x mean mask probability inside
    the mask; pairs scoring at least `threshold` with a non-empty mask at the target size are kept,
    best first. `overlap_mask_area_threshold` is accepted for API parity and unused (as upstream)."""
    del overlap_mask_area_threshold
    classes, masks = _check(class_queries_logits, masks_queries_logits)
    masks = _mask_logits(masks, mask_size)
    num_queries, num_labels = classes.shape[1], classes.shape[2] - 1
    cut = 0.0 if mask_threshold == 0.5 else float(np.log(mask_threshold / (1.0 - mask_threshold)))
    sizes = _target_sizes(target_sizes, classes.shape[0], masks.shape[-2:])
    results = []
    for item_classes, logits, size in zip(classes, masks, sizes):
        flat = softmax(item_classes)[:, :-1].reshape(-1)
        top = np.argsort(-flat, kind="stable")[:num_queries]
        queries, labels, class_scores = top // num_labels, top % num_labels, flat[top]
        binary = logits > cut  # [Q, h, w] at mask_size
        inside = binary.reshape(num_queries, -1)
        mask_scores = (sigmoid(logits).reshape(num_queries, -1) * inside).sum(1, dtype=np.float32)
        mask_scores = mask_scores / (inside.sum(1).astype(np.float32) + np.float32(1e-6))
        final = class_scores * mask_scores[queries]
        order = np.argsort(-final, kind="stable")
        chosen, maps = [], []
        for j in order:
            if final[j] < threshold:
                break
            resized = resize_nearest(binary[queries[j]], size)
            if resized.any():
                chosen.append(j)
                maps.append(resized)
        info = [{"id": i, "label_id": int(labels[j]), "was_fused": False, "score": round(float(final[j]), 6)}
                for i, j in enumerate(chosen)]
        if return_binary_maps:
            segmentation = np.stack(maps) if maps else np.zeros((0, *size), dtype=bool)
        else:
            segmentation = np.full(size, -1, dtype=np.int32)
            for i in range(len(maps) - 1, -1, -1):  # best last, so it wins where instances overlap
                segmentation[maps[i]] = i
        results.append(Segments(segmentation, info))
    return results
