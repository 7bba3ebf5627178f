"""SDK for `segserve.v1.VideoTracking` (reached as `SegservClient(...).video`).

    with SegservClient(address) as client:
        session = client.video.start_session(frames)                  # [T, H, W, 3] uint8, or encoded images
        first = client.video.add_prompts(session.session_id, 0, {1: {"points": [(40, 30, 1)]},
                                                                  2: {"box": (90, 20, 130, 60)}})
        for frame in client.video.propagate(session.session_id):     # forward from the prompted frame
            frame.masks[1]                                            # bool [H, W]
        client.video.end_session(session.session_id)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from segserve.api import load as load_api
from segserve.api import pb
from segserve.common import rle as rle_codec

vpb, vpb_grpc = load_api("video")


@dataclass
class TrackedFrame:
    frame_index: int
    masks: dict[int, np.ndarray]  # object id -> bool [H, W]
    object_scores: dict[int, float]
    rle: dict[int, dict] = field(default_factory=dict)


def _frame(message, height: int, width: int) -> TrackedFrame:
    masks, scores, rles = {}, {}, {}
    for obj in message.objects:
        encoded = {"size": [height, width], "counts": obj.mask.rle.counts}
        masks[obj.object_id] = rle_codec.decode(encoded).astype(bool)
        scores[obj.object_id] = obj.object_score
        rles[obj.object_id] = encoded
    return TrackedFrame(message.frame_index, masks, scores, rles)


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

    def add_frames(self, session_id: str, frames: Iterable, batch_size: int = 8):
        return self.stub.AddFrames(_frame_messages(frames, batch_size, session_id), timeout=self.timeout_s)

    def _size(self, session_id: str) -> tuple[int, int]:
        if session_id not in self._sizes:
            for info in self.list_sessions():
                self._sizes[info.session_id] = (info.height, info.width)
        return self._sizes.get(session_id, (0, 0))

    def add_prompts(self, session_id: str, frame_index: int, objects: dict[int, dict]) -> TrackedFrame:
        """objects: id -> {"points": [(x, y, label), ...], "box": (x0, y0, x1, y1)} (either or both)."""
        request = vpb.AddPromptsRequest(session_id=session_id, frame_index=frame_index)
        for obj_id, prompt in objects.items():
            message = request.objects.add(object_id=obj_id)
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
