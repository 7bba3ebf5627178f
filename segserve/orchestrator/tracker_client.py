"""The wire format to the `sam2_video_tracker` Triton model: one `Tracker` call per `TrackerOp`
(`segserve.common.video_ops`, shared with the model), on the Triton sequence of a video session.

The tracker answers NOT_FOUND only for a session it does not hold (the orchestrator checks object
ids itself), so NOT_FOUND always names the session: `SessionGone`. Triton itself answers
INVALID_ARGUMENT to a request without START for a sequence it no longer holds (ended through
another orchestrator, or idle past its limit); that is told from the model's own INVALID_ARGUMENT
by asking INFO, which the model refuses only with NOT_FOUND.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np

from segserve.common.video_ops import PAD_LABEL, TrackerOp

from .errors import ServiceError
from .ids import quote
from .rpc import NO_SCOPE, CallScope
from .triton_pool import TRACKER_MODEL, Replica, tensor

if TYPE_CHECKING:
    from .video_sessions import VideoSession

log = logging.getLogger("segserve.orchestrator.video")
SESSION_OUTPUTS = ["NUM_FRAMES", "FRAME_SIZE", "OUT_OBJ_IDS"]  # every answer carries them
TRACK_OUTPUTS = ["NUM_FRAMES", "OUT_OBJ_IDS", "OUT_FRAME_INDEX", "OBJECT_SCORES", "MASKS_RLE"]
GONE_CODES = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


@dataclass
class TrackResult:
    frame_index: int
    object_ids: list[int]
    object_scores: np.ndarray
    rle_counts: list[str]


class SessionGone(ServiceError):
    def __init__(self, message: str):
        super().__init__(grpc.StatusCode.NOT_FOUND, message)


def _int32(value: int) -> np.ndarray:
    return np.array([[value]], np.int32)


def prompt_inputs(frame_index: int, ids: list[int], prompts: list) -> list:
    """PROMPT inputs: points padded with PAD_LABEL to one length per object; a mask prompt (a uint8
    [H, W] array among `prompts`) has only padding labels and takes MASKS in request order."""
    points = [p for p in prompts if not isinstance(p, np.ndarray)]
    masks = [p for p in prompts if isinstance(p, np.ndarray)]
    longest = max([1, *(len(obj_labels) for _, obj_labels in points)])
    coords = np.zeros((len(prompts), longest, 2), np.float32)
    labels = np.full((len(prompts), longest), PAD_LABEL, np.int32)
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, np.ndarray):
            coords[i, :len(prompt[1])], labels[i, :len(prompt[1])] = prompt
    inputs = [tensor("FRAME_INDEX", _int32(frame_index), "INT32"), tensor("OBJ_IDS", np.array([ids], np.int64), "INT64"),
              tensor("POINT_COORDS", coords[None], "FP32"), tensor("POINT_LABELS", labels[None], "INT32")]
    if masks:
        inputs.append(tensor("MASKS", np.stack(masks)[None], "UINT8"))
    return inputs


class Tracker:
    """Calls to the tracker model of one replica, for one RPC (`scope`)."""

    def __init__(self, replica: Replica, scope: CallScope = NO_SCOPE):
        self.replica = replica
        self.scope = scope

    def call(self, session: VideoSession, op: TrackerOp, inputs: list, outputs: list[str], start: bool = False,
             end: bool = False, what: str = "session_id"):
        """One operation; the session's frame count, size and objects follow Triton's answer."""
        inputs = [tensor("OP", _int32(op), "INT32"), *inputs]
        try:
            result = self.replica.infer(TRACKER_MODEL, inputs, outputs, what, self.scope, session.sequence_id,
                                        start=start, end=end)
        except ServiceError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND or (
                    exc.code == grpc.StatusCode.INVALID_ARGUMENT and not start and self._dropped(session, op)):
                reason = ("its Triton replica is gone" if self.replica.gone else
                          "is no longer held by Triton (ended, expired, or lost when Triton restarted)")
                raise SessionGone(f"session_id: {quote(session.session_id)} {reason}") from exc
            raise
        if "NUM_FRAMES" in outputs:
            session.num_frames = int(result.as_numpy("NUM_FRAMES").reshape(-1)[0])
        if "FRAME_SIZE" in outputs:
            session.height, session.width = (int(v) for v in result.as_numpy("FRAME_SIZE").reshape(-1)[:2])
        if "OUT_OBJ_IDS" in outputs:
            session.object_ids = [int(i) for i in result.as_numpy("OUT_OBJ_IDS").reshape(-1)]
        return result

    def _dropped(self, session: VideoSession, op: TrackerOp) -> bool:
        """After INVALID_ARGUMENT: whether Triton no longer holds the sequence (see the module's docstring)."""
        if op == TrackerOp.INFO:
            return True
        try:
            self.replica.infer(TRACKER_MODEL, [tensor("OP", _int32(TrackerOp.INFO), "INT32")], ["NUM_FRAMES"],
                               "session_id", sequence_id=session.sequence_id)
        except ServiceError as exc:
            return exc.code in GONE_CODES
        return False

    def frames(self, session: VideoSession, frames: np.ndarray, start: bool) -> None:
        self.call(session, TrackerOp.FRAMES, [tensor("FRAMES", frames[None], "UINT8")], SESSION_OUTPUTS,
                  start=start, what="frames")

    def info(self, session: VideoSession) -> None:
        """The session's frame count, size and objects, as Triton holds them (never START)."""
        self.call(session, TrackerOp.INFO, [], SESSION_OUTPUTS)

    def _track(self, session: VideoSession, op: TrackerOp, inputs: list, what: str = "session_id") -> TrackResult:
        result = self.call(session, op, inputs, TRACK_OUTPUTS, what=what)
        return TrackResult(int(result.as_numpy("OUT_FRAME_INDEX").reshape(-1)[0]),
                           [int(i) for i in result.as_numpy("OUT_OBJ_IDS").reshape(-1)],
                           result.as_numpy("OBJECT_SCORES").reshape(-1),
                           [c.decode() for c in result.as_numpy("MASKS_RLE").reshape(-1)])

    def prompt(self, session: VideoSession, frame_index: int, ids: list[int], prompts: list) -> TrackResult:
        return self._track(session, TrackerOp.PROMPT, prompt_inputs(frame_index, ids, prompts), what="objects")

    def step(self, session: VideoSession, frame_index: int, reverse: bool) -> TrackResult:
        return self._track(session, TrackerOp.STEP, [tensor("FRAME_INDEX", _int32(frame_index), "INT32"),
                                                     tensor("REVERSE", np.array([[reverse]], bool), "BOOL")])

    def start_frame(self, session: VideoSession) -> int:
        result = self.call(session, TrackerOp.START_FRAME, [], ["NUM_FRAMES", "OUT_FRAME_INDEX"])
        return int(result.as_numpy("OUT_FRAME_INDEX").reshape(-1)[0])

    def remove(self, session: VideoSession, object_id: int) -> None:
        self.call(session, TrackerOp.REMOVE, [tensor("OBJ_IDS", np.array([[object_id]], np.int64), "INT64")],
                  ["NUM_FRAMES", "OUT_OBJ_IDS"], what="object_id")

    def frame(self, session: VideoSession, frame_index: int) -> np.ndarray:
        result = self.call(session, TrackerOp.GET_FRAME, [tensor("FRAME_INDEX", _int32(frame_index), "INT32")],
                           ["NUM_FRAMES", "FRAME"], what="frame_index")
        return result.as_numpy("FRAME")[0]

    def end(self, session: VideoSession, missing_ok: bool = True) -> None:
        """END the sequence. One Triton no longer holds (or never started) counts as ended unless
        `missing_ok` is off (then SessionGone). Any other failure is logged, never raised: the tracker
        frees the session at its TTL anyway."""
        try:
            self.call(session, TrackerOp.INFO, [], ["NUM_FRAMES"], end=True)
        except SessionGone:
            if not missing_ok:
                raise
        except ServiceError as exc:
            log.warning("ending video session %s failed (%s): %s", quote(session.session_id), exc.code.name,
                        exc.message)
