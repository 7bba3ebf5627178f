"""Drive transformers' `Sam2VideoModel` as its processor and propagate loop do, without the
processor (`Sam2VideoProcessor` needs torchvision's video processor, which cannot be installed
here): the same session calls `add_inputs_to_inference_session` makes for points and masks, then
`forward(frame_idx=...)` and `propagate_in_video_iterator`.

Independent of segserve (it imports nothing from it; tests/test_references.py checks): the
processor's pre- and post-processing are written here in torch from the published recipe
(SAM 2 / `Sam2VideoProcessor`): frames resized to the model's square image size (antialiased
bilinear), rescaled by 1/255 and normalised with ImageNet mean/std; clicks scaled per axis by
model size / original size; low-res logits upscaled bilinearly (align_corners=False) to the frame
size and thresholded at 0. The processor resizes uint8 frames; here the resize runs in float, as
SAM 2's own transform does (at most half a grey level apart).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# A script: ("prompt", frame, {obj_id: (points [(x, y)], labels [..]) or a bool mask [H, W]}) or
# ("propagate", start|None, reverse)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def pixel_values(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] -> [N, 3, size, size]: resize, rescale 1/255, normalise."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x * (1 / 255) - IMAGENET_MEAN) / IMAGENET_STD


def model_coords(points, hw: tuple[int, int], size: int) -> torch.Tensor:
    """Clicks (x, y) in frame pixels -> the model's square frame, scaled per axis."""
    height, width = hw
    return torch.tensor(np.asarray(points, np.float32).reshape(-1, 2)) * torch.tensor([size / width, size / height])


def masks_from_low_res(low_res: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Low-res logits [..., h, w] -> bool masks [..., H, W]: bilinear upscale to the frame size, > 0."""
    logits = torch.from_numpy(np.ascontiguousarray(low_res, dtype=np.float32))
    lead, (h, w) = logits.shape[:-2], logits.shape[-2:]
    upscaled = F.interpolate(logits.reshape(-1, 1, h, w), size=tuple(hw), mode="bilinear", align_corners=False)
    return (upscaled[:, 0] > 0.0).reshape(*lead, *hw).numpy()


def processor_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """`Sam2VideoProcessor.process_new_mask_for_video_frame` on one mask [H, W]."""
    tensor = torch.tensor(mask, dtype=torch.bool)[None, None].float()
    if tensor.shape[-2:] != (size, size):
        tensor = torch.nn.functional.interpolate(tensor, size=(size, size), align_corners=False, mode="bilinear",
                                                 antialias=True)
        tensor = (tensor >= 0.5).float()
    return tensor


def run_reference(model, frames: np.ndarray, script) -> list[tuple[int, dict[int, np.ndarray]]]:
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    size = model.image_size
    hw = frames.shape[1:3]
    pixels = pixel_values(frames, size)
    session = Sam2VideoInferenceSession(video=pixels, video_height=hw[0], video_width=hw[1], dtype=torch.float32)
    results = []

    def collect(out):
        low = out.pred_masks.float().numpy()[:, 0]
        results.append((int(out.frame_idx), {oid: masks_from_low_res(low[i], hw) for i, oid in enumerate(out.object_ids)}))

    with torch.inference_mode():
        for action in script:
            if action[0] == "prompt":
                _, frame, objects = action
                for obj_id, prompt in objects.items():
                    obj_idx = session.obj_id_to_idx(obj_id)
                    if isinstance(prompt, np.ndarray):  # a mask: `process_new_mask_for_video_frame`
                        session.add_mask_inputs(obj_idx, frame, processor_mask(prompt, size))
                        session.remove_point_inputs(obj_idx, frame)
                        continue
                    points, labels = prompt
                    session.add_point_inputs(obj_idx, frame, {
                        "point_coords": model_coords(points, hw, size)[None, None],
                        "point_labels": torch.tensor(labels, dtype=torch.int32)[None, None]})
                    session.remove_mask_inputs(obj_idx, frame)
                session.obj_with_new_inputs = list(objects)
                collect(model(session, frame_idx=frame))
            else:
                _, start, reverse = action
                for out in model.propagate_in_video_iterator(session, start_frame_idx=start, reverse=reverse):
                    collect(out)
    return results


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union; two empty masks have none (an error, not a perfect match)."""
    union = np.logical_or(a, b).sum()
    if union == 0:
        raise ValueError("IoU of two empty masks: nothing was compared")
    return float(np.logical_and(a, b).sum() / union)


def compare(ours, reference) -> tuple[float, int]:
    """Worst per-frame, per-object IoU and the number of masks compared; the steps must match, and
    every reference mask must be non-trivial (neither empty nor the whole frame), so that no
    comparison passes on nothing."""
    assert [f for f, _ in ours] == [f for f, _ in reference], "different frame order"
    worst, count = 1.0, 0
    for (frame, a), (_, b) in zip(ours, reference):
        assert list(a) == list(b), f"object ids differ: {list(a)} vs {list(b)}"
        for oid in a:
            assert 0 < b[oid].sum() < b[oid].size, f"reference mask of object {oid} on frame {frame} is " + \
                ("empty" if not b[oid].any() else "the whole frame")
            worst = min(worst, iou(a[oid], b[oid]))
            count += 1
    return worst, count
