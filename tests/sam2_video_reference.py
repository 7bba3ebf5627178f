"""Drive transformers' `Sam2VideoModel` as its processor and propagate loop do, without the
processor (`Sam2VideoProcessor` needs torchvision's video processor, which cannot be installed
here): the same session calls `add_inputs_to_inference_session` makes for points and masks, then
`forward(frame_idx=...)` and `propagate_in_video_iterator`."""
from __future__ import annotations

import numpy as np
import torch

from segserve.common import sam2_transforms
from segserve.triton_models.sam2_video_core import propagation_order

# A script: ("prompt", frame, {obj_id: (points [(x, y)], labels [..]) or a bool mask [H, W]}) or
# ("propagate", start|None, reverse)


def masks_from_low_res(low_res: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return sam2_transforms.masks_from_logits(low_res, hw, 0.0)


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
    pixels = torch.from_numpy(np.concatenate([sam2_transforms.preprocess(f, size) for f in frames]))
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
                    coords = sam2_transforms.to_model_coords(np.array(points, np.float32), hw, size)
                    session.add_point_inputs(obj_idx, frame, {
                        "point_coords": torch.from_numpy(coords)[None, None],
                        "point_labels": torch.tensor(labels, dtype=torch.int32)[None, None]})
                    session.remove_mask_inputs(obj_idx, frame)
                session.obj_with_new_inputs = list(objects)
                collect(model(session, frame_idx=frame))
            else:
                _, start, reverse = action
                for out in model.propagate_in_video_iterator(session, start_frame_idx=start, reverse=reverse):
                    collect(out)
    return results


def run_tracker(tracker, frames: np.ndarray, script) -> list[tuple[int, dict[int, np.ndarray]]]:
    """The same script through segserve's numpy/ORT tracker (what the Triton model runs)."""
    from segserve.triton_models.sam2_video_core import VideoSession

    hw = frames.shape[1:3]
    session = VideoSession()
    tracker.add_frames(session, list(frames))
    results = []

    def collect(result):
        results.append((result.frame_index, {oid: masks_from_low_res(result.low_res_masks[i], hw)
                                             for i, oid in enumerate(result.obj_ids)}))

    for action in script:
        if action[0] == "prompt":
            _, frame, objects = action
            prompts = [prompt if isinstance(prompt, np.ndarray) else
                       (sam2_transforms.to_model_coords(np.array(prompt[0], np.float32), hw, tracker.image_size),
                        np.array(prompt[1], np.int32)) for prompt in objects.values()]
            collect(tracker.add_prompts(session, frame, list(objects), prompts))
        else:
            _, start, reverse = action
            for frame in propagation_order(tracker.start_frame(session) if start is None else start,
                                           len(frames), reverse):
                collect(tracker.step(session, frame, reverse))
    return results


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare(ours, reference) -> tuple[float, int]:
    """Worst per-frame, per-object IoU and the number of masks compared; the steps must match."""
    assert [f for f, _ in ours] == [f for f, _ in reference], "different frame order"
    worst, count = 1.0, 0
    for (_, a), (_, b) in zip(ours, reference):
        assert list(a) == list(b), f"object ids differ: {list(a)} vs {list(b)}"
        for oid in a:
            worst = min(worst, iou(a[oid], b[oid]))
            count += 1
    return worst, count
