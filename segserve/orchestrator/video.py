"""The `segserve.v1.VideoTracking` servicer: SAM 2 video sessions on the `sam2_video_tracker`
Triton model.

A session is a Triton sequence on one replica (random 63-bit sequence id); frames travel once, in
the START request and later FRAMES requests; prompts carry only points (or a frame-sized mask),
and every propagation step is one small request answered with RLE masks, so steps of many sessions
batch together in Triton (Oldest strategy). Requests of one session are serialised by a
per-session lock. Triton's silent drop of an idle sequence surfaces as NOT_FOUND ("expired"), as do
ended and unknown sessions. Mask and text prompts: `video_prompts.py`.
"""
from __future__ import annotations

import json
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from segserve.api import load as load_api
from segserve.api import pb
from segserve.common import sam2_transforms
from segserve.common.image import ImageError, decode_image
from segserve.triton_models.sam2_video_core import propagation_order

from .errors import ServiceError, exhausted, invalid, not_found
from .ids import SessionRef, quote
from .metrics import OPEN_SESSIONS
from .model_info import checkpoint_name
from .rpc import NO_SCOPE, CallScope, server_stream, unary
from .triton_pool import Replica, tensor
from .service import check_mask_format
from .video_prompts import Detection, decode_mask, text_error, text_object_ids

vpb, vpb_grpc = load_api("video")
log = logging.getLogger("segserve.orchestrator.video")

TRACKER_MODEL = "sam2_video_tracker"
OP_FRAMES, OP_PROMPT, OP_STEP, OP_REMOVE, OP_INFO, OP_START_FRAME, OP_GET_FRAME = range(7)
PAD_LABEL = -10
MAX_POINTS_PER_OBJECT = 64
MAX_OBJECTS_PER_REQUEST = 64


@dataclass
class TrackResult:
    frame_index: int
    object_ids: list[int]
    object_scores: np.ndarray
    rle_counts: list[str]


@dataclass
class VideoSession:
    session_id: str
    sequence_id: int
    replica: Replica
    height: int = 0
    width: int = 0
    num_frames: int = 0
    object_ids: list[int] = field(default_factory=list)
    generation: int = 0  # of its replica when opened: a restarted Triton lost the session
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)


class SessionGone(ServiceError):
    def __init__(self, message: str):
        super().__init__(grpc.StatusCode.NOT_FOUND, message)


class Tracker:
    """Calls to the tracker model of one replica."""

    def __init__(self, replica: Replica, scope: CallScope = NO_SCOPE):
        self.replica = replica
        self.scope = scope

    def call(self, session: VideoSession, op: int, inputs: list, outputs: list[str], start: bool = False,
             end: bool = False, what: str = "session_id"):
        """One tracker operation. The tracker answers NOT_FOUND only for a session it does not hold
        (the orchestrator checks object ids itself), so NOT_FOUND always names the session."""
        inputs = [tensor("OP", np.array([[op]], np.int32), "INT32"), *inputs]
        try:
            result = self.replica.infer(TRACKER_MODEL, inputs, outputs, what, self.scope, session.sequence_id,
                                        start=start, end=end)
        except ServiceError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                raise SessionGone(f"session_id: {quote(session.session_id)} is no longer held by Triton "
                                  "(expired, or lost when Triton restarted)") from exc
            raise
        session.num_frames = int(result.as_numpy("NUM_FRAMES").reshape(-1)[0]) if "NUM_FRAMES" in outputs else session.num_frames
        if "OUT_OBJ_IDS" in outputs:
            session.object_ids = [int(i) for i in result.as_numpy("OUT_OBJ_IDS").reshape(-1)]
        return result

    def frames(self, session: VideoSession, frames: np.ndarray, start: bool) -> None:
        self.call(session, OP_FRAMES, [tensor("FRAMES", frames[None], "UINT8")], ["NUM_FRAMES", "FRAME_SIZE", "OUT_OBJ_IDS"],
                  start=start, what="frames")

    def track(self, session: VideoSession, op: int, inputs: list, what: str = "session_id") -> TrackResult:
        result = self.call(session, op, inputs, ["NUM_FRAMES", "OUT_OBJ_IDS", "OUT_FRAME_INDEX", "OBJECT_SCORES",
                                                 "MASKS_RLE"], what=what)
        return TrackResult(int(result.as_numpy("OUT_FRAME_INDEX").reshape(-1)[0]),
                           [int(i) for i in result.as_numpy("OUT_OBJ_IDS").reshape(-1)],
                           result.as_numpy("OBJECT_SCORES").reshape(-1),
                           [c.decode() for c in result.as_numpy("MASKS_RLE").reshape(-1)])

    def frame(self, session: VideoSession, frame_index: int) -> np.ndarray:
        result = self.call(session, OP_GET_FRAME, [tensor("FRAME_INDEX", np.array([[frame_index]], np.int32), "INT32")],
                           ["NUM_FRAMES", "FRAME"], what="frame_index")
        return result.as_numpy("FRAME")[0]

    def end(self, session: VideoSession) -> None:
        """END the sequence; one Triton no longer holds (or never started) counts as ended. Never raises:
        a failure is logged, and the tracker frees the session at its TTL anyway."""
        try:
            self.call(session, OP_INFO, [], ["NUM_FRAMES"], end=True)
        except SessionGone:
            pass  # already gone: ending it is done
        except ServiceError as exc:
            if exc.code != grpc.StatusCode.INVALID_ARGUMENT:  # Triton's answer for a never-started sequence
                log.warning("ending video session %s failed (%s): %s", quote(session.session_id), exc.code.name,
                            exc.message)


class VideoService(vpb_grpc.VideoTrackingServicer):
    def __init__(self, service):
        self.service = service  # the SegmentationService: pool, settings, image decoding
        self.pool = service.pool
        self.settings = service.settings
        self._lock = threading.Lock()
        self._sessions: dict[str, VideoSession] = {}
        self._ended: dict[str, None] = {}
        self._params: dict[str, str] | None = None
        self.signer = service.images.signer  # one key for every id this orchestrator issues
        self._to_end: list[VideoSession] = []

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
        return message

    # ---- session registry ------------------------------------------------------------------
    def _gauge(self) -> None:
        OPEN_SESSIONS.labels(kind="video").set(len(self._sessions))

    def _expire_locked(self) -> None:
        now = time.monotonic()
        for session in [s for s in self._sessions.values() if now - s.last_used > self.ttl_s]:
            self._drop_locked(session)
            self._to_end.append(session)

    def _end_dropped(self) -> None:
        """END the sequences of sessions dropped here (expired, or gone from the model): Triton keeps
        a sequence's slot until END or its own idle limit, which sits a margin past the TTL."""
        with self._lock:
            sessions, self._to_end = self._to_end, []
        for session in sessions:
            if session.generation == session.replica.generation:
                Tracker(session.replica).end(session)

    def _drop_locked(self, session: VideoSession) -> None:
        if self._sessions.pop(session.session_id, None) is not None:
            self.pool.release(session.replica)
        self._ended[session.session_id] = None
        while len(self._ended) > 4096:
            self._ended.pop(next(iter(self._ended)))
        self._gauge()

    def _get(self, session_id: str) -> VideoSession:
        if not session_id:
            raise invalid("session_id", "is required")
        if self.signer.verify(session_id, "video") is None:
            raise not_found("session_id", f"{quote(session_id)} is not a video session id issued by this service")
        try:
            with self._lock:
                self._expire_locked()
                session = self._sessions.get(session_id)
                if session is None:
                    state = "ended or expired" if session_id in self._ended else "not held by this orchestrator"
                    raise not_found("session_id", f"{quote(session_id)} is not open ({state})")
                if session.generation != session.replica.generation:
                    self._drop_locked(session)
                    raise not_found("session_id", f"{quote(session_id)}: the Triton server holding it restarted, "
                                                  "and its sessions were lost: start the session again")
                session.last_used = time.monotonic()
                return session
        finally:
            self._end_dropped()

    def _forget_if_gone(self, session: VideoSession, exc: ServiceError) -> None:
        if isinstance(exc, SessionGone):
            with self._lock:
                self._drop_locked(session)
                self._to_end.append(session)
            self._end_dropped()

    def _place(self) -> VideoSession:
        max_per_replica = int(self.params().get("max_sessions", "16"))
        with self._lock:
            self._expire_locked()
        self._end_dropped()
        with self._lock:
            replica = self.pool.place()
            held = sum(1 for s in self._sessions.values() if s.replica is replica)
            if held >= max_per_replica:
                self.pool.release(replica)
                raise exhausted("session", f"{held} video sessions are open on every replica, the limit is "
                                           f"{max_per_replica}; end some with EndSession")
            sequence_id = secrets.randbelow(2**63 - 1) + 1
            session_id = self.signer.sign(SessionRef("video", replica.url, sequence_id, 0, 0))
            session = VideoSession(session_id, sequence_id, replica, generation=replica.generation)
            self._sessions[session.session_id] = session  # reserved; removed again if START fails
            self._gauge()
            return session

    # ---- frames ----------------------------------------------------------------------------
    def _decode_frames(self, message, first_index: int, expected_hw: tuple[int, int] | None) -> np.ndarray:
        frames = []
        for i, frame in enumerate(message.frames):
            where = f"frames[{first_index + i}]"
            kind = frame.WhichOneof("data")
            if kind == "image":
                try:
                    rgb = decode_image(frame.image, where, self.settings.max_image_pixels, self.settings.max_image_bytes)
                except ImageError as exc:
                    code = grpc.StatusCode.RESOURCE_EXHAUSTED if exc.too_large else grpc.StatusCode.INVALID_ARGUMENT
                    raise ServiceError(code, str(exc)) from exc
            elif kind == "raw":
                raw = frame.raw
                if raw.width <= 0 or raw.height <= 0 or len(raw.rgb) != raw.width * raw.height * 3:
                    raise invalid(where, f"raw frame needs width*height*3 = {max(raw.width, 0) * max(raw.height, 0) * 3} "
                                         f"bytes, got {len(raw.rgb)}")
                if raw.width * raw.height > self.settings.max_image_pixels:
                    raise exhausted(where, f"{raw.width}x{raw.height} is over {self.settings.max_image_pixels} pixels")
                rgb = np.frombuffer(raw.rgb, np.uint8).reshape(raw.height, raw.width, 3)
            else:
                raise invalid(where, "set image (encoded bytes) or raw")
            hw = expected_hw or (frames[0].shape[:2] if frames else rgb.shape[:2])
            if rgb.shape[:2] != tuple(hw):
                raise invalid(where, f"size {rgb.shape[1]}x{rgb.shape[0]} differs from the video's {hw[1]}x{hw[0]}")
            frames.append(rgb)
        return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)

    def _receive_frames(self, session: VideoSession, messages, started: bool) -> None:
        tracker = Tracker(session.replica)
        for message in messages:
            if not message.frames:
                continue
            hw = (session.height, session.width) if started else None
            frames = self._decode_frames(message, session.num_frames, hw)
            tracker.frames(session, frames, start=not started)
            if not started:
                session.height, session.width = frames.shape[1:3]
                started = True
        if not started:
            raise invalid("frames", "send at least one frame")

    def _info(self, session: VideoSession, idle: bool = False) -> "vpb.VideoSessionInfo":
        return vpb.VideoSessionInfo(session_id=session.session_id, num_frames=session.num_frames, width=session.width,
                                    height=session.height, object_ids=session.object_ids,
                                    idle_seconds=time.monotonic() - session.last_used if idle else 0.0,
                                    model=self.model_info())

    # ---- RPCs ------------------------------------------------------------------------------
    @unary
    def StartVideoSession(self, request_iterator, context):
        session = self._place()
        with session.lock:
            try:
                self._receive_frames(session, request_iterator, started=False)
            except BaseException:
                with self._lock:
                    self._drop_locked(session)
                # Also after a refused START: Triton keeps the sequence slot until its idle timeout otherwise.
                Tracker(session.replica).end(session)
                raise
            return self._info(session)

    @unary
    def AddFrames(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None:
            raise invalid("session_id", "is required")
        session = self._get(first.session_id)

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
                self._forget_if_gone(session, exc)
                raise
            return self._info(session)

    def _object_prompt(self, obj, index: int, session: VideoSession) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """(coords in the model frame, labels), or a uint8 mask [H, W] for a mask prompt."""
        where = f"objects[{index}]"
        width, height = session.width, session.height
        if obj.HasField("mask"):
            if obj.points or obj.HasField("box"):  # as Sam2VideoProcessor: one or the other
                raise invalid(f"{where}.mask", "cannot be combined with points or a box")
            return decode_mask(obj.mask, f"{where}.mask", height, width)
        coords, labels = [], []
        if obj.HasField("box"):
            b = obj.box
            values = [b.x0, b.y0, b.x1, b.y1]
            if not all(math.isfinite(v) for v in values):
                raise invalid(f"{where}.box", "must be finite numbers")
            if not (0 <= b.x0 <= width and 0 <= b.x1 <= width and 0 <= b.y0 <= height and 0 <= b.y1 <= height):
                raise invalid(f"{where}.box", f"({b.x0}, {b.y0}, {b.x1}, {b.y1}) lies outside the {width}x{height} frame")
            if b.x1 < b.x0 or b.y1 < b.y0:
                raise invalid(f"{where}.box", "needs x0 <= x1 and y0 <= y1")
            coords += [(b.x0, b.y0), (b.x1, b.y1)]
            labels += [2, 3]
        if len(obj.points) > MAX_POINTS_PER_OBJECT:
            raise exhausted(f"{where}.points", f"at most {MAX_POINTS_PER_OBJECT} points per object")
        for j, p in enumerate(obj.points):
            if not (math.isfinite(p.x) and math.isfinite(p.y)):
                raise invalid(f"{where}.points[{j}]", "must be finite numbers")
            if not (0 <= p.x <= width and 0 <= p.y <= height):
                raise invalid(f"{where}.points[{j}]", f"({p.x}, {p.y}) is outside the {width}x{height} frame")
            if p.label not in (0, 1):
                raise invalid(f"{where}.points[{j}].label", "must be 1 (foreground) or 0 (background)")
            coords.append((p.x, p.y))
            labels.append(p.label)
        if not coords:
            raise invalid(where, "give points or a box")
        model = sam2_transforms.to_model_coords(np.array(coords, np.float32), (height, width), self.image_size)
        return model, np.array(labels, np.int32)

    @staticmethod
    def _prompt_inputs(frame_index: int, ids: list[int], prompts: list) -> list:
        """Tracker inputs: points padded to one length per object; mask prompts have only padding
        labels and take MASKS in request order."""
        points = [p for p in prompts if not isinstance(p, np.ndarray)]
        masks = [p for p in prompts if isinstance(p, np.ndarray)]
        longest = max([1, *(len(obj_labels) for _, obj_labels in points)])
        coords = np.zeros((len(prompts), longest, 2), np.float32)
        labels = np.full((len(prompts), longest), PAD_LABEL, np.int32)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, np.ndarray):
                coords[i, :len(prompt[1])], labels[i, :len(prompt[1])] = prompt
        inputs = [tensor("FRAME_INDEX", np.array([[frame_index]], np.int32), "INT32"),
                  tensor("OBJ_IDS", np.array([ids], np.int64), "INT64"),
                  tensor("POINT_COORDS", coords[None], "FP32"), tensor("POINT_LABELS", labels[None], "INT32")]
        if masks:
            inputs.append(tensor("MASKS", np.stack(masks)[None], "UINT8"))
        return inputs

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

    @unary
    def AddPrompts(self, request, context):
        scope = CallScope(context)
        session = self._get(request.session_id)
        check_mask_format(request.mask_format)
        with_text = request.HasField("text")
        if not request.objects and not with_text:
            raise invalid("objects", "give at least one object (or a text prompt)")
        if len(request.objects) > MAX_OBJECTS_PER_REQUEST:
            raise exhausted("objects", f"at most {MAX_OBJECTS_PER_REQUEST} objects per request")
        ids = [o.object_id for o in request.objects]
        if len(set(ids)) != len(ids):
            raise invalid("objects", "each object_id at most once per request")
        if not 0 <= request.frame_index < session.num_frames:
            raise invalid("frame_index", f"{request.frame_index} is out of range: the session has {session.num_frames} frames")
        prompts = [self._object_prompt(o, i, session) for i, o in enumerate(request.objects)]
        with session.lock:
            try:
                detections = self._detect(session, request, ids, scope) if with_text else []
                if len(ids) + len(detections) > MAX_OBJECTS_PER_REQUEST:
                    raise exhausted("text.max_objects", f"at most {MAX_OBJECTS_PER_REQUEST} objects per request")
                for d in detections:  # a box prompt each, as `segserve.v1.Box` would give
                    corners = np.array([d.box[:2], d.box[2:]], np.float32)
                    prompts.append((sam2_transforms.to_model_coords(corners, (session.height, session.width),
                                                                    self.image_size), np.array([2, 3], np.int32)))
                if not prompts:  # nothing detected, nothing else asked: the session stays as it was
                    return vpb.FrameMasks(frame_index=request.frame_index)
                inputs = self._prompt_inputs(request.frame_index, ids + [d.object_id for d in detections], prompts)
                result = Tracker(session.replica, scope).track(session, OP_PROMPT, inputs, what="objects")
            except ServiceError as exc:
                self._forget_if_gone(session, exc)
                raise
        return self._frame_message(session, result, request.mask_format, {d.object_id: d for d in detections})

    def _frame_message(self, session: VideoSession, result: TrackResult, mask_format: int,
                       detections: dict[int, Detection] | None = None) -> "vpb.FrameMasks":
        from .service import _mask_message

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

    @server_stream
    def Propagate(self, request, context):
        """One tracker step per frame; when the client cancels or its deadline passes, the step in
        flight is cancelled in Triton and no further frame is tracked."""
        scope = CallScope(context)
        session = self._get(request.session_id)
        if request.HasField("max_frames") and request.max_frames < 1:
            raise invalid("max_frames", "must be at least 1")
        check_mask_format(request.mask_format)
        with session.lock:
            tracker = Tracker(session.replica, scope)
            try:
                if request.HasField("start_frame_index"):
                    start = request.start_frame_index
                    if not 0 <= start < session.num_frames:
                        raise invalid("start_frame_index", f"{start} is out of range: the session has "
                                                           f"{session.num_frames} frames")
                else:
                    result = tracker.call(session, OP_START_FRAME, [], ["NUM_FRAMES", "OUT_FRAME_INDEX"])
                    start = int(result.as_numpy("OUT_FRAME_INDEX").reshape(-1)[0])
                order = propagation_order(start, session.num_frames, request.reverse,
                                          request.max_frames if request.HasField("max_frames") else None)
                for frame_index in order:
                    scope.check()
                    inputs = [tensor("FRAME_INDEX", np.array([[frame_index]], np.int32), "INT32"),
                              tensor("REVERSE", np.array([[request.reverse]], bool), "BOOL")]
                    result = tracker.track(session, OP_STEP, inputs)
                    session.last_used = time.monotonic()
                    yield self._frame_message(session, result, request.mask_format)
            except ServiceError as exc:
                self._forget_if_gone(session, exc)
                raise

    @unary
    def RemoveObject(self, request, context):
        session = self._get(request.session_id)
        with session.lock:
            if request.object_id not in session.object_ids:
                raise not_found("object_id", f"{request.object_id} is not tracked in this session")
            try:
                Tracker(session.replica).call(session, OP_REMOVE, [tensor("OBJ_IDS", np.array([[request.object_id]], np.int64), "INT64")],
                                              ["NUM_FRAMES", "OUT_OBJ_IDS"], what="object_id")
            except ServiceError as exc:
                self._forget_if_gone(session, exc)
                raise
            return self._info(session)

    @unary
    def EndSession(self, request, context):
        session = self._get(request.session_id)
        with self._lock:
            self._drop_locked(session)
        with session.lock:
            Tracker(session.replica).end(session)
        return vpb.EndSessionResponse()

    @unary
    def ListSessions(self, request, context):
        with self._lock:
            self._expire_locked()
            sessions = list(self._sessions.values())
        return vpb.ListSessionsResponse(sessions=[self._info(s, idle=True) for s in sessions if s.num_frames])

    def shutdown(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            for session in sessions:
                self._drop_locked(session)
        for session in sessions:
            Tracker(session.replica).end(session)


def add_to_server(service, server) -> VideoService:
    video = VideoService(service)
    vpb_grpc.add_VideoTrackingServicer_to_server(video, server)
    return video
