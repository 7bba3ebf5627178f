"""SAM 2 video tracking state and step, over an array namespace (no torch, no Triton).

This is transformers' `Sam2VideoModel.forward` / `propagate_in_video_iterator` with its
`Sam2VideoInferenceSession` state, rewritten over the five exported graphs
(`segserve/export/sam2_video.py`), rule for rule:

- an object's output on a frame is a *conditioning* output when the frame got prompts before the
  object was tracked on it, else a non-conditioning one (a correction on an already tracked frame
  is stored as non-conditioning, as transformers does);
- memory for a non-initial frame: the conditioning outputs (all, or the `max_cond_frame_num`
  temporally closest: the closest before, the closest after, then by distance), at temporal index 0,
  plus the non-conditioning outputs of the `num_maskmem - 1` previous frames (following frames when
  tracking backwards) at temporal index 1..num_maskmem-1 (an unselected conditioning output stands
  in for a missing one);
- object pointers: every conditioning output not in the future (in tracking direction), with its
  signed temporal distance, then the non-conditioning outputs of up to
  `min(num_frames, max_object_pointers_in_encoder) - 1` previous frames; distances are normalised
  by that count minus one before the sine encoding;
- multimask output on initial conditioning frames (and on tracked frames when
  `multimask_output_for_tracking`) when the click count is within [min, max];
- memory is encoded for every object computed on the frame in one batch, binarising the masks when
  any of them came from clicks (or a mask prompt), and stored in bfloat16 precision;
- a mask prompt replaces the object's clicks on that frame (and clicks replace a mask), as the
  processor does; the mask, resized to the model's square and thresholded as the processor does,
  is the frame's output as it is (`_use_mask_as_output`), with no memory conditioning.

Batching (`batch_objects`, the default): a step's objects go through memory attention and the
decoder together, one call per group of objects with the same shapes (memory attention: the number
of memories and of object pointers; the decoder: the number of points, since padding would add
prompt tokens and change the result), and the memory encoder takes them all in one call;
`step_many` computes the steps of several sessions together the same way (their frames through
the encoder in one call, their objects grouped across sessions). The graphs compute every object
on its own inside a call, so the results equal the one-call-per-object path's (`batch_objects=False`,
kept for comparison) bit for bit on ONNX Runtime (tests/test_video_batching.py).

Arrays: the graphs run in process (`LocalGraphs`: ONNX Runtime or OpenVINO, numpy) or as Triton models through
BLS (`triton_models.bls.BlsGraphs`: numpy for outputs on the host, CuPy for outputs on a GPU). The
state built from graph outputs (encoder feature cache, memory features and positions, object
pointers, low-res masks) stays in the outputs' array module (`array_namespace`), so in the fleet it
never leaves the GPU; only a step's low-res masks and scores come to the host (`FrameResult`).
Whatever is kept is copied out of the graph's output buffer (`.copy()`: on the device there), so a
runner may reuse its buffers and BLS outputs do not sit in Triton's memory pool.

Refusals raise `ModelRefusal` (`segserve.common.status`). One refused or failing request never
changes a session: every check runs before the first change, `step` computes a frame's outputs
aside and stores them only when all of them are computed and fit the caps, and `add_prompts` puts
the session back as it was if its step fails.

Bytes: each session counts the bytes it holds (`frame_bytes`: the frames; `memory_bytes`: every
stored output, i.e. memory features in bfloat16, object pointers and the conditioning outputs'
low-res masks), kept up to date on every change. Caps: per session `max_frame_bytes` and
`max_memory_bytes`, and `max_total_bytes` for all the sessions of one model instance together
(`held_bytes()`, given by the instance). A request that would go past a cap is refused
RESOURCE_EXHAUSTED before anything is stored. Not counted: the encoder features of the last frame
run, one per session (a cache, about 20 MiB at hiera-tiny 1024²).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from segserve.common import sam2_transforms
from segserve.common.status import CANCELLED, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ModelRefusal

if TYPE_CHECKING:
    from segserve.triton_models.graph_runner import GraphSettings

GRAPH_NAMES = ("sam2_video_image_encoder", "sam2_video_memory_attention", "sam2_video_decoder",
               "sam2_video_memory_encoder", "sam2_video_mask_prompt")
# Each graph's outputs (`segserve/export/sam2_video.py`), the names a BLS call requests.
_MASK_OUTPUTS = ("low_res_mask", "high_res_mask", "object_pointer", "object_score_logits")
GRAPH_OUTPUTS = {
    "sam2_video_image_encoder": ("feat_s0", "feat_s1", "vision_feat", "vision_feat_no_memory", "vision_pos"),
    "sam2_video_memory_attention": ("pix_feat",),
    "sam2_video_decoder": _MASK_OUTPUTS,
    "sam2_video_memory_encoder": ("maskmem_features", "maskmem_pos"),
    "sam2_video_mask_prompt": _MASK_OUTPUTS,
}


def array_namespace(*arrays: Any):
    """numpy, or CuPy when any of `arrays` is a CuPy array (CuPy is imported only then)."""
    for a in arrays:
        if type(a).__module__.partition(".")[0] == "cupy":
            import cupy

            return cupy
    return np


def to_host(a: Any) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else a.get()


def _join(how: str, arrays: list, **kwargs):
    """`xp.stack` / `xp.concatenate` of arrays that may come from different devices."""
    xp = array_namespace(*arrays)
    return getattr(xp, how)([xp.asarray(a) for a in arrays], **kwargs)


def propagation_order(start: int, num_frames: int, reverse: bool, max_frames: int | None = None) -> list[int]:
    """Frames `propagate_in_video_iterator` visits from `start` (inclusive)."""
    max_frames = num_frames if max_frames is None else max_frames
    if reverse:
        end = max(start - max_frames, 0)
        return list(range(start, end - 1, -1)) if start > 0 else []
    end = min(start + max_frames, num_frames - 1)
    return list(range(start, end + 1))


def bfloat16_bits(x):
    """float32 -> the nearest bfloat16 (ties to even, as torch's `.to(bfloat16)`), as uint16 bits."""
    xp = array_namespace(x)
    bits = xp.ascontiguousarray(x, dtype=xp.float32).view(xp.uint32).astype(xp.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(xp.uint16)


def bfloat16_to_float32(bits):
    xp = array_namespace(bits)
    return (bits.astype(xp.uint32) << 16).view(xp.float32)


def bfloat16_round(x):
    """float32 -> nearest bfloat16 value, returned as float32."""
    return bfloat16_to_float32(bfloat16_bits(x))


@dataclass
class FrameOutput:
    """Arrays of the graphs' array module (numpy or CuPy)."""
    pred_masks: Any | None  # [1, 1, L, L] low-res logits (kept for conditioning outputs only)
    object_pointer: Any  # [1, C]
    object_score: Any  # [1, 1]
    maskmem_features: Any | None = None  # [mem, h, w] bfloat16 bits (uint16): half the bytes
    maskmem_pos: Any | None = None  # [mem, h, w]

    @property
    def nbytes(self) -> int:
        """Bytes this output holds on its own (the memory position encoding is shared)."""
        return sum(a.nbytes for a in (self.pred_masks, self.object_pointer, self.maskmem_features) if a is not None)


@dataclass
class TrackedObject:
    obj_id: int
    points: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # frame -> coords [N,2], labels [N]
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> {0, 1} float32 [S, S] (model square)
    cond: dict[int, FrameOutput] = field(default_factory=dict)
    non_cond: dict[int, FrameOutput] = field(default_factory=dict)
    tracked: dict[int, bool] = field(default_factory=dict)  # frame -> tracked in reverse


@dataclass
class VideoSession:
    frames: list[np.ndarray] = field(default_factory=list)  # uint8 RGB, original size
    objects: list[TrackedObject] = field(default_factory=list)
    new_inputs: list[int] = field(default_factory=list)
    feature_cache: tuple[int, dict[str, Any]] | None = None  # graphs' array module
    last_used: float = field(default_factory=time.monotonic)
    frame_bytes: int = 0  # bytes of `frames`
    memory_bytes: int = 0  # bytes of every stored FrameOutput (`FrameOutput.nbytes`)

    @property
    def size(self) -> tuple[int, int] | None:
        return None if not self.frames else self.frames[0].shape[:2]

    def object(self, obj_id: int) -> TrackedObject | None:
        return next((o for o in self.objects if o.obj_id == obj_id), None)

    @property
    def held_bytes(self) -> int:
        return self.frame_bytes + self.memory_bytes

    def recount(self) -> tuple[int, int]:
        """(frame bytes, memory bytes) counted from scratch: what the counters must equal."""
        return (sum(f.nbytes for f in self.frames),
                sum(out.nbytes for o in self.objects for d in (o.cond, o.non_cond) for out in d.values()))


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


@dataclass
class FrameResult:
    """On the host: what a response needs."""
    frame_index: int
    obj_ids: list[int]
    low_res_masks: np.ndarray  # [O, L, L]
    object_scores: np.ndarray  # [O]


class LocalGraphs:
    """The graphs in process (`graph_runner`: ONNX Runtime or OpenVINO, per graph), from
    `<repository>/<name>/1/model.onnx` or explicit paths. `settings` (`GraphSettings`): each graph's
    runtime and precision, the threads and OpenVINO's compiled-model cache; default ONNX Runtime fp32.
    `optimization` is ONNX Runtime's level: "basic" (constant folding, redundant nodes) keeps
    PyTorch's arithmetic; the extended fusions change rounding slightly, and the memory bank (stored
    in bfloat16) feeds errors back frame after frame."""

    def __init__(self, paths: dict[str, Path], threads: int = 0, optimization: str = "basic",
                 settings: "GraphSettings | None" = None):
        from segserve.triton_models.graph_runner import GraphSettings

        settings = settings or GraphSettings(threads=threads)
        self.runners = {name: settings.open(name, Path(paths[name]), optimization) for name in GRAPH_NAMES}

    @classmethod
    def from_repository(cls, root: Path, threads: int = 0, optimization: str = "basic",
                        settings: "GraphSettings | None" = None) -> "LocalGraphs":
        return cls({n: Path(root) / n / "1" / "model.onnx" for n in GRAPH_NAMES}, threads, optimization, settings)

    @classmethod
    def from_artifacts(cls, artifacts: Path, threads: int = 0, optimization: str = "basic",
                       settings: "GraphSettings | None" = None) -> "LocalGraphs":
        return cls({n: Path(artifacts) / f"{n}.onnx" for n in GRAPH_NAMES}, threads, optimization, settings)

    @property
    def sessions(self) -> dict[str, Any]:
        """The ONNX Runtime sessions of the graphs that run on it (`OrtGraphs`' attribute)."""
        return {name: r.session for name, r in self.runners.items() if r.runtime == "onnxruntime"}

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runners[name].run(feeds)


OrtGraphs = LocalGraphs  # the former name (tests, benchmarks)


class VideoTracker:
    def __init__(self, graphs, config: dict[str, Any], max_objects: int = 16, max_frames: int = 2000,
                 max_frame_bytes: int = 1 << 30, max_memory_bytes: int = 2 << 30, max_total_bytes: int | None = None,
                 held_bytes: Callable[[], int] | None = None, batch_objects: bool = True):
        """`graphs`: anything with `run(name, feeds) -> {output: array}` (`LocalGraphs`, `BlsGraphs`).
        `max_total_bytes` bounds `held_bytes()`, the bytes held by every session of the model
        instance together (frames + memory banks), after any request; None: no total cap.
        `batch_objects`: all objects of a frame (and the frames of `step_many`'s sessions) share
        each graph call; False: one call per object (and per frame), the path before batching."""
        self.graphs = graphs
        self.batch_objects = batch_objects
        self.image_size = int(config["image_size"])
        self.num_maskmem = int(config.get("num_maskmem", 7))
        self.max_pointers = int(config.get("max_object_pointers_in_encoder", 16))
        self.max_cond_frames = int(config.get("max_cond_frame_num", -1))
        self.multimask_in_sam = bool(config.get("multimask_output_in_sam", True))
        self.multimask_tracking = bool(config.get("multimask_output_for_tracking", True))
        self.multimask_min = int(config.get("multimask_min_pt_num", 0))
        self.multimask_max = int(config.get("multimask_max_pt_num", 1))
        self.max_objects = max_objects
        self.max_frames = max_frames
        self.max_frame_bytes = max_frame_bytes
        self.max_memory_bytes = max_memory_bytes
        self.max_total_bytes = max_total_bytes
        self.held_bytes = held_bytes
        self._memory_pos = None  # shared by every stored output (graphs' array module)
        # Bytes one stored output takes, by kind (conditioning outputs keep their low-res mask):
        # the shapes are fixed by the model, so after the first step this predicts a step's growth.
        self._output_nbytes: dict[bool, int] = {}

    # ---- byte caps -------------------------------------------------------------------------
    def _check_total(self, extra: int, what: str) -> None:
        if self.max_total_bytes is None or self.held_bytes is None or extra <= 0:
            return
        held = self.held_bytes()
        if held + extra > self.max_total_bytes:
            raise ModelRefusal(RESOURCE_EXHAUSTED, f"{what} would take {_size(extra)} more; the video sessions of this "
                                                   f"server hold {_size(held)} of their {_size(self.max_total_bytes)} "
                                                   "budget: end some sessions")

    def _check_memory(self, session: VideoSession, extra: int) -> None:
        if session.memory_bytes + extra > self.max_memory_bytes:
            raise ModelRefusal(RESOURCE_EXHAUSTED, f"the session's memory bank would pass {_size(self.max_memory_bytes)}")
        self._check_total(extra, "this frame's memory")

    # ---- session edits ---------------------------------------------------------------------
    def add_frames(self, session: VideoSession, frames: list[np.ndarray]) -> int:
        for frame in frames:
            if frame.ndim != 3 or frame.shape[2] != 3 or min(frame.shape[:2]) == 0:
                raise ModelRefusal(INVALID_ARGUMENT, f"frames must be RGB [H, W, 3], got {list(frame.shape)}")
            expected = session.size or frames[0].shape[:2]
            if frame.shape[:2] != tuple(expected):
                raise ModelRefusal(INVALID_ARGUMENT, f"frame of size {frame.shape[1]}x{frame.shape[0]} in a video of "
                                                     f"{expected[1]}x{expected[0]}: every frame must have the same size")
        if len(session.frames) + len(frames) > self.max_frames:
            raise ModelRefusal(RESOURCE_EXHAUSTED, f"a session holds at most {self.max_frames} frames")
        extra = sum(int(np.prod(f.shape)) for f in frames)  # uint8 once stored
        if session.frame_bytes + extra > self.max_frame_bytes:
            raise ModelRefusal(RESOURCE_EXHAUSTED, f"a session holds at most {_size(self.max_frame_bytes)} of frames")
        self._check_total(extra, f"{len(frames)} more frame{'' if len(frames) == 1 else 's'}")
        stored = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
        session.frames.extend(stored)
        session.frame_bytes += sum(f.nbytes for f in stored)
        return len(session.frames)

    def add_prompts(self, session: VideoSession, frame_idx: int, obj_ids: list[int], prompts: list,
                    cancelled: Callable[[], bool] | None = None) -> FrameResult:
        """Per object, points (model frame, boxes as corners labelled 2/3 first) or a binary mask at the
        frames' size, for several objects on one frame; replaces each object's earlier prompts on that
        frame, then runs the frame. Refused or failing, it leaves the session as it was."""
        self._check_frame(session, frame_idx)
        if len(set(obj_ids)) != len(obj_ids) or len(obj_ids) != len(prompts) or not obj_ids:
            raise ModelRefusal(INVALID_ARGUMENT, "give each object id once, with its prompt")
        new_ids = [i for i in obj_ids if session.object(i) is None]
        if len(session.objects) + len(new_ids) > self.max_objects:
            raise ModelRefusal(RESOURCE_EXHAUSTED, f"a session tracks at most {self.max_objects} objects")
        converted = []
        for obj_id, prompt in zip(obj_ids, prompts):
            if isinstance(prompt, np.ndarray):
                if prompt.shape != tuple(session.size):
                    raise ModelRefusal(INVALID_ARGUMENT, f"the mask of object {obj_id} is {list(prompt.shape)}, "
                                                         f"the frames are {list(session.size)}")
                converted.append(sam2_transforms.mask_to_model(prompt != 0, self.image_size))
                continue
            coords, labels = prompt
            if coords.ndim != 2 or coords.shape[1] != 2 or labels.shape != coords.shape[:1] or len(labels) == 0:
                raise ModelRefusal(INVALID_ARGUMENT, "each object needs points [N, 2] with N labels")
            converted.append((coords.astype(np.float32), labels.astype(np.int32)))
        # What this request changes, to put back if the step is refused or fails.
        objects, new_inputs = list(session.objects), list(session.new_inputs)
        prompts_before = {o.obj_id: (o.points.get(frame_idx), o.masks.get(frame_idx)) for o in session.objects
                          if o.obj_id in obj_ids}
        try:
            for obj_id in new_ids:
                session.objects.append(TrackedObject(obj_id))
            for obj_id, prompt in zip(obj_ids, converted):
                obj = session.object(obj_id)
                if isinstance(prompt, np.ndarray):
                    obj.masks[frame_idx] = prompt
                    obj.points.pop(frame_idx, None)
                else:
                    obj.points[frame_idx] = prompt
                    obj.masks.pop(frame_idx, None)
            session.new_inputs = list(obj_ids)
            return self.step(session, frame_idx, cancelled=cancelled)
        except BaseException:
            session.objects[:] = objects
            session.new_inputs = new_inputs
            for obj_id, (points, mask) in prompts_before.items():
                obj = session.object(obj_id)
                for store, value in ((obj.points, points), (obj.masks, mask)):
                    if value is None:
                        store.pop(frame_idx, None)
                    else:
                        store[frame_idx] = value
            raise

    def remove_object(self, session: VideoSession, obj_id: int) -> None:
        obj = session.object(obj_id)
        if obj is None:
            # Not NOT_FOUND: on the tracker that code means "this server does not hold the session".
            raise ModelRefusal(INVALID_ARGUMENT, f"object {obj_id} is not tracked in this session")
        session.objects.remove(obj)
        session.memory_bytes -= sum(out.nbytes for d in (obj.cond, obj.non_cond) for out in d.values())
        if obj_id in session.new_inputs:
            session.new_inputs.remove(obj_id)

    def start_frame(self, session: VideoSession) -> int:
        frames = [f for o in session.objects for f in o.cond]
        if not frames:
            raise ModelRefusal(INVALID_ARGUMENT, "no prompts yet: add prompts on a frame before propagating")
        return min(frames)

    def frame(self, session: VideoSession, frame_idx: int) -> np.ndarray:
        self._check_frame(session, frame_idx)
        return session.frames[frame_idx]

    def _check_frame(self, session: VideoSession, frame_idx: int) -> None:
        if not 0 <= frame_idx < len(session.frames):
            raise ModelRefusal(INVALID_ARGUMENT, f"frame_index {frame_idx} is out of range: the session holds "
                                                 f"{len(session.frames)} frames")

    # ---- one frame -------------------------------------------------------------------------
    def step(self, session: VideoSession, frame_idx: int, reverse: bool = False,
             cancelled: Callable[[], bool] | None = None) -> FrameResult:
        """`Sam2VideoModel.forward(inference_session, frame_idx, reverse)`. The new outputs are
        computed aside and stored only once all of them exist and fit the byte caps; `cancelled`
        is asked before each graph call (CANCELLED, nothing stored)."""
        result = self.step_many([StepRequest(session, frame_idx, reverse, cancelled)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def step_many(self, requests: list["StepRequest"]) -> list["FrameResult | BaseException"]:
        """One frame of each request's session (the sessions all different), computed together:
        with `batch_objects`, every object of a frame goes through memory attention and the
        decoder in one call per shape group (and, across sessions, the frames through the encoder
        in one call), instead of one call per object. Each request's result, or the exception that
        failed it alone: a refusal, a cancellation or a failed graph call never touches the other
        requests (a failed call shared by several requests is retried for each on its own)."""
        steps: list[_Step] = []
        for request in requests:
            step = _Step(request)
            try:
                self._plan(step)
            except BaseException as error:  # noqa: BLE001 - the request's own outcome
                step.error = error
            steps.append(step)
        self._compute(steps)
        results: list[FrameResult | BaseException] = []
        for step in steps:
            if step.error is None:
                try:
                    results.append(self._store(step))
                    continue
                except BaseException as error:  # noqa: BLE001
                    step.error = error
            results.append(step.error)
        return results

    def _plan(self, step: "_Step") -> None:
        """Which objects reuse their conditioning output and which are computed (and how), and
        the caps predicted from earlier steps; nothing changes yet."""
        session, frame_idx, reverse = step.request.session, step.request.frame_idx, step.request.reverse
        self._check_frame(session, frame_idx)
        if not session.objects:
            raise ModelRefusal(INVALID_ARGUMENT, "no objects to track: add prompts first")
        for obj in session.objects:
            has_new = obj.obj_id in session.new_inputs
            if not has_new and frame_idx in obj.cond:
                step.entries.append(obj.cond[frame_idx])
                continue
            is_init, points, mask = False, None, None
            if has_new:
                is_init = frame_idx not in obj.tracked
                if is_init:
                    reverse = False  # as transformers: also for the objects after this one
                points = obj.points.get(frame_idx)
                mask = obj.masks.get(frame_idx)
            job = _Job(step, obj, is_init, points, mask, reverse)
            step.entries.append(job)
            step.jobs.append(job)
        # Before any work: the growth predicted from earlier steps' outputs must fit.
        if all(job.is_init in self._output_nbytes for job in step.jobs):
            self._check_memory(session, sum(self._output_nbytes[job.is_init]
                                            - self._replaced_nbytes(job.obj, job.is_init, frame_idx)
                                            for job in step.jobs))

    # The graph calls of a batch of steps. Each phase groups the jobs that can share a call (one job
    # per call without `batch_objects`: today's one-object-at-a-time path, kept for comparison).
    def _compute(self, steps: list["_Step"]) -> None:
        for step in steps:
            self._live(step)  # a request cancelled before any work
        self._run_grouped([s for s in steps if s.error is None and s.jobs], lambda s: (), self._encode_frames)
        jobs = [j for s in steps if s.error is None for j in s.jobs]
        self._run_grouped([j for j in jobs if j.mask is not None], None, self._mask_prompts)
        tracked = []
        for job in jobs:
            if job.mask is None and not job.is_init and job.step.error is None:
                try:
                    job.memory = self._memory_inputs(job)
                    tracked.append(job)
                except BaseException as error:  # noqa: BLE001
                    job.step.error = error
        one = lambda _: 1  # noqa: E731
        self._run_grouped(tracked, lambda j: (len(j.memory["tpos"]), len(j.memory["pointer_tpos"])), self._attend, one)
        self._run_grouped([j for j in jobs if j.mask is None],
                          lambda j: 2 if j.points is None else len(j.points[1]) + 1, self._decode, one)
        if self.num_maskmem:
            # binarised or not is decided per step (any object of it prompted), so it keys the group
            self._run_grouped([s for s in steps if s.error is None and s.jobs],
                              lambda s: any(j.points is not None or j.mask is not None for j in s.jobs),
                              self._encode_memories, lambda s: len(s.jobs))

    def _run_grouped(self, items: list, key: Callable[[Any], Any] | None, run: Callable[[list], None],
                     size: Callable[[Any], int] | None = None) -> None:
        """`run(group)` per group of `items` (jobs or steps) with equal `key` (None: never grouped),
        each group cut into calls of at most `max_objects` objects (`size(item)`; None: no cap).
        Items of failed or cancelled steps are dropped first; a failure fails the call's steps,
        unless the call spans several steps: then each step's items are run again on their own."""
        groups: dict[Any, list] = {}
        for index, item in enumerate(items):
            grouped = self.batch_objects and key is not None
            groups.setdefault(key(item) if grouped else ("alone", index), []).append(item)
        for group in groups.values():
            calls, total = [[]], 0
            for item in group:
                weight = size(item) if size else 0
                if calls[-1] and total + weight > self.max_objects:
                    calls.append([])
                    total = 0
                calls[-1].append(item)
                total += weight
            for call in calls:
                self._run_call(call, run)

    def _run_call(self, call: list, run: Callable[[list], None]) -> None:
        call = [item for item in call if self._live(_step_of(item))]
        if not call:
            return
        try:
            run(call)
        except BaseException as error:  # noqa: BLE001
            owners = list({id(_step_of(i)): _step_of(i) for i in call}.values())
            if len(owners) == 1:
                owners[0].error = error
                return
            for owner in owners:
                own = [i for i in call if _step_of(i) is owner]
                try:
                    run(own)
                except BaseException as own_error:  # noqa: BLE001
                    owner.error = own_error

    @staticmethod
    def _live(step: "_Step") -> bool:
        cancelled = step.request.cancelled
        if step.error is None and cancelled is not None and cancelled():
            step.error = ModelRefusal(CANCELLED, "the request was cancelled")
        return step.error is None

    def _store(self, step: "_Step") -> FrameResult:
        """The step's response, then its outputs stored (when the exact growth fits the caps)."""
        session, frame_idx = step.request.session, step.request.frame_idx
        masks, scores = [], []
        for entry in step.entries:
            out = entry.out if isinstance(entry, _Job) else entry
            masks.append(out.pred_masks[0, 0])
            scores.append(out.object_score.reshape(-1)[:1])
        # One transfer each to the host: all a response needs.
        result = FrameResult(frame_idx, [o.obj_id for o in session.objects], to_host(_join("stack", masks)),
                             to_host(_join("concatenate", scores)).astype(np.float32))
        for job in step.jobs:
            if not job.is_init:
                job.out.pred_masks = None  # only conditioning outputs are ever returned again
            self._output_nbytes[job.is_init] = job.out.nbytes
        # The exact growth must fit too; then store everything.
        growth = sum(j.out.nbytes - self._replaced_nbytes(j.obj, j.is_init, frame_idx) for j in step.jobs)
        self._check_memory(session, growth)
        for job in step.jobs:
            (job.obj.cond if job.is_init else job.obj.non_cond)[frame_idx] = job.out
            if job.points is not None or job.mask is not None:
                session.new_inputs.remove(job.obj.obj_id)
        for entry in step.entries:
            if isinstance(entry, _Job) and not entry.is_init:
                entry.obj.tracked[frame_idx] = entry.reverse
        session.memory_bytes += growth
        return result

    @staticmethod
    def _replaced_nbytes(obj: TrackedObject, is_init: bool, frame_idx: int) -> int:
        old = (obj.cond if is_init else obj.non_cond).get(frame_idx)
        return 0 if old is None else old.nbytes

    # ---- the graph calls ---------------------------------------------------------------------
    def _encode_frames(self, steps: list["_Step"]) -> None:
        """The frame features of each step (the session's cache, or one encoder call for all the
        frames not cached)."""
        missing = [s for s in steps if not (s.request.session.feature_cache is not None
                                            and s.request.session.feature_cache[0] == s.request.frame_idx)]
        if missing:
            pixels = np.concatenate([sam2_transforms.preprocess(s.request.session.frames[s.request.frame_idx],
                                                                self.image_size) for s in missing])
            feats = self.graphs.run("sam2_video_image_encoder", {"pixel_values": pixels})
            for i, s in enumerate(missing):
                s.request.session.feature_cache = (s.request.frame_idx, {k: v[i:i + 1].copy() for k, v in feats.items()})
        for s in steps:
            s.feats = s.request.session.feature_cache[1]

    def _mask_prompts(self, jobs: list["_Job"]) -> None:
        """`_use_mask_as_output`: on the raw frame features, whatever the frame's memory (one call
        per mask: mask prompts come one request at a time)."""
        for job in jobs:
            out = self.graphs.run("sam2_video_mask_prompt", {
                "vision_feat": job.step.feats["vision_feat"], "mask": job.mask[None, None].astype(np.float32)})
            job.out, job.high_res = self._outputs(out, 1)[0]

    @staticmethod
    def _frame_input(jobs: list["_Job"], name: str):
        """A frame feature for a call: once ([1, ...], broadcast by the graph) when every job is
        on the same step's frame, else one per job."""
        steps = list({id(j.step): j.step for j in jobs}.values())
        if len(steps) == 1:
            return steps[0].feats[name]
        return _join("concatenate", [j.step.feats[name] for j in jobs])

    def _decode(self, jobs: list["_Job"]) -> None:
        pix_feat, coords, labels, multimask = [], [], [], []
        for job in jobs:
            pix_feat.append(job.step.feats["vision_feat_no_memory"] if job.is_init else job.pix_feat)
            if job.points is None:
                coords.append(np.zeros((2, 2), np.float32))
                labels.append(np.full(2, -1, np.int32))
            else:
                coords.append(np.concatenate([job.points[0], np.zeros((1, 2), np.float32)]))
                labels.append(np.concatenate([job.points[1], np.array([-1], np.int32)]))
            num_points = 0 if job.points is None else len(job.points[1])
            multimask.append(self.multimask_in_sam and (job.is_init or self.multimask_tracking)
                             and self.multimask_min <= num_points <= self.multimask_max)
        out = self.graphs.run("sam2_video_decoder", {
            "pix_feat": pix_feat[0] if len(jobs) == 1 else _join("concatenate", pix_feat),
            "feat_s0": self._frame_input(jobs, "feat_s0"), "feat_s1": self._frame_input(jobs, "feat_s1"),
            "point_coords": np.stack(coords), "point_labels": np.stack(labels),
            "multimask": np.array([1.0 if m else 0.0 for m in multimask], np.float32)})
        for job, (output, high_res) in zip(jobs, self._outputs(out, len(jobs))):
            job.out, job.high_res = output, high_res

    @staticmethod
    def _outputs(out: dict[str, Any], count: int) -> list[tuple[FrameOutput, Any]]:
        """Per object, its output and its high-res mask (for the memory encoder, after the other
        objects), copied out of the graph's buffers."""
        return [(FrameOutput(out["low_res_mask"][i:i + 1].copy(), out["object_pointer"][i:i + 1].copy(),
                             out["object_score_logits"][i:i + 1].copy()),
                 out["high_res_mask"][i:i + 1].copy()) for i in range(count)]

    def _select_cond(self, frame_idx: int, cond: dict[int, FrameOutput]):
        limit = self.max_cond_frames
        if limit == -1 or len(cond) <= limit:
            return cond, {}
        selected = {}
        before = max((t for t in cond if t < frame_idx), default=None)
        if before is not None:
            selected[before] = cond[before]
        after = min((t for t in cond if t >= frame_idx), default=None)
        if after is not None:
            selected[after] = cond[after]
        rest = sorted((t for t in cond if t not in selected), key=lambda t: abs(t - frame_idx))
        selected.update((t, cond[t]) for t in rest[:limit - len(selected)])
        return selected, {t: v for t, v in cond.items() if t not in selected}

    def _memory_inputs(self, job: "_Job") -> dict[str, Any]:
        """One object's memories (bfloat16 bits, positions, temporal indices) and pointers (with
        their normalised temporal offsets), as `_prepare_memory_conditioned_features` selects them."""
        obj, frame_idx, reverse = job.obj, job.step.request.frame_idx, job.reverse
        if not obj.cond:
            raise ModelRefusal(INVALID_ARGUMENT, f"object {obj.obj_id} has no prompted frame to track from")
        selected, unselected = self._select_cond(frame_idx, obj.cond)
        memories = [(0, out) for out in selected.values()]
        for offset in range(self.num_maskmem - 1, 0, -1):
            previous = frame_idx + offset if reverse else frame_idx - offset
            memories.append((offset, obj.non_cond.get(previous, unselected.get(previous))))
        memories = [(o, m) for o, m in memories if m is not None]
        # pointers
        num_frames = len(job.step.request.session.frames)
        max_pointers = min(num_frames, self.max_pointers)
        sign = -1 if reverse else 1
        offsets, pointers = [], []
        for t, out in obj.cond.items():
            if (t >= frame_idx) if reverse else (t <= frame_idx):
                offsets.append((frame_idx - t) * sign)
                pointers.append(out.object_pointer)
        for distance in range(1, max_pointers):
            ref = frame_idx + distance if reverse else frame_idx - distance
            if ref < 0 or ref >= num_frames:
                break
            out = obj.non_cond.get(ref)
            if out is not None:
                offsets.append(distance)
                pointers.append(out.object_pointer)
        return {"features": [m.maskmem_features for _, m in memories], "pos": [m.maskmem_pos for _, m in memories],
                "tpos": [(o - 1) % self.num_maskmem for o, _ in memories], "pointers": pointers,
                "pointer_tpos": (np.array(offsets, np.float32) / np.float32(max(max_pointers - 1, 1))).astype(np.float32)}

    def _attend(self, jobs: list["_Job"]) -> None:
        """Memory attention for objects with the same number of memories and pointers, each on its
        own memories: [B, F, ...] memories, [B, P, C] pointers."""
        count, frames = len(jobs), len(jobs[0].memory["tpos"])
        vision_feat = self._frame_input(jobs, "vision_feat")
        features = bfloat16_to_float32(_join("stack", [f for j in jobs for f in j.memory["features"]]))
        positions = _join("stack", [p for j in jobs for p in j.memory["pos"]])
        pointers = [p for j in jobs for p in j.memory["pointers"]]
        feeds = {
            "vision_feat": vision_feat, "vision_pos": self._frame_input(jobs, "vision_pos"),
            "maskmem_features": features.reshape(count, frames, *features.shape[1:]),
            "maskmem_pos": positions.reshape(count, frames, *positions.shape[1:]),
            "maskmem_tpos": np.array([j.memory["tpos"] for j in jobs], np.int64).reshape(count, frames),
            # no pointer at all (tracked from a future prompt only): an empty host array, wherever the rest is
            "object_pointers": (_join("concatenate", pointers).reshape(count, -1, vision_feat.shape[1]) if pointers
                                else np.zeros((count, 0, vision_feat.shape[1]), np.float32)),
            "pointer_tpos": np.stack([j.memory["pointer_tpos"] for j in jobs]),  # [B, P]
        }
        pix_feat = self.graphs.run("sam2_video_memory_attention", feeds)["pix_feat"]
        for i, job in enumerate(jobs):
            job.pix_feat = pix_feat[i:i + 1].copy()

    def _encode_memories(self, steps: list["_Step"]) -> None:
        """The memory of every object computed on the steps' frames, in one call; the masks
        binarised when any object of the step came from clicks or a mask (the group's key)."""
        jobs = [j for s in steps for j in s.jobs]
        feats = [s.feats["vision_feat"] for s in steps for _ in s.jobs]
        xp = array_namespace(feats[0])
        out = self.graphs.run("sam2_video_memory_encoder", {
            "vision_feat": xp.repeat(feats[0], len(jobs), axis=0) if len(steps) == 1 else _join("concatenate", feats),
            "high_res_masks": _join("concatenate", [j.high_res for j in jobs]),
            "object_score_logits": _join("concatenate", [j.out.object_score.reshape(1, 1) for j in jobs]),
            "binarize": np.array([1.0 if any(j.points is not None or j.mask is not None for j in jobs) else 0.0],
                                 np.float32)})
        features = bfloat16_bits(out["maskmem_features"])
        # The memory position encoding depends only on the shape: one shared copy for every output.
        pos = out["maskmem_pos"][0]
        xp = array_namespace(pos)
        known = self._memory_pos
        if (known is None or array_namespace(known) is not xp or known.shape != pos.shape
                or not bool(xp.array_equal(known, pos))):
            self._memory_pos = pos.copy()
        for i, job in enumerate(jobs):
            job.out.maskmem_features = features[i].copy()
            job.out.maskmem_pos = self._memory_pos


@dataclass
class StepRequest:
    session: VideoSession
    frame_idx: int
    reverse: bool = False
    cancelled: Callable[[], bool] | None = None


@dataclass
class _Step:
    """One request's frame: per object (session order) its reused output or the job computing it."""
    request: StepRequest
    entries: list = field(default_factory=list)  # FrameOutput (reused) or _Job
    jobs: list["_Job"] = field(default_factory=list)
    feats: dict[str, Any] | None = None
    error: BaseException | None = None


@dataclass
class _Job:
    """One object's output to compute on a step's frame."""
    step: _Step
    obj: TrackedObject
    is_init: bool
    points: tuple[np.ndarray, np.ndarray] | None
    mask: np.ndarray | None
    reverse: bool
    memory: dict[str, Any] | None = None
    pix_feat: Any = None
    out: FrameOutput | None = None
    high_res: Any = None


def _step_of(item: "_Step | _Job") -> _Step:
    return item.step if isinstance(item, _Job) else item
