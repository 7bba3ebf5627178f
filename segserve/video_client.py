"""SDK for `segserve.v1.VideoTracking` (reached as `SegservClient(...).video`).

    with SegservClient(address) as client:
        session = client.video.start_session(frames)                  # [T, H, W, 3] uint8, or encoded images
        first = client.video.add_prompts(session.session_id, 0, {1: {"points": [(40, 30, 1)]},
                                                                  2: {"box": (90, 20, 130, 60)},
                                                                  3: {"mask": mask}})  # bool [H, W]
        cars = client.video.add_prompts(session.session_id, 5, text="a car.")  # new ids: cars.detections
        for frame in client.video.propagate(session.session_id):     # forward from the prompted frame
            frame.masks[1]                                            # bool [H, W]
        client.video.end_session(session.session_id)

    session = client.video.start_session_from_path("clip.mp4", stride=2)  # or a folder of images
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from segserve.api import load as load_api
from segserve.api import pb
from segserve.common import rle as rle_codec
from segserve.video_io import read_frames

vpb, vpb_grpc = load_api("video")


@dataclass
class TrackedFrame:
    frame_index: int
    masks: dict[int, np.ndarray]  # object id -> bool [H, W]
    object_scores: dict[int, float]
    rle: dict[int, dict] = field(default_factory=dict)
    # AddPrompts with text: the objects it created -> {"phrase", "score", "box" (x0, y0, x1, y1)}
    detections: dict[int, dict] = field(default_factory=dict)


def _frame(message, height: int, width: int) -> TrackedFrame:
    masks, scores, rles, detections = {}, {}, {}, {}
    for obj in message.objects:
        encoded = {"size": [height, width], "counts": obj.mask.rle.counts}
        masks[obj.object_id] = rle_codec.decode(encoded).astype(bool)
        scores[obj.object_id] = obj.object_score
        rles[obj.object_id] = encoded
        if obj.phrase or obj.HasField("box"):
            detections[obj.object_id] = {"phrase": obj.phrase, "score": obj.detection_score,
                                         "box": (obj.box.x0, obj.box.y0, obj.box.x1, obj.box.y1)}
    return TrackedFrame(message.frame_index, masks, scores, rles, detections)


def _frame_messages(frames: Iterable, batch_size: int, session_id: str = "") -> Iterator:
    batch = []
    for frame in frames:
        if isinstance(frame, (bytes, bytearray)):
            batch.append(vpb.Frame(image=bytes(frame)))
        else:
            array = np.ascontiguousarray(frame, dtype=np.uint8)
            batch.append(vpb.Frame(raw=vpb.RawFrame(width=array.shape[1], height=array.shape[0], rgb=array.tobytes())))
        if len(batch) == batch_size:
            yield vpb.VideoFrames(session_id=session_id, frames=batch)
            batch = []
    if batch:
        yield vpb.VideoFrames(session_id=session_id, frames=batch)


class VideoTrackingClient:
    def __init__(self, channel, timeout_s: float = 300.0):
        self.stub = vpb_grpc.VideoTrackingStub(channel)
        self.timeout_s = timeout_s
        self._sizes: dict[str, tuple[int, int]] = {}

    def start_session(self, frames: Iterable, batch_size: int = 8):
        """Frames: RGB arrays [H, W, 3] (sent raw) or encoded image bytes, streamed in batches."""
        info = self.stub.StartVideoSession(_frame_messages(frames, batch_size), timeout=self.timeout_s)
        self._sizes[info.session_id] = (info.height, info.width)
        return info

    def start_session_from_path(self, path, stride: int = 1, max_frames: int | None = None, batch_size: int = 8):
        """A session on a video file (decoded here with PyAV) or a folder of images, streamed as
        it is decoded: every `stride`-th frame, at most `max_frames`."""
        return self.start_session(read_frames(path, stride, max_frames), batch_size)

    def add_frames(self, session_id: str, frames: Iterable, batch_size: int = 8):
        return self.stub.AddFrames(_frame_messages(frames, batch_size, session_id), timeout=self.timeout_s)

    def _size(self, session_id: str) -> tuple[int, int]:
        if session_id not in self._sizes:
            for info in self.list_sessions():
                self._sizes[info.session_id] = (info.height, info.width)
        return self._sizes.get(session_id, (0, 0))

    def add_prompts(self, session_id: str, frame_index: int, objects: dict[int, dict] | None = None,
                    text: str | None = None, box_threshold: float | None = None, text_threshold: float | None = None,
                    max_objects: int = 0, nms_iou_threshold: float | None = None,
                    first_object_id: int | None = None) -> TrackedFrame:
        """objects: id -> {"points": [(x, y, label), ...], "box": (x0, y0, x1, y1)} (either or both),
        or {"mask": bool [H, W]} (sent as COCO RLE). `text`: Grounding DINO on this frame, each
        detection a new object (ids from `first_object_id`, else after the largest id); the
        returned frame's `detections` names them."""
        request = vpb.AddPromptsRequest(session_id=session_id, frame_index=frame_index)
        if text is not None:
            request.text.CopyFrom(vpb.TextPrompt(text=text, max_objects=max_objects))
            for name, value in (("box_threshold", box_threshold), ("text_threshold", text_threshold),
                                ("nms_iou_threshold", nms_iou_threshold), ("first_object_id", first_object_id)):
                if value is not None:
                    setattr(request.text, name, value)
        for obj_id, prompt in (objects or {}).items():
            message = request.objects.add(object_id=obj_id)
            if prompt.get("mask") is not None:
                encoded = rle_codec.encode(np.asarray(prompt["mask"]).astype(bool))
                message.mask.rle.size.extend(encoded["size"])
                message.mask.rle.counts = encoded["counts"]
            for point in prompt.get("points", ()):
                x, y, *label = point
                message.points.add(x=x, y=y, label=int(label[0]) if label else 1)
            if prompt.get("box") is not None:
                x0, y0, x1, y1 = prompt["box"]
                message.box.CopyFrom(pb.Box(x0=x0, y0=y0, x1=x1, y1=y1))
        response = self.stub.AddPrompts(request, timeout=self.timeout_s)
        return _frame(response, *self._size(session_id))

    def propagate(self, session_id: str, start_frame_index: int | None = None, reverse: bool = False,
                  max_frames: int | None = None) -> Iterator[TrackedFrame]:
        request = vpb.PropagateRequest(session_id=session_id, reverse=reverse)
        if start_frame_index is not None:
            request.start_frame_index = start_frame_index
        if max_frames is not None:
            request.max_frames = max_frames
        height, width = self._size(session_id)
        for message in self.stub.Propagate(request, timeout=self.timeout_s):
            yield _frame(message, height, width)

    def remove_object(self, session_id: str, object_id: int):
        return self.stub.RemoveObject(vpb.RemoveObjectRequest(session_id=session_id, object_id=object_id),
                                      timeout=self.timeout_s)

    def end_session(self, session_id: str) -> None:
        self.stub.EndSession(vpb.EndSessionRequest(session_id=session_id), timeout=self.timeout_s)
        self._sizes.pop(session_id, None)

    def list_sessions(self) -> Sequence:
        return list(self.stub.ListSessions(vpb.ListSessionsRequest(), timeout=self.timeout_s).sessions)
