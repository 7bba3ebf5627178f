"""The `segserve.v1.VideoTracking` servicer: SAM 2 video sessions on the `sam2_video_tracker`
Triton model.

Frames travel once, in the START request and later FRAMES requests; prompts carry only points (or
a frame-sized mask), and every propagation step is one small request answered with RLE masks, so
steps of many sessions batch together in Triton (Oldest strategy). Where the parts live: the
session registry (placement, adoption, expiry) in `video_sessions.py`, the calls to the tracker in
`tracker_client.py`, frame and prompt checks in `video_input.py`, mask and text prompts in
`video_prompts.py`.
"""
from __future__ import annotations

import json
import time

import grpc
import numpy as np

from segserve.api import load as load_api
from segserve.api import pb
from segserve.triton_models.sam2_video_core import propagation_order

from .errors import ServiceError, exhausted, invalid, not_found
from .model_info import add_graphs, checkpoint_name
from .rpc import CallScope, server_stream, unary
from .service import _mask_message, check_mask_format
from .tracker_client import TRACKER_MODEL, Tracker, TrackResult
from .video_input import MAX_OBJECTS_PER_REQUEST, check_add_prompts, decode_frames, model_coords, object_prompt
from .video_prompts import Detection, text_error, text_object_ids
from .video_sessions import VideoSession, VideoSessions

vpb, vpb_grpc = load_api("video")


class VideoService(vpb_grpc.VideoTrackingServicer):
    def __init__(self, service):
        self.service = service  # the SegmentationService: pool, settings, signer, text prompts
        self.pool = service.pool
        self.settings = service.settings
        self._params: dict[str, str] | None = None
        self.sessions = VideoSessions(self.pool, service.images.signer, lambda: self.ttl_s)

    @property
    def _sessions(self) -> dict[str, VideoSession]:
        return self.sessions._sessions  # the registry (leak checks of the tests read it)

    # ---- configuration from the tracker model ------------------------------------------
    def params(self) -> dict[str, str]:
        if self._params is None:
            try:
                self._params = self.pool.any().model_parameters(TRACKER_MODEL)
            except ServiceError as exc:
                if exc.code == grpc.StatusCode.UNIMPLEMENTED:
                    raise ServiceError(grpc.StatusCode.UNIMPLEMENTED,
                                       "this server's model repository has no SAM 2 video tracker") from exc
                raise
        return self._params

    @property
    def ttl_s(self) -> float:
        return float(self.params().get("session_ttl_s", "600"))

    @property
    def image_size(self) -> int:
        return int(self.params()["image_size"])

    def model_info(self) -> pb.ModelInfo:
        params = self.params()
        config = json.loads(params.get("video_config", "{}"))
        info = json.loads(params.get("model_info") or "{}")
        message = pb.ModelInfo(family="sam2_video", checkpoint=checkpoint_name(config.get("checkpoint")),
                               random_weights=bool(config.get("random_weights", False)))
        for name, entry in sorted(info.items()):
            if name.startswith("sam2_video_"):
                message.checkpoint_sha256 = entry["checkpoint_sha256"]
                message.artifact_sha256[name] = entry["sha256"]
                add_graphs(message, info, [name])
        return message

    # ---- helpers ---------------------------------------------------------------------------
    def _receive_frames(self, session: VideoSession, messages, started: bool) -> None:
        tracker = Tracker(session.replica)
        for message in messages:
            if not message.frames:
                continue
            hw = (session.height, session.width) if started else None
            tracker.frames(session, decode_frames(message, session.num_frames, hw, self.settings), start=not started)
            started = True
        if not started:
            raise invalid("frames", "send at least one frame")

    def _info(self, session: VideoSession, idle: bool = False) -> "vpb.VideoSessionInfo":
        return vpb.VideoSessionInfo(session_id=session.session_id, num_frames=session.num_frames, width=session.width,
                                    height=session.height, object_ids=session.object_ids,
                                    idle_seconds=time.monotonic() - session.last_used if idle else 0.0,
                                    model=self.model_info())

    def _refresh(self, session: VideoSession, scope: CallScope) -> None:
        """Frames and objects as Triton holds them: another orchestrator may have added some. Asked only
        where a decision rests on them and they may be out of date."""
        try:
            Tracker(session.replica, scope).info(session)
        except ServiceError as exc:
            self.sessions.forget_if_gone(session, exc)
            raise

    def _detect(self, session: VideoSession, request, ids: list[int], scope: CallScope) -> list[Detection]:
        """The text prompt's detections on the prompted frame, with their new object ids."""
        prompt = request.text
        text = self.service.text
        try:
            controls = text.controls(prompt)
            frame = Tracker(session.replica, scope).frame(session, request.frame_index)
            found = text.detections(frame, controls, scope)
        except ServiceError as exc:
            raise text_error(exc) from exc
        new_ids = text_object_ids(prompt, len(found), session.object_ids, ids)
        return [Detection(i, d["phrase"], float(d["score"]), tuple(float(v) for v in d["box"]))
                for i, d in zip(new_ids, found)]

    def _frame_message(self, session: VideoSession, result: TrackResult, mask_format: int,
                       detections: dict[int, Detection] | None = None) -> "vpb.FrameMasks":
        message = vpb.FrameMasks(frame_index=result.frame_index)
        for obj_id, score, counts in zip(result.object_ids, result.object_scores, result.rle_counts):
            obj = message.objects.add(object_id=obj_id, object_score=float(score),
                                      mask=_mask_message(counts, session.height, session.width, 0.0, mask_format))
            detection = (detections or {}).get(obj_id)
            if detection is not None:
                x0, y0, x1, y1 = detection.box
                obj.phrase, obj.detection_score = detection.phrase, detection.score
                obj.box.CopyFrom(pb.Box(x0=x0, y0=y0, x1=x1, y1=y1))
        return message

    # ---- RPCs ------------------------------------------------------------------------------
    @unary
    def StartVideoSession(self, request_iterator, context):
        self.params()  # UNIMPLEMENTED before anything is placed when there is no tracker
        messages = iter(request_iterator)
        first = next((m for m in messages if m.frames), None)
        if first is None:
            raise invalid("frames", "send at least one frame")
        frames = decode_frames(first, 0, None, self.settings)
        refused: tuple = ()
        last_refusal: ServiceError | None = None
        while True:
            try:
                session = self.sessions.open(exclude=refused)
            except ServiceError:
                if last_refusal is not None:
                    raise last_refusal from None  # no other replica: the tracker's own refusal says why
                raise
            with session.lock:
                try:
                    Tracker(session.replica).frames(session, frames, start=True)
                except BaseException as exc:
                    self.sessions.abandon(session)
                    # Full by the tracker's own count (sessions of other orchestrators): another replica.
                    if isinstance(exc, ServiceError) and exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        refused, last_refusal = refused + (session.replica,), exc
                        continue
                    raise
                try:
                    self._receive_frames(session, messages, started=True)
                except BaseException:
                    self.sessions.abandon(session)
                    raise
                return self._info(session)

    @unary
    def AddFrames(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None:
            raise invalid("session_id", "is required")
        session = self.sessions.get(first.session_id, CallScope(context))

        def messages():
            yield first
            for message in request_iterator:
                if message.session_id and message.session_id != first.session_id:
                    raise invalid("session_id", "one AddFrames stream serves one session")
                yield message

        with session.lock:
            try:
                self._receive_frames(session, messages(), started=True)
            except ServiceError as exc:
                self.sessions.forget_if_gone(session, exc)
                raise
            return self._info(session)

    @unary
    def AddPrompts(self, request, context):
        scope = CallScope(context)
        session = self.sessions.get(request.session_id, scope)
        check_mask_format(request.mask_format)
        if request.HasField("text") or not 0 <= request.frame_index < session.num_frames:
            self._refresh(session, scope)  # new object ids must not clash with any held
        ids = check_add_prompts(request, session.num_frames)
        size = (session.height, session.width)
        prompts = [object_prompt(o, i, *size, self.image_size) for i, o in enumerate(request.objects)]
        with session.lock:
            try:
                detections = self._detect(session, request, ids, scope) if request.HasField("text") else []
                if len(ids) + len(detections) > MAX_OBJECTS_PER_REQUEST:
                    raise exhausted("text.max_objects", f"at most {MAX_OBJECTS_PER_REQUEST} objects per request")
                for d in detections:  # a box prompt each, as `segserve.v1.Box` would give
                    prompts.append((model_coords([d.box[:2], d.box[2:]], *size, self.image_size),
                                    np.array([2, 3], np.int32)))
                if not prompts:  # nothing detected, nothing else asked: the session stays as it was
                    return vpb.FrameMasks(frame_index=request.frame_index)
                result = Tracker(session.replica, scope).prompt(session, request.frame_index,
                                                                ids + [d.object_id for d in detections], prompts)
            except ServiceError as exc:
                self.sessions.forget_if_gone(session, exc)
                raise
        return self._frame_message(session, result, request.mask_format, {d.object_id: d for d in detections})

    @server_stream
    def Propagate(self, request, context):
        """One tracker step per frame; when the client cancels or its deadline passes, the step in
        flight is cancelled in Triton and no further frame is tracked."""
        scope = CallScope(context)
        session = self.sessions.get(request.session_id, scope)
        if request.HasField("max_frames") and request.max_frames < 1:
            raise invalid("max_frames", "must be at least 1")
        check_mask_format(request.mask_format)
        with session.lock:
            tracker = Tracker(session.replica, scope)
            try:
                if request.HasField("start_frame_index"):
                    self._refresh(session, scope)  # the frame count (START_FRAME's answer carries it too)
                    start = request.start_frame_index
                    if not 0 <= start < session.num_frames:
                        raise invalid("start_frame_index", f"{start} is out of range: the session has "
                                                           f"{session.num_frames} frames")
                else:
                    start = tracker.start_frame(session)
                order = propagation_order(start, session.num_frames, request.reverse,
                                          request.max_frames if request.HasField("max_frames") else None)
                for frame_index in order:
                    scope.check()
                    result = tracker.step(session, frame_index, request.reverse)
                    session.last_used = time.monotonic()
                    yield self._frame_message(session, result, request.mask_format)
            except ServiceError as exc:
                self.sessions.forget_if_gone(session, exc)
                raise

    @unary
    def RemoveObject(self, request, context):
        scope = CallScope(context)
        session = self.sessions.get(request.session_id, scope)
        with session.lock:
            if request.object_id not in session.object_ids:
                self._refresh(session, scope)
            if request.object_id not in session.object_ids:
                raise not_found("object_id", f"{request.object_id} is not tracked in this session")
            try:
                Tracker(session.replica).remove(session, request.object_id)
            except ServiceError as exc:
                self.sessions.forget_if_gone(session, exc)
                raise
            return self._info(session)

    @unary
    def EndSession(self, request, context):
        self.sessions.end(request.session_id)
        return vpb.EndSessionResponse()

    @unary
    def ListSessions(self, request, context):
        return vpb.ListSessionsResponse(sessions=[self._info(s, idle=True) for s in self.sessions.listed()])

    def shutdown(self) -> None:
        self.sessions.close_all()


def add_to_server(service, server) -> VideoService:
    video = VideoService(service)
    vpb_grpc.add_VideoTrackingServicer_to_server(video, server)
    return video
