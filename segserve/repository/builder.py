"""`segserve build-repo`: manifest + description -> a Triton model repository.

Configs are built as Triton's own `ModelConfig` protobuf and written in text format, so a field
Triton does not know cannot be written; `validate_repository` parses them back strictly and checks
each graph model's signature against its ONNX file (the static check of the fleet target).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from segserve.engines.policy import KEEP_ON_ONNXRUNTIME
from segserve.engines.profiles import Limits, envelope, profiles_for, shapes_string
from segserve.export.manifest import Manifest
from segserve.triton_models import graph_runner
from segserve.triton_models.runtime_check import runtime_digest

from .description import FAMILY_MODELS, ModelSpec, Tensor

TARGETS = ("embedded", "fleet")
# How the fleet runs its graphs: Triton's onnxruntime backend (CUDA), the same with its TensorRT
# accelerator (engines built at load, cached on a volume), or prebuilt TensorRT plans. The graphs of
# `KEEP_ON_ONNXRUNTIME` stay on the onnxruntime backend's CUDA provider in both TensorRT modes.
GRAPH_BACKENDS = ("onnxruntime", "onnxruntime-trt", "tensorrt", "openvino")
# The TensorRT accelerator parameters Triton's onnxruntime backend documents (README of r24.10,
# Triton 2.51 = NGC 24.10); it refuses any other key at load.
ORT_TRT_PARAMETERS = frozenset({
    "precision_mode", "max_workspace_size_bytes", "int8_calibration_table_name", "int8_use_native_calibration_table",
    "trt_max_partition_iterations", "trt_min_subgraph_size", "trt_dla_enable", "trt_dla_core",
    "trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_cache_prefix", "trt_dump_subgraphs",
    "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable", "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log",
    "trt_build_heuristics_enable", "trt_sparsity_enable", "trt_builder_optimization_level", "trt_auxiliary_streams",
    "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes", "trt_profile_max_shapes",
    "trt_profile_opt_shapes", "trt_cuda_graph_enable", "trt_dump_ep_context_model", "trt_ep_context_file_path",
    "trt_ep_context_embed_mode",
})
# `--graph-backend openvino`, for CPU nodes: Triton's openvino backend. The parameters it reads
# (README and src/openvino.cc of its r24.10 branch, Triton 2.51 = NGC 24.10); it ignores other keys,
# `validate_repository` refuses them. The bf16 key of this release is `HINT_BF16` (value YES only;
# not `INFERENCE_PRECISION_HINT`, which later releases took over from OpenVINO).
OPENVINO_PARAMETERS = frozenset({
    "PERFORMANCE_HINT", "CPU_EXTENSION_PATH", "INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS", "HINT_BF16",
    "NUM_STREAMS", "SKIP_OV_DYNAMIC_BATCHSIZE", "ENABLE_BATCH_PADDING", "RESHAPE_IO_LAYERS",
})
_NUMPY_TO_TRITON = {"float32": "FP32", "float16": "FP16", "int32": "INT32", "int64": "INT64", "bool": "BOOL",
                    "uint8": "UINT8", "object": "STRING"}


class RepositoryError(ValueError):
    pass


def _graph_tensors(signature: dict, batched: bool) -> list[Tensor]:
    tensors = []
    for name, info in signature.items():
        dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in info["shape"])
        tensors.append(Tensor(name, _NUMPY_TO_TRITON[info["dtype"]], dims[1:] if batched else dims))
    return tensors


def _tensor_proto(tensor: Tensor, message_type):
    message = message_type(name=tensor.name, data_type=mc.DataType.Value(f"TYPE_{tensor.dtype}"), dims=list(tensor.dims))
    if isinstance(message, mc.ModelInput):
        message.optional = tensor.optional
        message.allow_ragged_batch = tensor.ragged
    return message


def _render_ensemble(spec: ModelSpec) -> mc.ModelConfig:
    """The same in both targets: Triton's ensemble scheduler routes tensors between the steps."""
    config = mc.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size, platform="ensemble")
    config.input.extend(_tensor_proto(t, mc.ModelInput) for t in spec.inputs)
    config.output.extend(_tensor_proto(t, mc.ModelOutput) for t in spec.outputs)
    for step in spec.ensemble:
        message = config.ensemble_scheduling.step.add(model_name=step.model, model_version=-1)
        message.input_map.update(step.inputs)
        message.output_map.update(step.outputs)
    for key, value in spec.parameters.items():
        config.parameters[key].string_value = value
    return config


@dataclass
class TrtRender:
    """`--graph-backend onnxruntime-trt`: what the TensorRT accelerator of each graph gets."""

    precision: str = "FP16"  # precision_mode: FP16 or FP32
    cache_path: str = "/models/trt-cache"  # engine and timing caches in <cache_path>/<model>, on a volume
    workspace_bytes: int = 4 << 30
    limits: Limits | None = None  # the profiles' bounds (`segserve.engines.profiles.Limits`)

    @classmethod
    def from_options(cls, options: dict | None) -> "TrtRender":
        """From build options `trt_precision`, `trt_cache_path`, `trt_workspace_bytes`; the profiles'
        limits see the same options as the repository description (e.g. `max_video_objects`)."""
        options = options or {}
        return cls(precision=str(options.get("trt_precision", cls.precision)).upper(),
                   cache_path=str(options.get("trt_cache_path", cls.cache_path)).rstrip("/") or "/",
                   workspace_bytes=int(options.get("trt_workspace_bytes", cls.workspace_bytes)),
                   limits=Limits(options=dict(options)))

    def accelerator_parameters(self, spec: ModelSpec, manifest: Manifest) -> dict[str, str]:
        if self.precision not in ("FP16", "FP32"):
            raise RepositoryError(f"TensorRT precision {self.precision!r}: choose FP16 or FP32")
        # One profile: the accelerator runs every request on profile 0 (`profiles.envelope`).
        profile = [envelope(profiles_for(manifest, spec.graph, self.limits))]
        cache = f"{self.cache_path.rstrip('/')}/{spec.name}"
        params = {"precision_mode": self.precision, "max_workspace_size_bytes": str(int(self.workspace_bytes)),
                  "trt_engine_cache_enable": "1", "trt_engine_cache_path": cache,
                  "trt_timing_cache_enable": "1", "trt_timing_cache_path": cache,
                  "trt_profile_min_shapes": shapes_string(profile, 0),
                  "trt_profile_opt_shapes": shapes_string(profile, 1),
                  "trt_profile_max_shapes": shapes_string(profile, 2)}
        if self.precision == "FP16":
            params["trt_layer_norm_fp32_fallback"] = "1"
        return params


@dataclass
class OpenVinoRender:
    """`--graph-backend openvino`: what each graph model of a CPU node gets (`OPENVINO_PARAMETERS`).
    Latency settings: one stream per instance, `threads` (INFERENCE_NUM_THREADS) each, so that all
    the graph instances computing at once never oversubscribe the node's cores; `HINT_BF16: YES`
    for bf16. With fp32 no key is written: this release has no f32 key, and the CPU plugin's
    default precision, bf16 on CPUs with AMX or AVX512-BF16, applies there."""

    precision: str = "bf16"
    threads: int = 1

    def parameters(self) -> dict[str, str]:
        if self.precision not in ("fp32", "bf16"):
            raise RepositoryError(f"OpenVINO precision {self.precision!r}: choose fp32 or bf16")
        params = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(max(1, int(self.threads)))}
        if self.precision == "bf16":
            params["HINT_BF16"] = "YES"
        return params


def _ov_dim_matches(dim, value: int) -> bool:
    """`doesMatch` of the openvino backend (r24.10 src/openvino_utils.cc), bounds compared strictly."""
    if dim.is_static:
        return dim.get_length() == value
    if dim.get_max_length() < 0:  # no upper bound
        return True
    return dim.get_min_length() < value < dim.get_max_length()


def _dims(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def openvino_backend_refusal(onnx_path: Path, inputs: list[Tensor], outputs: list[Tensor],
                             max_batch_size: int) -> str | None:
    """Why Triton's openvino backend (r24.10) would refuse to load this graph with this signature, or
    None: its load-time checks replayed with this OpenVINO's reader. Config tensors must be the ports'
    `get_any_name()`; a batched model is compiled at a fixed batch of max_batch_size (`ov::set_batch`);
    inputs compare positive dims only, outputs every dim, including -1, exactly (an output dim that
    OpenVINO bounds, e.g. `..1`, matches no config value). Scalar inputs are not supported."""
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    ports = {p.get_any_name(): p for p in model.inputs}
    for tensor in inputs:
        if tensor.name not in ports:
            return f"input {tensor.name} is not an input name of the graph in OpenVINO ({sorted(ports)})"
        if ports[tensor.name].get_partial_shape().rank.get_length() == 0:
            return f"input {tensor.name} is a scalar"
    if max_batch_size:
        model.reshape({name: ov.PartialShape([max_batch_size, *list(p.get_partial_shape())[1:]])
                       for name, p in ports.items()})
    batch = [max_batch_size] if max_batch_size else []
    for tensor in inputs:
        shape = list(model.input(tensor.name).get_partial_shape())
        full = [*batch, *tensor.dims]
        if len(shape) != len(full) or not all(_ov_dim_matches(d, v) for i, (d, v) in enumerate(zip(shape, full))
                                              if v != -1 and not (batch and i == 0)):
            return f"input {tensor.name}: OpenVINO's shape {_dims(shape)} does not take the config's {full}"
    names = {p.get_any_name(): p for p in model.outputs}
    for tensor in outputs:
        if tensor.name not in names:
            return f"output {tensor.name} is not an output name of the graph in OpenVINO ({sorted(names)})"
        shape, full = list(names[tensor.name].get_partial_shape()), [*batch, *tensor.dims]
        if len(shape) != len(full) or not all(_ov_dim_matches(d, v) for d, v in zip(shape, full)):
            return f"output {tensor.name}: OpenVINO's shape {_dims(shape)} matches no config dims (the config has {full})"
    return None


def _render_openvino_graph(config: mc.ModelConfig, spec: ModelSpec, manifest: Manifest | None,
                           openvino: OpenVinoRender | None) -> bool:
    """A fleet graph on Triton's openvino backend, KIND_CPU. Its r24.10 release runs a batched model
    at exactly max_batch_size (smaller batches fail, or with ENABLE_BATCH_PADDING compute zero
    padding), so batched graphs get max_batch_size 1 and no dynamic batcher: requests run one per
    execution, in parallel over the instances. A graph the backend would refuse to load
    (`openvino_backend_refusal`) stays on Triton's onnxruntime backend on the CPU: returns False."""
    if manifest is None:
        raise RepositoryError(f"{spec.name}: the openvino graph backend needs the manifest to check the graph")
    batch = 1 if spec.max_batch_size > 0 else 0
    refusal = openvino_backend_refusal(manifest.artifact_path(spec.graph), spec.inputs, spec.outputs, batch)
    if refusal:
        config.platform = "onnxruntime_onnx"
        config.parameters["openvino_refused"].string_value = refusal  # why, in the config for whoever reads it
        return False
    config.backend = "openvino"
    config.default_model_filename = "model.onnx"
    config.max_batch_size = batch
    for key, value in (openvino or OpenVinoRender()).parameters().items():
        config.parameters[key].string_value = value
    return True


def render_config(spec: ModelSpec, target: str, graph_backend: str = "onnxruntime", manifest: Manifest | None = None,
                  trt: TrtRender | None = None, openvino: OpenVinoRender | None = None) -> mc.ModelConfig:
    """`manifest` (and `trt`, default `TrtRender()`) are needed for fleet graphs with onnxruntime-trt;
    `manifest` (and `openvino`, default `OpenVinoRender()`) for fleet graphs with openvino."""
    if graph_backend not in GRAPH_BACKENDS:
        raise RepositoryError(f"unknown graph backend {graph_backend!r}; choose one of {GRAPH_BACKENDS}")
    if spec.ensemble:
        return _render_ensemble(spec)
    config = mc.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    cpu_node = target == "fleet" and graph_backend == "openvino"  # no GPU: every instance KIND_CPU
    on_openvino = False
    if spec.graph and cpu_node:
        on_openvino = _render_openvino_graph(config, spec, manifest, openvino)
        kind = mc.ModelInstanceGroup.KIND_CPU
    elif spec.graph and target == "fleet":
        on_trt = graph_backend != "onnxruntime" and spec.graph not in KEEP_ON_ONNXRUNTIME
        config.platform = "tensorrt_plan" if on_trt and graph_backend == "tensorrt" else "onnxruntime_onnx"
        if on_trt and graph_backend == "onnxruntime-trt":
            if manifest is None:
                raise RepositoryError(f"{spec.name}: onnxruntime-trt needs the manifest for its profiles")
            accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            accelerator.parameters.update((trt or TrtRender()).accelerator_parameters(spec, manifest))
        kind = mc.ModelInstanceGroup.KIND_GPU
    else:
        config.backend = "python"
        kind = (mc.ModelInstanceGroup.KIND_CPU if target == "embedded" or spec.graph or cpu_node
                else mc.ModelInstanceGroup.KIND_MODEL)
    config.input.extend(_tensor_proto(t, mc.ModelInput) for t in spec.inputs)
    config.output.extend(_tensor_proto(t, mc.ModelOutput) for t in spec.outputs)
    if spec.instance_kind:
        kind = mc.ModelInstanceGroup.Kind.Value(f"KIND_{spec.instance_kind}")
    config.instance_group.add(count=spec.instances, kind=kind)
    if spec.dynamic_batching and not on_openvino:  # openvino graphs run one request per execution
        config.dynamic_batching.max_queue_delay_microseconds = spec.max_queue_delay_us
    if spec.sequence:
        seq = config.sequence_batching
        seq.max_sequence_idle_microseconds = int(spec.sequence.idle_timeout_s * 1e6)
        seq.oldest.max_candidate_sequences = spec.sequence.max_candidate_sequences
        seq.oldest.max_queue_delay_microseconds = spec.sequence.max_queue_delay_us
        for name, kind_name in (("START", "CONTROL_SEQUENCE_START"), ("END", "CONTROL_SEQUENCE_END")):
            control = seq.control_input.add(name=name).control.add()
            control.kind = mc.ModelSequenceBatching.Control.Kind.Value(kind_name)
            control.int32_false_true.extend([0, 1])
        corrid = seq.control_input.add(name="CORRID").control.add()
        corrid.kind = mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID
        corrid.data_type = mc.TYPE_UINT64
    params = {**spec.parameters, **(spec.fleet_parameters if target == "fleet" else {})}
    if spec.graph and target == "embedded":
        params.setdefault("onnx_file", "model.onnx")
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


_MODEL_PY = '''# Generated by `segserve build-repo`; the model's code lives in the segserve package.
from segserve.triton_models.{module} import TritonPythonModel  # noqa: F401
'''

# Fleet: the code comes from the segserve Triton image (docker/triton.Dockerfile), checked at load.
_FLEET_MODEL_PY = '''# Generated by `segserve build-repo --target fleet`. The model's code is the segserve runtime of
# the segserve Triton image (docker/triton.Dockerfile); the check fails the load, naming a missing
# package or a runtime other than the one this repository was built with.
try:
    from segserve.triton_models.runtime_check import check_runtime
except ImportError as exc:
    raise ImportError("{name}: this Triton's Python cannot import the segserve runtime (%s): serve the fleet "
                      "repository with the segserve Triton image (docker/triton.Dockerfile)" % exc) from exc

check_runtime("{name}", "{digest}")

from segserve.triton_models.{module} import TritonPythonModel  # noqa: E402,F401
'''


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# Artifact -> the export family that produces it (`segserve export --families <family>`).
def _family_of(artifact: str) -> str:
    if artifact.startswith("sam2_video_"):
        return "sam2_video"
    if artifact.startswith("sam2_"):
        return "sam2"
    return artifact  # grounding_dino, mask2former


def model_specs(manifest: Manifest, session_ttl_s: float = 600.0, max_sessions: int = 64,
                options: dict | None = None, graph_files: bool = True) -> list[ModelSpec]:
    """The models of every family whose key artifact was exported. `options` go to every family's
    description (e.g. `batching=False`: graphs that honour it run one request per execution).
    `graph_files=False`: the manifest's records are enough (signatures only, no graph files)."""
    options = {**(options or {}), "session_ttl_s": session_ttl_s, "max_sessions": max_sessions}
    # Every exported artifact's model config, for families that use another family's graphs.
    options.setdefault("artifacts", {n: r.model_config for n, r in manifest.records.items()})
    specs: list[ModelSpec] = []
    for key_artifact, describe in FAMILY_MODELS.items():
        if key_artifact in manifest.records:
            specs += describe(manifest.records[key_artifact].model_config, options)
    if not specs:
        raise RepositoryError(f"no exported graphs in {manifest.directory}; run `segserve export` first")
    for spec in specs:
        # Not in the manifest, or listed but its file is gone: either way the family must be exported.
        missing = [a for a in spec.requires
                   if a not in manifest.records or (graph_files and not manifest.artifact_path(a).is_file())]
        if missing:
            families = ",".join(sorted({_family_of(a) for a in missing}))
            raise RepositoryError(f"model {spec.name} needs the {families} graphs {missing}, missing from "
                                  f"{manifest.path}: export them with `segserve export --families {families} "
                                  f"--out {manifest.directory}`")
        if spec.graph:
            record = manifest.records[spec.graph]
            batched = spec.max_batch_size > 0
            spec.inputs = _graph_tensors(record.inputs, batched)
            spec.outputs = _graph_tensors(record.outputs, batched)
    return specs


# Where OpenVINO keeps compiled models by default: beside the repository (never inside it, where Triton
# would take the folder for a model), as a path relative to the repository root, so a restarted Triton
# (or a rebuilt repository) imports them instead of compiling again. Build option `graph_cache_dir`.
DEFAULT_GRAPH_CACHE = "../openvino-cache"


def in_process_graphs(spec: ModelSpec, target: str, session_runner: str | None = None) -> tuple[str, ...]:
    """The graphs `spec`'s instances run in their own process: in the embedded target a graph model
    its graph, a Python model its `local_graphs` unless it calls the graph models through BLS."""
    if target != "embedded" or spec.ensemble:
        return ()
    if spec.graph:
        return (spec.graph,)
    if session_runner == "bls" or "bls" in (spec.parameters.get("runner"), spec.parameters.get("graphs")):
        return ()
    return tuple(spec.local_graphs)


def graph_threads(instances: int, cores: int | None = None) -> int:
    """Threads of each in-process graph runner. Triton runs every model instance in parallel (each
    Python model instance is a process of its own), so all the instances that run graphs in process
    may compute at once: each gets an equal share of the cores, `max(1, cores // instances)`, and
    together they never oversubscribe them. One stream per runner (OpenVINO `NUM_STREAMS=1` with
    `INFERENCE_NUM_THREADS=threads`, unpinned; ONNX Runtime `intra_op_num_threads=threads`, sequential
    execution); a request runs on one instance's runner at a time. `cores`: the CPUs this process may
    use (build option `cpu_cores` for another machine)."""
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, int(cores) // max(1, int(instances)))


def choose_graph_runtimes(graphs: list[str], cpu_runtime: str = "onnxruntime", precision: str | None = None,
                          graph_precisions: dict[str, str] | None = None,
                          flags: set[str] | None = None) -> dict[str, tuple[str, str]]:
    """graph -> (runtime, precision). `cpu_runtime` / `precision` for every graph (`graph_runner.resolve`:
    auto = OpenVINO bf16 where the CPU has native bf16, else ONNX Runtime fp32); `graph_precisions`
    (the precision gate's verdict, fp32 for a graph whose bf16 gate failed) overrides the precision
    per graph. bf16 runs fp32 where the runtime is ONNX Runtime (no bf16 path) or the CPU has no native
    bf16 (with a warning). Unknown names raise RepositoryError naming the choices."""
    graph_precisions = graph_precisions or {}
    try:
        runtime, default = graph_runner.resolve(cpu_runtime, precision, flags)
        for graph, value in graph_precisions.items():
            if value not in graph_runner.PRECISIONS:
                raise ValueError(f"graph {graph}: unknown precision {value!r}: choose "
                                 f"{', '.join(graph_runner.PRECISIONS)}")
    except ValueError as exc:
        raise RepositoryError(str(exc)) from exc
    choices = {}
    for graph in graphs:
        wanted = graph_precisions.get(graph, default)
        if runtime == "onnxruntime":
            choices[graph] = (runtime, "fp32")
        elif wanted == default:  # already checked against this CPU
            choices[graph] = (runtime, default)
        else:
            choices[graph] = graph_runner.resolve(runtime, wanted, flags)
    return choices


def model_info(manifest: Manifest, engines: bool = False, graphs: dict[str, tuple[str, str]] | None = None) -> str:
    """What every response's model info reports: checkpoint, weights kind, artifact hashes, and with
    `engines` (a TensorRT repository) each graph's engine as built and whether its parity gate ran
    on a GPU (`provenance.engine_summary`: never claimed otherwise). Per graph, the `runtime` and
    `precision` it is served in (`graphs`: graph -> (runtime, precision) as the builder chose them;
    default ONNX Runtime fp32, or the TensorRT engine) and `bf16_gate`, its bf16 agreement record
    (`export.precision.precision_summary`)."""
    from segserve.engines.provenance import engine_summary
    from segserve.export.precision import precision_summary

    summary = engine_summary(manifest) if engines else {}
    gates = precision_summary(manifest)
    info = {}
    for record in manifest.records.values():
        info[record.name] = {
            "family": record.model_config.get("family", record.name.split("_")[0]),
            # A Hub checkpoint is reported as hf://ORG/NAME@COMMIT, not as its path in the cache.
            "checkpoint": (manifest.checkpoint_source(record) or {}).get("uri", record.checkpoint),
            "checkpoint_sha256": record.checkpoint_sha256,
            "random_weights": record.random_weights,
            "sha256": record.sha256,
            "opset": record.opset,
            "parity_max_abs_error": record.parity.get("max_abs_error"),
        }
        if record.name in summary:
            info[record.name]["engine"] = summary[record.name]
        engine = summary.get(record.name, {})
        runtime, precision = (graphs or {}).get(record.name) or (
            ("tensorrt", engine.get("precision", "")) if engine.get("backend") == "tensorrt" else ("onnxruntime", "fp32"))
        info[record.name].update(runtime=runtime, precision=precision, bf16_gate=gates.get(record.name, {}))
    return json.dumps(info, sort_keys=True)


def _write_graph_file(manifest: Manifest, spec: ModelSpec, config: mc.ModelConfig, model_dir: Path,
                      options: dict | None) -> None:
    """The graph of a graph model into its version folder: the ONNX file, or for `tensorrt_plan` the
    engine and its provenance record."""
    artifact = manifest.artifact_path(spec.graph)
    if config.platform == "tensorrt_plan":  # not the KEEP_ON_ONNXRUNTIME graphs
        # A parity-gated engine built with the image's TensorRT for the target GPU (options
        # `target_gpu`, `target_compute_capability`; else this machine's GPU): engines.provenance.
        from dataclasses import asdict

        from segserve.engines.provenance import EngineRefused, fleet_graph_file
        from segserve.runtime.fleet_image import release

        try:
            plan = fleet_graph_file(manifest, spec.graph, release().tensorrt,
                                    gpu_name=(options or {}).get("target_gpu"),
                                    compute_capability=(options or {}).get("target_compute_capability"))
        except EngineRefused as exc:
            raise RepositoryError(f"TensorRT engine refused: {exc}") from exc
        _link_or_copy(plan, model_dir / "1" / "model.plan")
        (model_dir / "engine.json").write_text(
            json.dumps(asdict(manifest.engines[spec.graph]), indent=2, sort_keys=True))
    else:
        _link_or_copy(artifact, model_dir / "1" / "model.onnx")


def build_repository(artifacts: Path, out: Path, target: str = "embedded", graph_backend: str = "onnxruntime",
                     session_ttl_s: float = 600.0, max_sessions: int = 64, session_runner: str | None = None,
                     batching: bool = True, intra_op_threads: int | None = None,
                     options: dict | None = None, cpu_runtime: str = "onnxruntime", precision: str | None = None,
                     graph_precisions: dict[str, str] | None = None, graph_files: bool = True) -> list[str]:
    """`session_runner="bls"` on the embedded target runs the fleet's BLS code path on CPU.
    `batching=False` turns dynamic batching off for the graphs that honour it (Mask2Former), the
    baseline of the batching benchmark.

    Embedded target, graphs run in process (`choose_graph_runtimes`): `cpu_runtime` auto | onnxruntime
    | openvino, `precision` fp32 | bf16 (default: fp32, bf16 for auto on a CPU with native bf16),
    `graph_precisions` per graph (the precision gate's verdict) overriding `precision`. Threads per
    graph runner: `graph_threads` (a share of the cores), or `intra_op_threads` for all of them, or
    option `video_intra_op_threads` for the video tracker. OpenVINO's compiled-model cache: option
    `graph_cache_dir` (default `DEFAULT_GRAPH_CACHE`, beside the repository). The fleet target ignores
    these (its graphs are Triton's own models).

    `graph_files=False` writes every config.pbtxt and model.py but no graph, engine or tokenizer file,
    from the manifest's records alone (the readable copy, `segserve.repository.readable`); option
    `runtime_digest` then stands in for the segserve runtime's sha256."""
    if target not in TARGETS:
        raise RepositoryError(f"unknown target {target!r}; choose one of {TARGETS}")
    if graph_backend not in GRAPH_BACKENDS:
        raise RepositoryError(f"unknown graph backend {graph_backend!r}; choose one of {GRAPH_BACKENDS}")
    manifest = Manifest(Path(artifacts))
    # `options`: family-specific settings, e.g. the video tracker's caps (`max_video_sessions`,
    # `max_video_objects`, `max_video_frames`, `max_video_frame_bytes` / `max_video_memory_bytes` per
    # session, `max_video_total_bytes` for all sessions of an instance: description.VIDEO_*_BYTES;
    # `video_batch_objects` False: the tracker runs one graph call per object, the path before batching).
    # Session models get Triton's idle limit a margin above their TTL (`description.sequence_idle_s`).
    specs = model_specs(manifest, session_ttl_s, max_sessions, {**(options or {}), "batching": batching}, graph_files)
    trt = TrtRender.from_options({**(options or {}), "batching": batching})  # onnxruntime-trt
    # openvino: the node's cores (option `cpu_cores`, else this machine's) shared by every graph instance
    openvino = OpenVinoRender(precision or "bf16", graph_threads(sum(s.instances for s in specs if s.graph),
                                                                 (options or {}).get("cpu_cores")))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    digest = (options or {}).get("runtime_digest") or runtime_digest()
    local = {spec.name: in_process_graphs(spec, target, session_runner) for spec in specs}
    if target == "embedded" and graph_precisions is None:
        # bf16 is served only where the graph passed its agreement gate (export.precision), measured
        # here at the first bf16 build of an export when `segserve export --measure-bf16` did not.
        try:
            wanted = graph_runner.resolve(cpu_runtime, precision)
        except ValueError as exc:
            raise RepositoryError(str(exc)) from exc
        if wanted == ("openvino", "bf16"):
            from segserve.export.precision import graph_precisions as gated_precisions

            graph_precisions = gated_precisions(manifest, "bf16")
    runtimes = choose_graph_runtimes(sorted({g for graphs in local.values() for g in graphs}), cpu_runtime,
                                     precision, graph_precisions) if target == "embedded" else {}
    info = model_info(manifest, engines=target == "fleet" and graph_backend == "tensorrt", graphs=runtimes)
    threads = int(intra_op_threads or 0) or graph_threads(sum(s.instances for s in specs if local[s.name]),
                                                          (options or {}).get("cpu_cores"))
    cache_dir = (options or {}).get("graph_cache_dir")
    cache_dir = str(Path(cache_dir).resolve()) if cache_dir else DEFAULT_GRAPH_CACHE
    for spec in specs:
        model_dir = out / spec.name
        shutil.rmtree(model_dir, ignore_errors=True)
        version_dir = model_dir / "1"
        version_dir.mkdir(parents=True)
        if local[spec.name]:  # the tracker's `video_intra_op_threads` stays
            rendered = graph_runner.render_parameters({g: runtimes[g] for g in local[spec.name]}, threads, cache_dir)
            spec.parameters.update({k: v for k, v in rendered.items() if k not in spec.parameters})
        if spec.python_module:
            spec.parameters["model_info"] = info
            if session_runner and "runner" in spec.parameters:
                spec.parameters["runner"] = session_runner
            if session_runner == "bls" and "graphs" in spec.parameters:
                spec.parameters["graphs"] = "bls"  # the tracker calls the graph models, as in the fleet
        config = render_config(spec, target, graph_backend, manifest, trt, openvino)
        (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
        if spec.ensemble:
            continue  # an ensemble has only its (empty) version folder
        if spec.graph:
            if graph_files:  # the readable copy has none
                _write_graph_file(manifest, spec, config, model_dir, options)
            if target == "embedded":
                (version_dir / "model.py").write_text(_MODEL_PY.format(module="onnx_model"))
        else:
            template = _FLEET_MODEL_PY if target == "fleet" else _MODEL_PY
            (version_dir / "model.py").write_text(template.format(module=spec.python_module, name=spec.name,
                                                                  digest=digest))
            for folder in getattr(spec, "artifact_files", ()) if graph_files else ():
                source = manifest.directory / folder
                if not source.is_dir():
                    raise RepositoryError(f"model {spec.name} needs {source}, missing from the artifacts")
                shutil.copytree(source, version_dir / Path(folder).name)
    (out / "repository.json").write_text(json.dumps(
        {"target": target, "graph_backend": graph_backend, "models": [s.name for s in specs],
         "segserve_runtime": digest,
         "graph_runtimes": {g: {"runtime": r, "precision": p} for g, (r, p) in sorted(runtimes.items())}},
        indent=2))
    validate_repository(out, graph_files)
    return [s.name for s in specs]


def _check_accelerators(name: str, config: mc.ModelConfig) -> None:
    """What the onnxruntime backend accepts at load: known accelerators, documented TensorRT keys."""
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name not in ("tensorrt", "cuda"):
            raise RepositoryError(f"{name}: unknown GPU execution accelerator {accelerator.name!r}")
        unknown = sorted(set(accelerator.parameters) - ORT_TRT_PARAMETERS) if accelerator.name == "tensorrt" else []
        if unknown:
            raise RepositoryError(f"{name}: TensorRT accelerator parameters {unknown} are not the onnxruntime "
                                  "backend's")


_OPENVINO_VALUES = {"PERFORMANCE_HINT": ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"), "HINT_BF16": ("YES",)}


def _check_openvino(name: str, config: mc.ModelConfig, onnx_path: Path) -> None:
    """What the openvino backend (r24.10) accepts at load: the ONNX file named by
    default_model_filename (its default is model.xml), CPU instances only, its parameters with values
    it parses, max_batch_size 0 or 1 (`OpenVinoRender`), and the graph's shapes as it checks them."""
    if config.default_model_filename != onnx_path.name:
        raise RepositoryError(f"{name}: default_model_filename must be {onnx_path.name!r} (the backend looks for "
                              "model.xml otherwise)")
    if any(g.kind != mc.ModelInstanceGroup.KIND_CPU for g in config.instance_group):
        raise RepositoryError(f"{name}: the openvino backend runs KIND_CPU instances only")
    unknown = sorted(set(config.parameters) - OPENVINO_PARAMETERS)
    if unknown:
        raise RepositoryError(f"{name}: parameters {unknown} are not the openvino backend's")
    for key, parameter in config.parameters.items():
        value = parameter.string_value.upper()
        if key in _OPENVINO_VALUES and value not in _OPENVINO_VALUES[key]:
            raise RepositoryError(f"{name}: {key} {value!r}: the backend takes {_OPENVINO_VALUES[key]}")
        numeric = key in ("INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS", "NUM_STREAMS")
        if numeric and not (value.isdigit() or (key == "NUM_STREAMS" and value in ("AUTO", "NUMA"))):
            raise RepositoryError(f"{name}: {key} {value!r} is not a number")
    if config.max_batch_size > 1 or config.HasField("dynamic_batching"):
        raise RepositoryError(f"{name}: the openvino backend runs a batched model at exactly max_batch_size: "
                              "render it with max_batch_size 1 (or 0) and no dynamic batcher")
    try:
        import openvino  # noqa: F401
    except ImportError:  # the shapes are then checked at load only
        return
    signature = [[Tensor(t.name, "", tuple(t.dims)) for t in ts] for ts in (config.input, config.output)]
    refusal = openvino_backend_refusal(onnx_path, *signature, config.max_batch_size)
    if refusal:
        raise RepositoryError(f"{name}: the openvino backend would refuse it: {refusal}")


def _onnx_signature(path: Path) -> dict[str, int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output] if v.name not in initializers}


def validate_repository(root: Path, graph_files: bool = True) -> dict[str, mc.ModelConfig]:
    """Parse every config strictly and check it against what it serves; raise on the first fault.
    `graph_files=False` (a repository without graphs): everything but the graph files."""
    root = Path(root)
    configs: dict[str, mc.ModelConfig] = {}
    for config_path in sorted(root.glob("*/config.pbtxt")):
        config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
        if config.name != config_path.parent.name:
            raise RepositoryError(f"{config_path}: name {config.name!r} differs from its folder")
        configs[config.name] = config
    for name, config in configs.items():
        version_dir = root / name / "1"
        onnx_model = (config.platform == "onnxruntime_onnx" or config.backend == "openvino"
                      or (config.backend == "python" and "onnx_file" in config.parameters))
        if not graph_files and (onnx_model or config.platform == "tensorrt_plan"):  # all but the graph
            _check_accelerators(name, config)
            if config.backend == "python" and not (version_dir / "model.py").is_file():
                raise RepositoryError(f"{name}: model.py missing")
        elif onnx_model:
            onnx_path = version_dir / "model.onnx"
            if not onnx_path.is_file():
                raise RepositoryError(f"{name}: {onnx_path} missing")
            _check_accelerators(name, config)
            if config.backend == "openvino":
                _check_openvino(name, config, onnx_path)
            signature = _onnx_signature(onnx_path)
            for tensor in [*config.input, *config.output]:
                if tensor.name not in signature:
                    raise RepositoryError(f"{name}: tensor {tensor.name} is not in the ONNX graph")
                numpy_type = onnx.helper.tensor_dtype_to_np_dtype(signature[tensor.name]).name
                if f"TYPE_{_NUMPY_TO_TRITON[numpy_type]}" != mc.DataType.Name(tensor.data_type):
                    raise RepositoryError(f"{name}: {tensor.name} is {numpy_type} in the graph")
        elif config.platform == "tensorrt_plan":
            plan = version_dir / "model.plan"
            if not plan.is_file():
                raise RepositoryError(f"{name}: model.plan missing")
            # The engine's provenance: build-repo copies its manifest record next to the config.
            record_path = root / name / "engine.json"
            if not record_path.is_file():
                raise RepositoryError(f"{name}: engine.json missing: build the repository with `segserve build-repo`")
            from segserve.export.manifest import sha256_file

            if json.loads(record_path.read_text()).get("sha256") != sha256_file(plan):
                raise RepositoryError(f"{name}: model.plan does not hash to the sha256 in engine.json")
        elif config.backend == "python":
            if not (version_dir / "model.py").is_file():
                raise RepositoryError(f"{name}: model.py missing")
        elif config.platform != "ensemble":
            raise RepositoryError(f"{name}: unsupported backend {config.backend or config.platform}")
        for key in ("encoder_model", "decoder_model"):
            target = config.parameters[key].string_value if key in config.parameters else None
            if target and target not in configs:
                raise RepositoryError(f"{name}: parameter {key} names missing model {target}")
        if config.HasField("sequence_batching"):
            controls = {c.name for c in config.sequence_batching.control_input}
            if not {"START", "END", "CORRID"} <= controls:
                raise RepositoryError(f"{name}: sequence batching lacks START/END/CORRID controls")
        for step in config.ensemble_scheduling.step:
            if step.model_name not in configs:
                raise RepositoryError(f"{name}: ensemble step uses missing model {step.model_name}")
        if config.platform == "ensemble":
            _validate_ensemble(root, config, configs)
    return configs


def _compatible(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


def _full_shape(config: mc.ModelConfig, tensor) -> list[int]:
    """A tensor's shape with the batch dimension, as the ensemble scheduler passes it on."""
    return ([-1] if config.max_batch_size > 0 else []) + list(tensor.dims)


def _validate_ensemble(root: Path, config: mc.ModelConfig, configs: dict[str, mc.ModelConfig]) -> None:
    """What Triton checks when it loads an ensemble, checked without a server: every step maps
    existing tensors of its model, every tensor a step reads is an ensemble input or an earlier
    step's output (no cycles), types and shapes agree, every ensemble output is produced once,
    and composing models batch at least as much as the ensemble."""
    name = config.name
    steps = config.ensemble_scheduling.step
    if not steps:
        raise RepositoryError(f"{name}: ensemble without steps")
    if not (root / name / "1").is_dir():
        raise RepositoryError(f"{name}: version folder 1/ missing")
    # ensemble tensor -> (data type, full shape)
    available = {t.name: (t.data_type, _full_shape(config, t)) for t in config.input}
    produced_by: dict[str, str] = {}
    pending = list(steps)
    while pending:
        ready = [s for s in pending if all(v in available for v in s.input_map.values())]
        if not ready:
            missing = sorted({v for s in pending for v in s.input_map.values() if v not in available})
            raise RepositoryError(f"{name}: ensemble tensors {missing} are never produced (or produced in a cycle)")
        for step in ready:
            pending.remove(step)
            model = configs[step.model_name]
            where = f"{name}: step {step.model_name}"
            if config.max_batch_size > 0 and model.max_batch_size < config.max_batch_size:
                raise RepositoryError(f"{where}: max_batch_size {model.max_batch_size} is below the ensemble's "
                                      f"{config.max_batch_size}")
            model_inputs = {t.name: t for t in model.input}
            for key, tensor in step.input_map.items():
                if key not in model_inputs:
                    raise RepositoryError(f"{where}: input_map names unknown input {key}")
                data_type, dims = available[tensor]
                wanted = _full_shape(model, model_inputs[key])
                if data_type != model_inputs[key].data_type or not _compatible(dims, wanted):
                    raise RepositoryError(f"{where}: input {key} {mc.DataType.Name(model_inputs[key].data_type)} "
                                          f"{wanted} cannot take ensemble tensor {tensor} "
                                          f"{mc.DataType.Name(data_type)} {dims}")
            unmapped = [t.name for t in model.input if not t.optional and t.name not in step.input_map]
            if unmapped:
                raise RepositoryError(f"{where}: required inputs {unmapped} are not mapped")
            model_outputs = {t.name: t for t in model.output}
            for key, tensor in step.output_map.items():
                if key not in model_outputs:
                    raise RepositoryError(f"{where}: output_map names unknown output {key}")
                if tensor in available:
                    raise RepositoryError(f"{where}: ensemble tensor {tensor} is produced twice")
                available[tensor] = (model_outputs[key].data_type, _full_shape(model, model_outputs[key]))
                produced_by[tensor] = step.model_name
    for output in config.output:
        if output.name not in produced_by:
            raise RepositoryError(f"{name}: ensemble output {output.name} is not produced by any step")
        data_type, dims = available[output.name]
        if data_type != output.data_type or not _compatible(dims, _full_shape(config, output)):
            raise RepositoryError(f"{name}: ensemble output {output.name} does not match what "
                                  f"{produced_by[output.name]} produces")
