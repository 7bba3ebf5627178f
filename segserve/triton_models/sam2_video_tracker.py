"""SAM 2 video tracking sessions as a Triton sequence (correlation id = session).

The state of a session (frames, per-object prompts, conditioning and non-conditioning outputs with
their memory features and object pointers) lives in this instance keyed by CORRID; the tracking
rules are `sam2_video_core.VideoTracker` (transformers' `Sam2VideoModel`). Its graphs (parameter
`graphs`) run inside this model (`inprocess`, the embedded target: ONNX Runtime or OpenVINO per
graph, parameters `graph_runtime`, `graph_threads`, `graph_cache_dir`, see `graph_runner`) or are Triton's
own models called through BLS (`bls`, the fleet: the memory bank stays on their GPU, in CuPy; no
onnxruntime import). Parameter `batch_objects` ("true" by default): every object of a frame, and
the STEPs of the sessions in one execute(), share each graph call; "false": one call per object
and per request, the path before batching (kept for comparison: `benchmarks/concurrency_video.py`). Each request is one operation (OP, `segserve.common.video_ops.TrackerOp`):

  0 FRAMES   FRAMES [1, F, H, W, 3] uint8: append frames (the START request carries the first ones)
  1 PROMPT   FRAME_INDEX, OBJ_IDS [1, O], POINT_COORDS [1, O, N, 2] (model frame; labels PAD_LABEL pad
             shorter prompts), POINT_LABELS [1, O, N]: prompts, then run that frame. An object
             whose labels are all padding is a mask prompt: it takes the next of MASKS [1, K, H, W]
             (uint8, nonzero = object, at the frames' size), in request order
  2 STEP     FRAME_INDEX, REVERSE: one propagation step (the orchestrator walks the frames, one
             request each, so steps of many sessions share execute() calls: Oldest batching).
             The STEPs of different sessions in one execute() are computed together
             (`VideoTracker.step_many`: one graph call per shape group for all their objects),
             each still answered, or refused, on its own
  3 REMOVE   OBJ_IDS [1, 1]
  4 INFO     nothing (with END: close the session)
  5 START_FRAME  the default first frame of a propagation (earliest prompted frame)
  6 GET_FRAME    FRAME_INDEX -> FRAME [1, H, W, 3]: the pixels of one frame (for a text prompt:
             the orchestrator runs Grounding DINO on them rather than keeping a second copy)

Every response carries NUM_FRAMES, FRAME_SIZE, OUT_OBJ_IDS; PROMPT and STEP also OUT_FRAME_INDEX,
OBJECT_SCORES and MASKS_RLE (COCO RLE at the frames' size).

Refusals are typed (`segserve.common.status`; error boundary and logging in `triton_models.common`).
The instance evicts sessions idle longer than `session_ttl_s`; Triton's own idle limit is set a
margin above it, so a request for a session this instance does not hold (ended, expired, refused
on START, or the server restarted) reaches the model and is answered NOT_FOUND, the only NOT_FOUND
this model sends. Caps on sessions, objects, frames and bytes (per session, and `max_total_bytes`
for all the sessions of the instance together) answer RESOURCE_EXHAUSTED; a refused request leaves
its session as it was.
"""
from __future__ import annotations

import json
import time
import traceback
from functools import partial

import numpy as np
import triton_python_backend_utils as pb_utils

from segserve.common import rle, sam2_transforms
from segserve.common.status import INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ModelRefusal
from segserve.common.video_ops import PAD_LABEL, TrackerOp
from segserve.triton_models.common import (answer, optional_input, parameters, release_metrics, repository_root,
                                           scalar)
from segserve.triton_models.graph_runner import GraphSettings, describe
from segserve.triton_models.sam2_video_core import GRAPH_OUTPUTS, LocalGraphs, StepRequest, VideoSession, VideoTracker


def _graphs(args, params: dict[str, str]):
    kind = params.get("graphs", "inprocess")
    if kind == "bls":
        from segserve.triton_models.bls import BlsGraphs

        return BlsGraphs(GRAPH_OUTPUTS)
    if kind == "inprocess":
        root = repository_root(args)
        graphs = LocalGraphs.from_repository(root, settings=GraphSettings.from_parameters(params, root))
        for name, runner in graphs.runners.items():
            pb_utils.Logger.log_info(f"{args['model_name']}: {describe(name, runner)}")
        return graphs
    raise ValueError(f"parameter graphs: {kind!r} is neither 'inprocess' nor 'bls'")


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.name = args["model_name"]
        self.ttl_s = float(params.get("session_ttl_s", "600"))
        self.max_sessions = int(params.get("max_sessions", "16"))
        self.mask_threshold = float(params.get("mask_threshold", "0.0"))
        config = json.loads(params["video_config"])
        self.tracker = VideoTracker(_graphs(args, params), config, max_objects=int(params.get("max_objects", "16")),
                                    max_frames=int(params.get("max_frames", "2000")),
                                    max_frame_bytes=int(params.get("max_frame_bytes", str(1 << 30))),
                                    max_memory_bytes=int(params.get("max_memory_bytes", str(2 << 30))),
                                    max_total_bytes=int(params.get("max_total_bytes", str(8 << 30))),
                                    held_bytes=self._held_bytes,
                                    batch_objects=params.get("batch_objects", "true").lower() == "true")
        self.sessions: dict[int, VideoSession] = {}
        self.metric_family = pb_utils.MetricFamily(name="segserve_triton_video_sessions",
                                                   description="SAM 2 video sessions held in this model instance",
                                                   kind=pb_utils.MetricFamily.GAUGE)
        self.sessions_gauge = self.metric_family.Metric(labels={"model": args["model_name"],
                                                                "instance": args["model_instance_name"]})
        self.together_family = pb_utils.MetricFamily(
            name="segserve_triton_video_steps_together",
            description="STEP requests computed together with other sessions' STEPs in one execute()",
            kind=pb_utils.MetricFamily.COUNTER)
        self.together_counter = self.together_family.Metric(labels={"model": args["model_name"],
                                                                    "instance": args["model_instance_name"]})

    def finalize(self):
        release_metrics(self, "sessions_gauge", "together_counter", "metric_family", "together_family")

    def execute(self, requests):
        self._evict_expired()
        stepped = {}
        if self.tracker.batch_objects:
            try:
                stepped = self._steps_together(requests)
            except Exception:  # each step is answered on its own: a fault here is a bug, logged, not fatal
                pb_utils.Logger.log_error(f"{self.name}: steps together failed\n{traceback.format_exc()}")
        responses = []
        for index, request in enumerate(requests):
            corrid = int(scalar(request, "CORRID"))
            handle = partial(self._handle, corrid=corrid, stepped=stepped.get(index))
            responses.append(answer(request, handle, self.name, f" (sequence {corrid})"))
            if scalar(request, "END") and self.sessions.pop(corrid, None) is not None:
                pb_utils.Logger.log_verbose(f"{self.name}: closed sequence {corrid}")
        self.sessions_gauge.set(len(self.sessions))
        return responses

    def _held_bytes(self) -> int:
        return sum(s.held_bytes for s in self.sessions.values())

    def _evict_expired(self) -> None:
        now = time.monotonic()
        for corrid in [c for c, s in self.sessions.items() if now - s.last_used > self.ttl_s]:
            del self.sessions[corrid]
            pb_utils.Logger.log_verbose(f"{self.name}: sequence {corrid} expired after {self.ttl_s:g} s idle")

    def _steps_together(self, requests) -> dict:
        """The STEPs of different sessions held here, computed together: request index -> its
        FrameResult or the exception that failed it alone. Any other request, and a session's second
        request in this batch, is handled on its own, in order."""
        corrids = [int(scalar(r, "CORRID")) for r in requests]
        chosen = []
        for index, (request, corrid) in enumerate(zip(requests, corrids)):
            if (int(scalar(request, "OP", TrackerOp.INFO)) == TrackerOp.STEP and corrids.count(corrid) == 1
                    and not scalar(request, "START") and not scalar(request, "END") and corrid in self.sessions):
                chosen.append(index)
        if len(chosen) < 2:
            return {}
        steps = []
        for index in chosen:
            request = requests[index]
            session = self.sessions[corrids[index]]
            session.last_used = time.monotonic()
            steps.append(StepRequest(session, int(scalar(request, "FRAME_INDEX", -1)),
                                     bool(scalar(request, "REVERSE", False)), request.is_cancelled))
        results = self.tracker.step_many(steps)
        self.together_counter.increment(len(steps))
        return dict(zip(chosen, results))

    def _handle(self, request, corrid: int, stepped=None):
        op = int(scalar(request, "OP", TrackerOp.INFO))
        frames = optional_input(request, "FRAMES")
        if scalar(request, "START"):
            self.sessions.pop(corrid, None)  # START begins a new sequence under this id
            if frames is None:
                raise ModelRefusal(INVALID_ARGUMENT, "FRAMES are required on the first request of a session")
            if len(self.sessions) >= self.max_sessions:
                raise ModelRefusal(RESOURCE_EXHAUSTED, f"this instance already holds {self.max_sessions} video sessions")
            session = VideoSession()
            self.tracker.add_frames(session, list(frames[0]))
            self.sessions[corrid] = session
        else:
            session = self.sessions.get(corrid)
            if session is None:
                raise ModelRefusal(NOT_FOUND, "this server does not hold the video session (ended, expired, never "
                                              "opened, or the server restarted)")
            session.last_used = time.monotonic()
            if op == TrackerOp.FRAMES:
                if frames is None:
                    raise ModelRefusal(INVALID_ARGUMENT, "FRAMES missing")
                self.tracker.add_frames(session, list(frames[0]))
        session.last_used = time.monotonic()
        outputs = {}
        if op == TrackerOp.PROMPT:
            result = self._prompt(request, session)
        elif op == TrackerOp.STEP:
            if isinstance(stepped, BaseException):
                raise stepped
            result = stepped if stepped is not None else self.tracker.step(
                session, int(scalar(request, "FRAME_INDEX", -1)), bool(scalar(request, "REVERSE", False)),
                cancelled=request.is_cancelled)
        else:
            result = None
            if op == TrackerOp.REMOVE:
                ids = optional_input(request, "OBJ_IDS")
                if ids is None or ids.size != 1:
                    raise ModelRefusal(INVALID_ARGUMENT, "OBJ_IDS must hold one object id")
                self.tracker.remove_object(session, int(ids.reshape(-1)[0]))
            elif op == TrackerOp.START_FRAME:
                outputs["OUT_FRAME_INDEX"] = np.array([[self.tracker.start_frame(session)]], np.int32)
            elif op == TrackerOp.GET_FRAME:
                outputs["FRAME"] = self.tracker.frame(session, int(scalar(request, "FRAME_INDEX", -1)))[None]
        height, width = session.size
        outputs.update({
            "NUM_FRAMES": np.array([[len(session.frames)]], np.int32),
            "FRAME_SIZE": np.array([[height, width]], np.int32),
            "OUT_OBJ_IDS": np.array([[o.obj_id for o in session.objects]], np.int64).reshape(1, -1),
        })
        if result is not None:
            binary = sam2_transforms.masks_from_logits(result.low_res_masks, (height, width), self.mask_threshold)
            outputs["OUT_FRAME_INDEX"] = np.array([[result.frame_index]], np.int32)
            outputs["OUT_OBJ_IDS"] = np.array([result.obj_ids], np.int64).reshape(1, -1)
            outputs["OBJECT_SCORES"] = result.object_scores.reshape(1, -1).astype(np.float32)
            outputs["MASKS_RLE"] = np.array([[rle.encode(m)["counts"].encode() for m in binary]], dtype=object).reshape(1, -1)
        wanted = set(request.requested_output_names()) or set(outputs)
        return pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items() if k in wanted])

    def _prompt(self, request, session: VideoSession):
        ids = optional_input(request, "OBJ_IDS")
        coords = optional_input(request, "POINT_COORDS")
        labels = optional_input(request, "POINT_LABELS")
        if ids is None or coords is None or labels is None:
            raise ModelRefusal(INVALID_ARGUMENT, "OBJ_IDS, POINT_COORDS and POINT_LABELS are required")
        ids, coords, labels = ids.reshape(-1), coords[0], labels[0]
        if coords.ndim != 3 or coords.shape[2] != 2 or labels.shape != coords.shape[:2] or len(ids) != len(coords):
            raise ModelRefusal(INVALID_ARGUMENT, "POINT_COORDS [O, N, 2], POINT_LABELS [O, N] and OBJ_IDS [O] must match")
        masks = optional_input(request, "MASKS")
        masks = list(masks[0]) if masks is not None else []
        prompts = []
        for obj_coords, obj_labels in zip(coords, labels):
            keep = obj_labels != PAD_LABEL
            if keep.any():
                prompts.append((obj_coords[keep].astype(np.float32), obj_labels[keep].astype(np.int32)))
            elif masks:
                prompts.append(np.asarray(masks.pop(0)))
            else:
                raise ModelRefusal(INVALID_ARGUMENT, "an object without points needs a mask in MASKS")
        if masks:
            raise ModelRefusal(INVALID_ARGUMENT, "more MASKS than objects without points")
        return self.tracker.add_prompts(session, int(scalar(request, "FRAME_INDEX", -1)), [int(i) for i in ids], prompts,
                                        cancelled=request.is_cancelled)
