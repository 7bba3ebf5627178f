"""Measuring code shared by the benchmarks (one home: no copies in the scripts).

- `interleaved(cases, rounds, warmup)`: every side warmed up, then `rounds` (>= 5) rounds that run
  each side once (the order rotates per round), so that load from elsewhere on the machine falls on
  all sides alike; `spread(times)`: median, quartiles, min/max of the runs.
- `bf16_autocast()`: the PyTorch bf16 reference, `torch.autocast("cpu", dtype=torch.bfloat16)`;
  `AutocastBf16(model)`: a model run so, its outputs back in fp32 for the same post-processing.
- `build_served(...)`: a segserve repository for one CPU runtime choice (`auto` or ONNX Runtime
  fp32), recording what `auto` resolved to and what each graph's config says.
- `pin_threads(n)`: the same compute threads on both sides (PyTorch here; the served graphs get
  `n` from the builder), recorded in the JSON.
- `TritonWire(stack)`: bytes of the ModelInfer messages the orchestrator really exchanges with Triton.
- `rle_masks(binary)`: the COCO RLE the served side sends, for the in-process sides' post-processing.
- agreement between two segserve outputs of the same requests: `mask_iou`, `iou_summary`,
  `match_detections` (text-to-mask), `segmentation_agreement` (Mask2Former).

No targets here: a benchmark reports figures; goals live in the issues.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

MIN_ROUNDS = 5
AUTO = "auto"  # segserve's default CPU runtime choice
ORT_FP32 = {"cpu_runtime": "onnxruntime", "precision": "fp32"}


def sam2_artifacts(given: Path | None, size: str) -> Path:
    """Where the SAM 2 image benchmarks keep their export (`--artifacts` wins): one folder per size,
    shared by every benchmark that exports that size."""
    if given:
        return Path(given)
    return Path(__file__).resolve().parents[1] / "build" / "bench" / ("sam2_real" if size == "hiera-tiny" else
                                                                      f"sam2_{size}")


def check_rounds(parser, value: int, flag: str) -> None:
    if value < MIN_ROUNDS:
        parser.error(f"{flag} must be at least {MIN_ROUNDS} (median and spread of >= {MIN_ROUNDS} runs)")


def spread(times: list[float], scale: float = 1.0, digits: int = 4) -> dict:
    values = np.asarray(times, dtype=float) * scale
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return {"median": round(float(q50), digits), "q25": round(float(q25), digits), "q75": round(float(q75), digits),
            "min": round(float(values.min()), digits), "max": round(float(values.max()), digits),
            "runs": len(values)}


def percentiles(times: list[float], scale: float = 1.0, digits: int = 3) -> dict:
    values = np.asarray(times, dtype=float) * scale
    q25, q50, q75, q99 = np.percentile(values, [25, 50, 75, 99])
    return {"p50": round(float(q50), digits), "q25": round(float(q25), digits), "q75": round(float(q75), digits),
            "p99": round(float(q99), digits), "min": round(float(values.min()), digits),
            "max": round(float(values.max()), digits), "runs": len(values)}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(cases: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                after: Callable[[str, object], None] | None = None,
                self_timed: tuple[str, ...] = ()) -> dict[str, list[float]]:
    """Seconds per run of each case. `after(name, result)` runs outside the timing (e.g. to close
    what the run opened). A case named in `self_timed` returns (seconds, result): it times only
    its own part of the work (e.g. not the upload before it)."""
    for _ in range(warmup):
        for name, fn in cases.items():
            result = fn()
            if name in self_timed:
                result = result[1]
            if after is not None:
                after(name, result)
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            start = time.perf_counter()
            result = cases[name]()
            seconds = time.perf_counter() - start
            if name in self_timed:
                seconds, result = result
            times[name].append(seconds)
            if after is not None:
                after(name, result)
    return times


def pin_threads(threads: int) -> dict:
    """`threads` intra-op threads for PyTorch, as the served graphs get (ONNX Runtime
    `intra_op_num_threads` / OpenVINO `INFERENCE_NUM_THREADS`, one stream, sequential graph
    execution): so PyTorch's inter-op pool is 1 where it can still be set."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # settable once, before any parallel work
        torch.set_num_interop_threads(1)
    return {"pytorch_intra_op": torch.get_num_threads(), "pytorch_inter_op": torch.get_num_interop_threads(),
            "served_graph_threads": threads}


def rle_masks(binary: np.ndarray) -> list[dict]:
    """Binary masks [..., H, W] -> COCO RLE, as the served side encodes them before answering."""
    from segserve.common import rle

    return [rle.encode(m) for m in np.asarray(binary).reshape(-1, *np.shape(binary)[-2:])]


class TritonWire:
    """Bytes of the ModelInfer requests and responses the orchestrator of a running stack exchanges
    with Triton, measured on the real messages (their serialized protobuf size, the gRPC payload;
    HTTP/2 framing not counted). Only calls made inside `record()` are counted."""

    def __init__(self, stack):
        import threading

        import grpc
        from tritonclient.grpc import service_pb2_grpc

        wire = self
        self._lock = threading.Lock()
        self._recording = False
        self._started = 0
        self.calls: list[tuple[int, int | None]] = []

        class Counter(grpc.UnaryUnaryClientInterceptor):
            def intercept_unary_unary(self, continuation, details, request):
                call = continuation(details, request)
                if wire._recording and details.method.endswith("/ModelInfer"):
                    sent = request.ByteSize()
                    with wire._lock:
                        wire._started += 1

                    def done(future):
                        try:
                            received = future.result().ByteSize()
                        except Exception:  # noqa: BLE001 - a failed call has no response message
                            received = None
                        with wire._lock:
                            wire.calls.append((sent, received))

                    call.add_done_callback(done)
                return call

        for replica in stack.orchestrator.service.pool.replicas():
            client = replica.client
            client._client_stub = service_pb2_grpc.GRPCInferenceServiceStub(
                grpc.intercept_channel(client._channel, Counter()))

    @contextlib.contextmanager
    def record(self):
        with self._lock:
            self.calls, self._started = [], 0
        self._recording = True
        try:
            yield self
        finally:
            self._recording = False

    def summary(self) -> dict:
        deadline = time.monotonic() + 2.0  # a response callback may land just after the RPC returned
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.calls) >= self._started:
                    break
            time.sleep(0.01)
        with self._lock:
            calls = list(self.calls)
        return {"model_infer_calls": len(calls), "request_bytes": sum(s for s, _ in calls),
                "response_bytes": sum(r or 0 for _, r in calls)}


def ratio(numerator: float, denominator: float, digits: int = 3) -> float:
    return round(numerator / denominator, digits) if denominator else float("nan")


@contextlib.contextmanager
def bf16_autocast():
    import torch

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        yield


class AutocastBf16:
    """`model` called under bf16 autocast, its floating-point outputs handed back as fp32, so that the
    reference's own post-processing (numpy, interpolation, thresholds) runs unchanged after it."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        import torch

        with bf16_autocast():
            out = self.model(*args, **kwargs)
        for key, value in list(out.items()):
            if torch.is_tensor(value) and value.is_floating_point():
                out[key] = value.float()
        return out


def machine(threads: int | None = None) -> dict:
    import torch

    from segserve.triton_models.graph_runner import cpu_has_native_bf16

    info = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    with contextlib.suppress(ImportError):
        import openvino

        info["openvino"] = openvino.get_version()
    if threads is not None:
        info["threads_per_side"] = threads
    return info


def builder_has_cpu_runtime() -> bool:
    from segserve.repository.builder import build_repository

    return "cpu_runtime" in inspect.signature(build_repository).parameters


def _graph_settings(repository: Path) -> dict:
    """What the built configs say: each in-process graph's runtime and precision, each model's graph
    threads, and any other runtime or precision parameter or non-Python backend."""
    import json

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    graphs, threads, other = {}, {}, {}
    for path in sorted(Path(repository).glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        params = {k: v.string_value for k, v in config.parameters.items()}
        for graph, choice in json.loads(params.pop("graph_runtime", "{}")).items():
            graphs[graph] = f"{choice.get('runtime')} {choice.get('precision')}"
        if "graph_threads" in params:
            threads[path.parent.name] = int(params.pop("graph_threads"))
        found = {k: v for k, v in params.items() if "runtime" in k or "precision" in k}
        if config.backend and config.backend not in ("python", ""):
            found["backend"] = config.backend
        if found:
            other[path.parent.name] = found
    return {"graphs": graphs, "graph_threads": threads, **({"other": other} if other else {})}


def build_served(artifacts: Path, out: Path, choice: str, **kwargs) -> dict:
    """Build the embedded repository for `choice` ("auto" or "onnxruntime-fp32") and describe it.
    Before the builder has `cpu_runtime`, both choices build its only runtime (ONNX Runtime fp32) and
    the description says so (`fallback`)."""
    from segserve.repository.builder import build_repository
    from segserve.triton_models.graph_runner import resolve

    settings = {"cpu_runtime": AUTO, "precision": None} if choice == AUTO else dict(ORT_FP32)
    supported = builder_has_cpu_runtime()
    if supported:
        build_repository(artifacts, out, "embedded", **settings, **kwargs)
    else:
        build_repository(artifacts, out, "embedded", **kwargs)
    runtime, precision = resolve(settings["cpu_runtime"], settings["precision"]) if supported else ("onnxruntime", "fp32")
    info = {"repository": str(out), "asked": settings, "resolved": {"runtime": runtime, "precision": precision},
            **_graph_settings(out)}
    if not supported:
        info["fallback"] = "build_repository has no cpu_runtime yet: served with ONNX Runtime fp32"
        info["auto_would_resolve_to"] = dict(zip(("runtime", "precision"), resolve(AUTO)))
    return info


def served_choice(info: dict, graph: str) -> tuple[str, str]:
    """(runtime, precision) a built repository serves `graph` with (the builder's per-graph choice,
    e.g. fp32 where the bf16 gate failed), else what its `cpu_runtime` resolved to."""
    choice = info.get("graphs", {}).get(graph)
    if choice:
        runtime, precision = choice.split()
        return runtime, precision
    return info["resolved"]["runtime"], info["resolved"]["precision"]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def iou_summary(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    return {"median": round(float(statistics.median(values)), 5), "min": round(float(min(values)), 5),
            "count": len(values)}


def track_ious(ours: list, reference: list) -> list[float]:
    """Per frame and object, the mask IoU of two tracks [(frame_index, {obj_id: mask})] of the same
    script (frames and objects in the same order)."""
    if [f for f, _ in ours] != [f for f, _ in reference]:
        raise ValueError("the tracks visit different frames")
    return [mask_iou(a[oid], b[oid]) for (_, a), (_, b) in zip(ours, reference) for oid in a]


def _box_iou(a, b) -> float:
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return float(inter / union) if union > 0 else 0.0


def match_detections(ours: list, reference: list, min_iou: float = 0.5) -> dict:
    """Text-to-mask objects (`ObjectResult`s with .box, .detection_score, .phrase, .best.mask)
    matched as sets, greedily by box IoU (query order is tie-sensitive with random weights)."""
    pairs = sorted(((_box_iou(o.box, r.box), i, j) for i, o in enumerate(ours) for j, r in enumerate(reference)),
                   reverse=True)
    used_o, used_r, matched = set(), set(), []
    for value, i, j in pairs:
        if value < min_iou or i in used_o or j in used_r:
            continue
        used_o.add(i)
        used_r.add(j)
        matched.append((value, ours[i], reference[j]))
    deltas = [abs(o.detection_score - r.detection_score) for _, o, r in matched]
    return {
        "objects": len(ours), "reference_objects": len(reference), "matched": len(matched),
        "box_iou": iou_summary([v for v, _, _ in matched]),
        "score_abs_delta": {"median": round(float(statistics.median(deltas)), 5), "max": round(float(max(deltas)), 5)}
        if deltas else {},
        "phrase_equal_fraction": round(sum(o.phrase == r.phrase for _, o, r in matched) / len(matched), 4)
        if matched else None,
        "mask_iou": iou_summary([mask_iou(o.best.mask, r.best.mask) for _, o, r in matched]),
    }


def segmentation_agreement(ours, reference) -> dict:
    """Two `SegmentationResult`s of the same request: the fraction of pixels with the same label, and
    segments matched by label (greedy by mask IoU) with their IoU."""
    same = float((ours.label_map() == reference.label_map()).mean())
    pairs = sorted(((mask_iou(a.mask, b.mask), i, j) for i, a in enumerate(ours.segments)
                    for j, b in enumerate(reference.segments) if a.label_id == b.label_id), key=lambda p: -p[0])
    used_a, used_b, ious = set(), set(), []
    for value, i, j in pairs:
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        ious.append(value)
    return {"label_map_agreement": round(same, 5), "segments": len(ours.segments),
            "reference_segments": len(reference.segments), "matched_segments": len(ious),
            "matched_segment_iou": iou_summary(ious)}


def publish(result: dict, machine: dict | None = None, out: Path | None = None) -> str:
    """Every benchmark's ending: the load average at the end into `machine`, the JSON printed and,
    with `out`, written there."""
    if machine is not None:
        machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return text
