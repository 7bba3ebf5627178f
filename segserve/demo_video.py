"""Video tracking demo step: two objects tracked across a synthetic clip of moving shapes.

`run(client, out_dir)` is called by the main demo with a connected `SegservClient`: it opens a
video session (frames streamed in batches), clicks each shape on frame 0, propagates forward,
writes a few overlay PNGs and an overlay video (PyAV) and ends the session. `segserve track` uses
`track_frames` and `write_overlay_video` too.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np

from segserve.common.overlay import overlay
from segserve.common.synthetic_video import moving_shapes
from segserve.video_io import write_video


def track_frames(client, frames: np.ndarray, prompts: dict[int, dict], prompt_frame: int = 0,
                 reverse_too: bool = False, text: dict | None = None) -> tuple[dict, dict[int, dict[int, np.ndarray]], dict]:
    """Start a session, prompt, propagate from the earliest prompted frame (and backwards from it
    when asked), end. `text`: {"text": ..., "frame": F, and `add_prompts`' text options}, a text
    prompt whose detections become objects. Returns (session info summary with the detections,
    {frame: {object: mask}}, timings)."""
    video = client.video
    start = time.perf_counter()
    info = video.start_session(list(frames))
    uploaded = time.perf_counter()
    masks: dict[int, dict[int, np.ndarray]] = {}
    detections: dict[int, dict] = {}
    try:
        prompted = []
        if prompts:
            first = video.add_prompts(info.session_id, prompt_frame, prompts)
            masks[first.frame_index] = first.masks
            prompted.append(prompt_frame)
        if text:
            options = dict(text)
            text_frame = int(options.pop("frame", 0))
            found = video.add_prompts(info.session_id, text_frame, **options)
            detections = found.detections
            if found.masks:  # nothing detected and no other object: nothing to track
                masks[found.frame_index] = found.masks
                prompted.append(text_frame)
        begin = min(prompted, default=None)
        if begin is not None:
            for frame in video.propagate(info.session_id, start_frame_index=begin):
                masks[frame.frame_index] = frame.masks
            if reverse_too and begin > 0:
                for frame in video.propagate(info.session_id, start_frame_index=begin, reverse=True):
                    masks[frame.frame_index] = frame.masks
    finally:
        video.end_session(info.session_id)
    done = time.perf_counter()
    summary = {"session_id": info.session_id, "frames": info.num_frames, "width": info.width,
               "height": info.height, "random_weights": info.model.random_weights,
               "detections": {str(k): {**v, "box": [round(c, 2) for c in v["box"]], "score": round(v["score"], 4)}
                              for k, v in sorted(detections.items())}}
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


def overlay_frames(frames, masks: dict[int, dict[int, np.ndarray]],
                   names: dict[int, str] | None = None) -> Iterator[np.ndarray]:
    """Every frame with its objects' masks drawn (frames without masks as they are); one colour per
    object id throughout."""
    ids = sorted({o for objects in masks.values() for o in objects})
    for index, frame in enumerate(frames):
        objects = masks.get(index, {})
        if not objects:
            yield np.asarray(frame)
            continue
        empty = np.zeros(np.asarray(frame).shape[:2], bool)
        labels = [(names or {}).get(o, f"object {o}") if o in objects else "" for o in ids]
        yield np.asarray(overlay(np.asarray(frame), [objects.get(o, empty) for o in ids], labels).convert("RGB"))


def write_overlay_video(path: Path, frames, masks: dict[int, dict[int, np.ndarray]], fps: float = 10.0,
                        names: dict[int, str] | None = None) -> tuple[str, int]:
    """The overlay of every frame as a video file (PyAV); returns (codec, frames written)."""
    return write_video(path, overlay_frames(frames, masks, names), fps)


def run(client, out_dir: Path, frames: int = 8) -> dict:
    """Track the disc and the square of a synthetic clip; write overlay PNGs of a few frames."""
    clip, centres = moving_shapes(frames, 120, 160)
    prompts = {1: {"points": [(*centres[1][0], 1)]}, 2: {"points": [(*centres[2][0], 1)]}}
    summary, masks, timings = track_frames(client, clip, prompts)
    written = save_overlays(clip, masks, Path(out_dir), every=max(1, frames // 4),
                            points={0: [(*centres[1][0], 1), (*centres[2][0], 1)]})
    codec, count = write_overlay_video(Path(out_dir) / "video_overlay.mp4", clip, masks, fps=8)
    areas = {str(f): {str(o): int(m.sum()) for o, m in objs.items()} for f, objs in sorted(masks.items())}
    return {**summary, **timings, "tracked_frames": len(masks), "mask_areas": areas, "overlays": written,
            "overlay_video": {"path": str(Path(out_dir) / "video_overlay.mp4"), "codec": codec, "frames": count}}
