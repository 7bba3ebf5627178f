"""One way for every in-process Python model to run an exported graph: ONNX Runtime or OpenVINO.

`open_graph(path, runtime, precision, threads, cache_dir)` returns a `GraphRunner`: `input_names`,
`output_names`, and `run(feeds, outputs=None) -> {name: array}` (arrays the caller owns: never views
of a buffer the next run reuses). Used in the embedded target by the graph models
(`onnx_model.py`), the image session's in-process runner and the video tracker.

- `onnxruntime`: fp32 only (its CPU provider has no AMX bf16 path, microsoft/onnxruntime#19937).
- `openvino`: fp32, or bf16 (`INFERENCE_PRECISION_HINT`) where the CPU has native bf16 (AMX or
  AVX512-BF16); elsewhere a bf16 request runs fp32 with a warning rather than emulated and slow.
  Compiled models are cached in `cache_dir` (OpenVINO's CACHE_DIR, a folder per model content), so
  a restarted Triton does not recompile. OpenVINO renames ONNX outputs, so outputs are matched
  through `get_names()`.
- `auto` (`resolve`): OpenVINO bf16 where the CPU has native bf16, ONNX Runtime fp32 elsewhere.

The builder chooses per graph and renders the choice into each model's config
(`render_parameters`); a model opens its graphs with `GraphSettings.from_parameters(...).open(...)`:
- `graph_runtime`: JSON `{graph: {"runtime": ..., "precision": ...}}` for the graphs the model runs
  (absent: ONNX Runtime fp32), checked again at load (`resolve`): a repository built on an AMX machine
  and served on one without native bf16 runs fp32, with a warning;
- `graph_threads`: threads per graph (ONNX Runtime `intra_op_num_threads`, OpenVINO
  `INFERENCE_NUM_THREADS`, one stream), set by the builder so that all the instances together never
  oversubscribe the cores (`segserve.repository.builder.graph_threads`); 0: the runtime's default;
- `graph_cache_dir`: OpenVINO's compiled-model cache, relative to the repository root (or absolute).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from segserve.common.files import sha256_file

RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
log = logging.getLogger("segserve.graph_runner")


class GraphRunner(Protocol):
    runtime: str
    precision: str
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]: ...


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def resolve(runtime: str = "auto", precision: str | None = None, flags: set[str] | None = None) -> tuple[str, str]:
    """(runtime, precision) to use. Unknown names raise ValueError naming the choices, and so does bf16
    asked of ONNX Runtime explicitly; bf16 on a CPU without native bf16 becomes fp32 with a warning
    (with `auto`, on ONNX Runtime, as `auto` picks there)."""
    if runtime not in ("auto", *RUNTIMES):
        raise ValueError(f"unknown CPU runtime {runtime!r}: choose auto, {', '.join(RUNTIMES)}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if precision == "bf16" and runtime == "onnxruntime":
        raise ValueError("bf16 needs --cpu-runtime openvino (ONNX Runtime's CPU provider has no bf16 path)")
    native = cpu_has_native_bf16(flags)
    if runtime == "auto":
        runtime = "openvino" if native else "onnxruntime"
        precision = precision or ("bf16" if native else "fp32")
    precision = precision or "fp32"
    if precision == "bf16" and not native:
        log.warning("this CPU has no native bf16 (AMX or AVX512-BF16): running fp32 instead of slow emulated bf16")
        precision = "fp32"
    return runtime, precision


class OrtRunner:
    runtime = "onnxruntime"
    precision = "fp32"
    loaded_from_cache = False

    def __init__(self, path: Path, threads: int = 0, optimization: str | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if optimization is not None:
            options.graph_optimization_level = {
                "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
        started = time.perf_counter()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.load_s = time.perf_counter() - started
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs or self.output_names)
        return dict(zip(names, self.session.run(names, feeds)))


def content_cache_dir(cache_dir: Path, model_path: Path) -> Path:
    """The compiled-model cache of this model file's content. OpenVINO keys a model compiled from
    a path by the path and the file's size, not its content: a re-export of the same size at the
    same path (a changed constant or reshape) would import the stale compiled model and answer
    wrongly, silently. A folder per content hash rules that out."""
    return cache_dir / sha256_file(model_path)[:24]


class OpenVinoRunner:
    runtime = "openvino"

    def __init__(self, path: Path, precision: str = "fp32", threads: int = 0, streams: int = 1,
                 cache_dir: Path | None = None):
        import openvino as ov

        core = ov.Core()
        if cache_dir is not None:
            cache_dir = content_cache_dir(Path(cache_dir), Path(path))
            cache_dir.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache_dir)})
        # One stream of `threads` threads. No pinning: every Python model instance is a process of its
        # own, and pinned threads of several processes would share the same first cores.
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": str(max(1, streams)), "ENABLE_CPU_PINNING": False}
        if threads:
            # At least 2: OpenVINO 2026.4 segfaults compiling sam2_video_mask_prompt with
            # INFERENCE_NUM_THREADS 1 (reproducible here, with or without the cache).
            config["INFERENCE_NUM_THREADS"] = str(max(2, threads))
        # compile_model from the path (not a read model) so that CACHE_DIR applies.
        started = time.perf_counter()
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.load_s = time.perf_counter() - started
        self.loaded_from_cache = bool(cache_dir is not None and self.compiled.get_property("LOADED_FROM_CACHE"))
        self.precision = precision
        # An input port may carry several tensor names (e.g. an input that only feeds a Cast), and
        # get_any_name() can pick an internal one: the ONNX input name is the port's name here.
        onnx_inputs, onnx_outputs = _onnx_io_names(path)
        self.input_names = [next((n for n in onnx_inputs if n in port.get_names()), port.get_any_name())
                            for port in self.compiled.inputs]
        self._port_of: dict[str, int] = {}
        for index, port in enumerate(self.compiled.outputs):
            names = port.get_names()
            name = next((n for n in onnx_outputs if n in names),
                        onnx_outputs[index] if index < len(onnx_outputs) else sorted(names)[0])
            self._port_of[name] = index
        self.output_names = sorted(self._port_of, key=self._port_of.get)
        # Without onnx (the fleet image's Python) the pick above may be an internal name: every name
        # of a port reaches it, so a caller asking for the ONNX name still finds it.
        for index, port in enumerate(self.compiled.outputs):
            for alias in port.get_names():
                self._port_of.setdefault(alias, index)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: a model instance runs one request at a time

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs or self.output_names)
        with self._lock:
            self._request.infer({n: np.ascontiguousarray(v) for n, v in feeds.items()})
            # Copies: the request's output tensors are reused by its next run.
            return {n: np.array(self._request.get_output_tensor(self._port_of[n]).data, copy=True) for n in names}


def _onnx_io_names(path: Path) -> tuple[list[str], list[str]]:
    try:
        import onnx
    except ImportError:  # OpenVINO keeps the ONNX order; its port names then decide
        return [], []
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers], [o.name for o in graph.output]


def open_graph(path: Path, runtime: str = "onnxruntime", precision: str = "fp32", threads: int = 0,
               cache_dir: Path | None = None, optimization: str | None = None, streams: int = 1) -> GraphRunner:
    if runtime == "onnxruntime":
        if precision != "fp32":
            raise ValueError("ONNX Runtime runs the graphs in fp32 only")
        return OrtRunner(Path(path), threads, optimization)
    if runtime == "openvino":
        return OpenVinoRunner(Path(path), precision, threads, streams, cache_dir)
    raise ValueError(f"unknown CPU runtime {runtime!r}: choose {', '.join(RUNTIMES)}")


# ----------------------------------------------------------------------------- config parameters


def render_parameters(choices: dict[str, tuple[str, str]], threads: int, cache_dir: str | None) -> dict[str, str]:
    """A model's config parameters for the graphs it runs in process: `choices` graph -> (runtime,
    precision); `cache_dir` relative to the repository root, or absolute (only rendered when a
    graph runs on OpenVINO, the runtime that uses it)."""
    params = {"graph_runtime": json.dumps({g: {"runtime": r, "precision": p} for g, (r, p) in choices.items()},
                                          sort_keys=True),
              "graph_threads": str(int(threads))}
    if cache_dir and any(r == "openvino" for r, _ in choices.values()):
        params["graph_cache_dir"] = str(cache_dir)
    return params


@dataclass
class GraphSettings:
    """How one model runs its graphs, from its config parameters (`render_parameters`)."""

    choices: dict[str, dict[str, str]] = field(default_factory=dict)
    threads: int = 0
    cache_dir: Path | None = None

    @classmethod
    def from_parameters(cls, params: dict[str, str], repository_root: Path | None = None) -> "GraphSettings":
        cache = params.get("graph_cache_dir")
        cache_dir = None
        if cache:
            cache_dir = Path(cache) if Path(cache).is_absolute() or repository_root is None else Path(repository_root) / cache
        # `intra_op_threads`: the parameter of repositories built before `graph_threads`
        return cls(json.loads(params.get("graph_runtime") or "{}"),
                   int(params.get("graph_threads", params.get("intra_op_threads", "0"))), cache_dir)

    def choice(self, graph: str) -> tuple[str, str]:
        """(runtime, precision) of `graph`, checked on this CPU (`resolve`)."""
        entry = self.choices.get(graph, {})
        return resolve(entry.get("runtime", "onnxruntime"), entry.get("precision", "fp32"))

    def open(self, graph: str, path: Path, optimization: str | None = None) -> GraphRunner:
        """`optimization`: ONNX Runtime's graph optimisation level (OpenVINO has none to set)."""
        runtime, precision = self.choice(graph)
        return open_graph(path, runtime, precision, self.threads, self.cache_dir, optimization)


def describe(graph: str, runner: GraphRunner) -> str:
    """One line for Triton's log: what runs the graph, and how long opening it took."""
    cached = ", compiled-model cache hit" if getattr(runner, "loaded_from_cache", False) else ""
    return f"graph {graph}: {runner.runtime} {runner.precision}, loaded in {getattr(runner, 'load_s', 0.0):.3f} s{cached}"
