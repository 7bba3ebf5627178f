"""Shared export machinery: torch -> ONNX, parity against PyTorch, manifest entry.

Every model family's export module builds a wrapper `nn.Module` plus example inputs and calls
`export_artifact`; this module owns the exporter call, the parity check that fails loudly above
tolerance, incremental reuse through the manifest, and progress output.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

from .manifest import ArtifactRecord, Manifest, sha256_file

DEFAULT_OPSET = 17
# Bump when a wrapper's graph changes, so cached artifacts are rebuilt.
EXPORT_FORMAT_VERSION = 1


class ParityError(RuntimeError):
    pass


def family_parser(description: str, random_configs: Sequence[str], image_size_help: str | None = None
                  ) -> argparse.ArgumentParser:
    """The options every family's export script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", type=Path,
                        help="Hugging Face directory (or Meta .pt for SAM 2); random weights if omitted")
    parser.add_argument("--out", type=Path, default=Path("artifacts"))
    if image_size_help:
        parser.add_argument("--image-size", type=int, help=image_size_help)
    parser.add_argument("--expect-sha256", help="refuse a checkpoint whose hash differs")
    parser.add_argument("--random-size", choices=random_configs, default=random_configs[0])
    parser.add_argument("--force", action="store_true", help="re-export even when a cached graph matches")
    return parser


def log(message: str) -> None:
    print(f"[segserve export] {message}", file=sys.stderr, flush=True)


class Step:
    """Progress output for a long step: start line, then elapsed time."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        self.start = time.perf_counter()
        log(f"{self.what} ...")
        return self

    def __exit__(self, exc_type, *_):
        status = "failed" if exc_type else "done"
        log(f"{self.what}: {status} in {time.perf_counter() - self.start:.1f} s")


@dataclass
class GraphSpec:
    """What to export: a module, example inputs and the graph's signature."""

    name: str
    module: torch.nn.Module
    example_inputs: dict[str, torch.Tensor]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    # Extra inputs used only for the parity check (other shapes than the export example).
    parity_inputs: list[dict[str, torch.Tensor]] = field(default_factory=list)
    atol: float = 1e-4
    rtol: float = 1e-3
    opset: int = DEFAULT_OPSET
    # torch.export-based exporter: slower to export, but a leaner graph (the SAM 2 encoder runs
    # faster in ONNX Runtime). Its example inputs must not use size 1 on a dynamic axis.
    dynamo: bool = False


def artifact_settings(settings: dict[str, Any], opset: int = DEFAULT_OPSET, dynamo: bool = False) -> dict[str, Any]:
    """The settings a cached artifact must match: the caller's plus exporter facts."""
    return {**settings, "opset": opset, "exporter": "dynamo" if dynamo else "legacy",
            "format": EXPORT_FORMAT_VERSION, "torch": torch.__version__}


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def ort_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _signature(values: Sequence[onnx.ValueInfoProto], dynamic: dict[str, dict[int, str]],
               example_shapes: dict[str, tuple[int, ...]]) -> dict[str, dict[str, Any]]:
    """Names, dtypes and shapes; dims the exporter left symbolic but that are fixed take the
    size seen in the parity run, declared dynamic axes keep their names."""
    out = {}
    for value in values:
        tensor = value.type.tensor_type
        dims: list[int | str] = []
        for axis, dim in enumerate(tensor.shape.dim):
            if axis in dynamic.get(value.name, {}):
                dims.append(dynamic[value.name][axis])
            elif dim.dim_param and value.name in example_shapes:
                dims.append(int(example_shapes[value.name][axis]))
            else:
                dims.append(dim.dim_param or dim.dim_value)
        out[value.name] = {"dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": dims}
    return out


def measure_parity(spec: GraphSpec, path: Path) -> dict[str, Any]:
    """Run PyTorch and ONNX Runtime on every parity input; raise above tolerance."""
    session = ort_session(path)
    worst_abs, worst_rel = 0.0, 0.0
    shapes: dict[str, tuple[int, ...]] = {}
    cases = [spec.example_inputs, *spec.parity_inputs]
    for case in cases:
        with torch.no_grad():
            expected = spec.module(*case.values())
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        feeds = {k: v.numpy() for k, v in case.items()}
        actual = session.run(spec.output_names, feeds)
        shapes = shapes or {n: a.shape for n, a in zip(spec.output_names, actual)}
        for name, exp, act in zip(spec.output_names, expected, actual):
            exp = exp.numpy()
            if exp.shape != act.shape:
                raise ParityError(f"{spec.name}: output {name} shape {act.shape} != PyTorch {exp.shape}")
            if exp.dtype.kind == "f":
                err = np.abs(exp.astype(np.float64) - act.astype(np.float64))
                worst_abs = max(worst_abs, float(err.max(initial=0.0)))
                bound = spec.atol + spec.rtol * np.abs(exp)
                if np.any(err > bound):
                    raise ParityError(
                        f"{spec.name}: output {name} differs from PyTorch by {float(err.max()):.3g} "
                        f"(tolerance atol={spec.atol} rtol={spec.rtol})"
                    )
                scale = float(np.abs(exp).max(initial=0.0)) or 1.0
                worst_rel = max(worst_rel, float(err.max(initial=0.0)) / scale)
            elif not np.array_equal(exp, act):
                raise ParityError(f"{spec.name}: output {name} differs from PyTorch")
    return {"max_abs_error": worst_abs, "max_rel_error": worst_rel, "atol": spec.atol, "rtol": spec.rtol,
            "cases": len(cases), "runtime": f"onnxruntime {ort.__version__} CPU", "example_shapes": shapes}


def export_artifact(
    spec: GraphSpec,
    manifest: Manifest,
    checkpoint: str,
    checkpoint_sha256: str,
    random_weights: bool,
    settings: dict[str, Any],
    model_config: dict[str, Any] | None = None,
    force: bool = False,
) -> ArtifactRecord:
    """Export `spec` to `<manifest dir>/<name>.onnx` unless an identical build is cached."""
    settings = artifact_settings(settings, spec.opset, spec.dynamo)
    if not force and (cached := manifest.reusable(spec.name, checkpoint_sha256, settings)):
        log(f"{spec.name}: reusing cached artifact {cached.file} (checkpoint and settings unchanged)")
        return cached
    path = manifest.directory / f"{spec.name}.onnx"
    manifest.directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.onnx")
    spec.module.eval()
    exporter = "dynamo" if spec.dynamo else "legacy"
    with Step(f"{spec.name}: exporting to ONNX ({exporter} exporter, opset {spec.opset})"), torch.no_grad():
        if spec.dynamo:
            dims: dict[str, torch.export.Dim] = {}
            dynamic_shapes = tuple(
                {axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in spec.dynamic_axes.get(k, {}).items()}
                for k in spec.example_inputs)
            torch.onnx.export(spec.module, tuple(spec.example_inputs.values()), str(tmp),
                              input_names=list(spec.example_inputs), output_names=spec.output_names,
                              dynamic_shapes=dynamic_shapes, opset_version=max(spec.opset, 18), dynamo=True,
                              external_data=False, optimize=True)
        else:
            torch.onnx.export(spec.module, tuple(spec.example_inputs.values()), str(tmp),
                              input_names=list(spec.example_inputs), output_names=spec.output_names,
                              dynamic_axes=spec.dynamic_axes, opset_version=spec.opset, dynamo=False)
    model = onnx.load(str(tmp))
    onnx.checker.check_model(model)
    with Step(f"{spec.name}: parity check against PyTorch"):
        try:
            parity = measure_parity(spec, tmp)
        except ParityError:
            tmp.unlink(missing_ok=True)
            raise
    log(f"{spec.name}: max abs error {parity['max_abs_error']:.2e} over {parity['cases']} cases")
    os.replace(tmp, path)
    record = ArtifactRecord(
        name=spec.name,
        file=path.name,
        sha256=sha256_file(path),
        checkpoint=checkpoint,
        checkpoint_sha256=checkpoint_sha256,
        random_weights=random_weights,
        settings=settings,
        opset=default_opset(model),
        inputs=_signature(model.graph.input, spec.dynamic_axes, {}),
        outputs=_signature(model.graph.output, spec.dynamic_axes, parity.pop("example_shapes")),
        parity=parity,
        model_config=model_config or {},
    )
    manifest.put(record)
    return record


def random_checkpoint(directory: Path, build: Callable[[], torch.nn.Module], seed: int = 0,
                      fingerprint: str = "") -> Path:
    """Save a seeded random-weight model once; later calls reuse it (stable hash, stable cache).
    `fingerprint` (e.g. the config's JSON) rebuilds it when the recipe changes."""
    marker = directory / "RANDOM_WEIGHTS"
    stamp = f"random-weight model built in code; not a trained checkpoint\nrecipe {hash_text(f'{seed}:{fingerprint}')}\n"
    if (directory / "config.json").is_file() and marker.is_file() and marker.read_text() == stamp:
        return directory
    torch.manual_seed(seed)
    model = build()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    marker.write_text(stamp)
    return directory


def hash_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]
