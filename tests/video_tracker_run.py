"""segserve's side of the video parity tests: a script (see tests/sam2_video_reference.py) run
through segserve's numpy/ORT tracker, with segserve's own click scaling and mask upscale (what the
Triton model and the orchestrator run). The reference module never imports this."""
from __future__ import annotations

import numpy as np

from segserve.common import sam2_transforms
from segserve.triton_models.sam2_video_core import VideoSession, propagation_order


def play_script(tracker, frames: np.ndarray, script, on_result) -> VideoSession:
    """Run a script (prompts, then propagation) through the tracker; `on_result` gets every
    FrameResult. Returns the session, whose state the GPU check compares."""
    hw = frames.shape[1:3]
    session = VideoSession()
    tracker.add_frames(session, list(frames))
    for action in script:
        if action[0] == "prompt":
            _, frame, objects = action
            prompts = [prompt if isinstance(prompt, np.ndarray) else
                       (sam2_transforms.to_model_coords(np.array(prompt[0], np.float32), hw, tracker.image_size),
                        np.array(prompt[1], np.int32)) for prompt in objects.values()]
            on_result(tracker.add_prompts(session, frame, list(objects), prompts))
        else:
            _, start, reverse = action
            for frame in propagation_order(tracker.start_frame(session) if start is None else start,
                                           len(frames), reverse):
                on_result(tracker.step(session, frame, reverse))
    return session


def run_tracker(tracker, frames: np.ndarray, script) -> list[tuple[int, dict[int, np.ndarray]]]:
    """The same script through segserve's numpy/ORT tracker (what the Triton model runs)."""
    hw = frames.shape[1:3]
    results = []
    play_script(tracker, frames, script, lambda result: results.append(
        (result.frame_index, {oid: sam2_transforms.masks_from_logits(result.low_res_masks[i], hw, 0.0)
                              for i, oid in enumerate(result.obj_ids)})))
    return results
