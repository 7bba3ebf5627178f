"""`segserve export --tensorrt`: every exported graph -> a parity-gated TensorRT engine `<name>.plan`.

Per graph (TensorRT 10.x Python API): parse the ONNX file, pin the layers listed in `FP32_PINS` to
FP32 (with OBEY_PRECISION_CONSTRAINTS), add the optimization profiles of
`segserve.engines.profiles.profiles_for`, build with the workspace limit and the persisted timing
cache, then run the engine against ONNX Runtime on the export's parity cases
(`segserve.engines.parity`). Only an engine that passes is written, with its manifest record
(`EngineRecord`); graphs in `policy.KEEP_ON_ONNXRUNTIME` get a record saying why they stay on
ONNX Runtime. Needs TensorRT (pyproject's `gpu` extra), CuPy and an NVIDIA GPU.
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segserve.engines import parity
from segserve.engines.policy import KEEP_ON_ONNXRUNTIME
from segserve.engines.profiles import covers, profiles_for
from segserve.engines.provenance import Gpu, local_gpu, same_tensorrt
from segserve.export.manifest import EngineRecord, Manifest, sha256_file

PRECISIONS = ("fp16", "bf16", "fp32")
WHERE_TO_BUILD = ("Build engines where all of these exist: the Helm chart's engine build Job (on the GPU node "
                  "pool, with the fleet image's TensorRT) or `make gpu-check` on a GPU machine.")
# Layers that overflow in half precision stay FP32: graph -> [(TensorRT layer type, name regex)].
# Grounding DINO's text and cross attention LayerNorm / softmax (NVIDIA/TensorRT #3413, #4540); the
# graph stays on ONNX Runtime anyway (policy), the pins apply if it ever is built.
_GDINO_TEXT = r"text_backbone|text_enhancer|fusion_layer|encoder_attn_text|text_projection"
FP32_PINS: dict[str, list[tuple[str, str]]] = {
    "grounding_dino": [("NORMALIZATION", _GDINO_TEXT), ("SOFTMAX", _GDINO_TEXT)],
}


class EngineBuildError(RuntimeError):
    pass


class TensorRTUnavailable(EngineBuildError):
    pass


def log(message: str) -> None:
    print(f"[segserve engines] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class LayerInfo:
    """A network layer as the pins see it (built from TensorRT's INetworkDefinition, or by hand)."""

    index: int
    name: str
    type: str  # trt.LayerType name: NORMALIZATION, SOFTMAX, ...


def layers_to_pin(graph: str, layers: list[LayerInfo], pins: dict[str, list[tuple[str, str]]] | None = None
                  ) -> list[LayerInfo]:
    patterns = (FP32_PINS if pins is None else pins).get(graph, [])
    return [layer for layer in layers
            if any(layer.type == kind and re.search(name, layer.name) for kind, name in patterns)]


def check_precision(precision: str, gpu: Gpu) -> None:
    if precision not in PRECISIONS:
        raise EngineBuildError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "bf16" and gpu.major() < 8:
        raise EngineBuildError(f"bf16 needs compute capability >= 8.0; {gpu} has not: use fp16 or fp32")


def require_tensorrt(expected_version: str | None = None):
    """The tensorrt module and this machine's GPU, or one error naming everything that is missing."""
    from segserve.runtime.fleet_image import release

    expected_version = expected_version or release().tensorrt
    missing, trt = [], None
    try:
        import tensorrt as trt
    except ImportError:
        missing.append(f"the tensorrt Python package (pip install -e '.[gpu]': tensorrt=={expected_version}, "
                       "the fleet Triton image's)")
    try:
        import cupy  # noqa: F401  (the engine's device buffers)
    except ImportError:
        missing.append("CuPy (cupy-cuda12x, in the `gpu` extra)")
    gpu = local_gpu()
    if gpu is None:
        missing.append("an NVIDIA GPU (nvidia-smi finds none)")
    if missing:
        raise TensorRTUnavailable("TensorRT engines cannot be built here: missing " + "; ".join(missing) + ". "
                                  + WHERE_TO_BUILD)
    if not same_tensorrt(trt.__version__, expected_version):
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is installed, the fleet image runs {expected_version}: "
                                  f"an engine loads only in the TensorRT that built it (pip install "
                                  f"tensorrt=={expected_version})")
    return trt, gpu


@dataclass
class BuildOptions:
    precision: str = "fp16"
    workspace_gib: float = 4.0
    timing_cache: Path | None = None
    profile_limits: Any = None  # profiles.Limits, passed to profiles_for


def _network_layers(network) -> list[LayerInfo]:
    return [LayerInfo(i, network.get_layer(i).name, network.get_layer(i).type.name) for i in range(network.num_layers)]


def build_engine(trt, onnx_path: Path, graph: str, profiles: list[dict], options: BuildOptions) -> tuple[bytes, list[str]]:
    """Serialized engine bytes and the names of the layers pinned to FP32."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{graph}: TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    if options.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif options.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: the export's tolerances apply
    pinned = layers_to_pin(graph, _network_layers(network))
    floats = (trt.float32, trt.float16, trt.bfloat16)
    for info in pinned:
        layer = network.get_layer(info.index)
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in floats:
                layer.set_output_type(j, trt.float32)
    if pinned and options.precision != "fp32":
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, tuple(low), tuple(opt), tuple(high))
        config.add_optimization_profile(profile)
    cache_path = options.timing_cache
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{graph}: TensorRT could not build an engine (see the TensorRT log above)")
    if cache_path:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".partial")
        tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
        os.replace(tmp, cache_path)
    return bytes(serialized), [info.name for info in pinned]


class TrtRunner:
    """Runs a serialized engine on this GPU with CuPy buffers (the parity gate and the benchmark)."""

    def __init__(self, trt, plan: bytes, profiles: list[dict]):
        import cupy as cp

        self.trt, self.cp, self.profiles = trt, cp, profiles
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineBuildError("TensorRT could not deserialize the engine it built")
        self.context = self.engine.create_execution_context()
        self.stream = cp.cuda.Stream(non_blocking=True)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.description = f"tensorrt {trt.__version__}"

    def accepts(self, feeds: dict[str, np.ndarray]) -> bool:
        return not self.profiles or any(covers(p, {k: v.shape for k, v in feeds.items()}) for p in self.profiles)

    def _buffer(self, shape, dtype):
        size = int(np.prod(shape))
        return self.cp.empty(max(size, 1), dtype=dtype)[:size].reshape(shape)  # never a null address

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cp, trt, context = self.cp, self.trt, self.context
        if self.profiles:
            index = next(i for i, p in enumerate(self.profiles) if covers(p, {k: v.shape for k, v in feeds.items()}))
            context.set_optimization_profile_async(index, self.stream.ptr)
        held = []
        for name in self.inputs:
            array = self._buffer(feeds[name].shape, trt.nptype(self.engine.get_tensor_dtype(name)))
            array.set(np.ascontiguousarray(feeds[name], dtype=array.dtype), stream=self.stream)
            context.set_input_shape(name, tuple(array.shape))
            context.set_tensor_address(name, array.data.ptr)
            held.append(array)
        outputs = {}
        for name in self.outputs:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineBuildError(f"output {name} has a data-dependent shape {shape}")
            outputs[name] = self._buffer(shape, trt.nptype(self.engine.get_tensor_dtype(name)))
            context.set_tensor_address(name, outputs[name].data.ptr)
        if not context.execute_async_v3(self.stream.ptr):
            raise EngineBuildError("execute_async_v3 failed")
        self.stream.synchronize()
        return {name: cp.asnumpy(array) for name, array in outputs.items()}


def gate_and_write(manifest: Manifest, graph: str, plan: bytes, engine: parity.Runner, reference: parity.Runner,
                   cases: list[dict[str, np.ndarray]], tolerance: parity.Tolerance, record: EngineRecord,
                   accepts=lambda feeds: True) -> tuple[Path | None, dict[str, Any]]:
    """Write `<graph>.plan` and its record only if the parity gate passes; otherwise remove any
    older plan and record of the graph and return None with the gate's report (failures)."""
    target = manifest.directory / f"{graph}.plan"
    report = parity.gate(graph, engine, reference, cases, tolerance, accepts)
    report["cases_source"] = parity.CASES_SOURCE
    if not report["passed"]:
        target.unlink(missing_ok=True)
        manifest.drop_engine(graph)
        return None, report
    report["measured_on"] = {"gpu": record.gpu_name, "compute_capability": record.compute_capability,
                             "tensorrt": record.tensorrt_version}
    tmp = target.with_suffix(".plan.partial")
    tmp.write_bytes(plan)
    os.replace(tmp, target)
    record.file, record.sha256, record.parity = target.name, sha256_file(target), report
    manifest.put_engine(record)
    return target, report


def _reusable(manifest: Manifest, graph: str, trt_version: str, gpu: Gpu, precision: str) -> bool:
    from segserve.engines.provenance import verified

    record = manifest.engines.get(graph)
    plan = manifest.directory / (record.file if record else "")
    return bool(record and record.backend == "tensorrt" and verified(record) and plan.is_file()
                and record.onnx_sha256 == manifest.records[graph].sha256 and record.precision == precision
                and record.tensorrt_version == trt_version and record.gpu_name == gpu.name
                and sha256_file(plan) == record.sha256)


def build_engines(artifacts: Path, options: BuildOptions, families: list[str] | None = None,
                  force: bool = False) -> dict[str, str]:
    """Every graph of `families` (all by default) in the manifest -> engine or kept-on-ORT record.
    Returns graph -> outcome; raises EngineBuildError listing the graphs whose engine failed."""
    trt, gpu = require_tensorrt()
    check_precision(options.precision, gpu)
    manifest = Manifest(Path(artifacts))
    outcomes, failed = {}, []
    for graph, artifact in sorted(manifest.records.items()):
        if families and artifact.settings.get("family") not in families:
            continue
        if graph in KEEP_ON_ONNXRUNTIME:
            (manifest.directory / f"{graph}.plan").unlink(missing_ok=True)
            manifest.put_engine(EngineRecord(name=graph, backend="onnxruntime", onnx_sha256=artifact.sha256,
                                             reason=KEEP_ON_ONNXRUNTIME[graph]))
            outcomes[graph] = f"kept on ONNX Runtime: {KEEP_ON_ONNXRUNTIME[graph]}"
            continue
        if not force and _reusable(manifest, graph, trt.__version__, gpu, options.precision):
            outcomes[graph] = f"up to date: {manifest.engines[graph].file}"
            continue
        onnx_path = manifest.artifact_path(graph)
        profiles = profiles_for(manifest, graph, options.profile_limits)
        start = time.perf_counter()
        log(f"{graph}: building a {options.precision} engine ({len(profiles)} optimization profiles)")
        plan, pinned = build_engine(trt, onnx_path, graph, profiles, options)
        seconds = time.perf_counter() - start
        runner = TrtRunner(trt, plan, profiles)
        record = EngineRecord(
            name=graph, backend="tensorrt", onnx_sha256=artifact.sha256, tensorrt_version=trt.__version__,
            gpu_name=gpu.name, compute_capability=gpu.compute_capability, precision=options.precision,
            fp32_layers=pinned,
            profiles=[{k: [list(map(int, s)) for s in v] for k, v in p.items()} for p in profiles],
            build={"workspace_gib": options.workspace_gib, "seconds": round(seconds, 1),
                   "timing_cache": str(options.timing_cache) if options.timing_cache else None})
        tolerance = parity.Tolerance(options.precision, artifact.parity.get("atol", 1e-4), artifact.parity.get("rtol", 1e-3))
        path, report = gate_and_write(manifest, graph, plan, runner, parity.OrtRunner(onnx_path),
                                      parity.parity_cases(manifest, graph), tolerance, record, runner.accepts)
        if path is None:
            failed.append(f"{graph}: " + "; ".join(report["failures"][:5]))
            outcomes[graph] = "NOT written: parity gate failed"
            log(f"{graph}: engine NOT written, parity gate failed: {report['failures'][:5]}")
        else:
            outcomes[graph] = f"{path.name} ({options.precision}, parity passed on {report['cases']} cases)"
            log(f"{graph}: {outcomes[graph]}")
    if failed:
        raise EngineBuildError("engines failed their parity gate and were not written:\n  " + "\n  ".join(failed))
    return outcomes
