"""Video tracking demo step: two objects tracked across a synthetic clip of moving shapes.

`run(client, out_dir)` is called by the main demo with a connected `SegservClient`: it opens a
video session (frames streamed in batches), clicks each shape on frame 0, propagates forward,
writes a few overlay PNGs and ends the session. `segserve track` uses `track_frames` too.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from segserve.common.overlay import overlay
from segserve.common.synthetic_video import moving_shapes


def track_frames(client, frames: np.ndarray, prompts: dict[int, dict], prompt_frame: int = 0,
                 reverse_too: bool = False) -> tuple[dict, dict[int, dict[int, np.ndarray]], dict]:
    """Start a session, prompt, propagate (and backwards from the prompted frame when asked), end.
    Returns (session info summary, {frame: {object: mask}}, timings)."""
    video = client.video
    start = time.perf_counter()
    info = video.start_session(list(frames))
    uploaded = time.perf_counter()
    masks: dict[int, dict[int, np.ndarray]] = {}
    try:
        first = video.add_prompts(info.session_id, prompt_frame, prompts)
        masks[first.frame_index] = first.masks
        for frame in video.propagate(info.session_id, start_frame_index=prompt_frame):
            masks[frame.frame_index] = frame.masks
        if reverse_too and prompt_frame > 0:
            for frame in video.propagate(info.session_id, start_frame_index=prompt_frame, reverse=True):
                masks[frame.frame_index] = frame.masks
    finally:
        video.end_session(info.session_id)
    done = time.perf_counter()
    summary = {"session_id": info.session_id, "frames": info.num_frames, "width": info.width,
               "height": info.height, "random_weights": info.model.random_weights}
    timings = {"upload_s": round(uploaded - start, 3), "track_s": round(done - uploaded, 3),
               "frames_per_s": round(len(masks) / max(done - uploaded, 1e-9), 2)}
    return summary, masks, timings


def save_overlays(frames: np.ndarray, masks: dict[int, dict[int, np.ndarray]], out_dir: Path,
                  every: int = 1, points: dict[int, list] | None = None) -> list[str]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in sorted(masks)[::max(every, 1)]:
        objects = masks[index]
        image = overlay(frames[index], [objects[o] for o in sorted(objects)], [f"object {o}" for o in sorted(objects)],
                        points=(points or {}).get(index, ()))
        path = out_dir / f"video_frame_{index:04d}.png"
        image.save(path)
        written.append(str(path))
    return written


def run(client, out_dir: Path, frames: int = 8) -> dict:
    """Track the disc and the square of a synthetic clip; write overlay PNGs of a few frames."""
    clip, centres = moving_shapes(frames, 120, 160)
    prompts = {1: {"points": [(*centres[1][0], 1)]}, 2: {"points": [(*centres[2][0], 1)]}}
    summary, masks, timings = track_frames(client, clip, prompts)
    written = save_overlays(clip, masks, Path(out_dir), every=max(1, frames // 4),
                            points={0: [(*centres[1][0], 1), (*centres[2][0], 1)]})
    areas = {str(f): {str(o): int(m.sum()) for o, m in objs.items()} for f, objs in sorted(masks.items())}
    return {**summary, **timings, "tracked_frames": len(masks), "mask_areas": areas, "overlays": written}
