"""The parity gate of a TensorRT engine: the engine against ONNX Runtime on the export's parity cases.

The cases are the ones each family's exporter checks its ONNX graph with (`graph_specs(model)`:
`example_inputs` + `parity_inputs`, seeded), regenerated from the manifest's checkpoint by
`parity_cases`. Tolerances are the export's (`atol`, `rtol` in the artifact's parity record),
with two rules for a compiled graph:
- an output that is a mask logit map (`MASK_OUTPUTS`) is compared as masks: IoU of the thresholded
  maps >= MASK_IOU, mask by mask;
- a half-precision engine (fp16 / bf16) cannot meet float32 element tolerances, so its other float
  outputs are held to `HALF_PRECISION_REL_ERROR` of the output's own scale instead.
The comparison is numpy only: `compare` and `gate` run anywhere; only the runner needs a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

MASK_IOU = 0.99
# graph -> mask logit outputs and the logit that thresholds them (SAM 2: 0.0; Mask2Former: sigmoid 0.5).
MASK_OUTPUTS: dict[str, dict[str, float]] = {
    "sam2_prompt_decoder": {"multi_masks": 0.0, "single_mask": 0.0},
    "sam2_video_decoder": {"low_res_mask": 0.0, "high_res_mask": 0.0},
    "sam2_video_mask_prompt": {"low_res_mask": 0.0, "high_res_mask": 0.0},
    "mask2former": {"masks_queries_logits": 0.0},
}
# Masks whose union is below this fraction of the map are too small for IoU to mean anything
# (one flipped pixel); they are counted, not gated.
MIN_UNION_FRACTION = 1e-3
# Max |engine - onnxruntime| / max |onnxruntime| per non-mask float output of a half-precision engine.
HALF_PRECISION_REL_ERROR = {"fp16": 1e-2, "bf16": 4e-2}


class Runner(Protocol):
    description: str

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Tolerance:
    precision: str  # fp32 | fp16 | bf16
    atol: float
    rtol: float

    def describe(self) -> dict[str, Any]:
        rules = {"mask_outputs": f"IoU of thresholded masks >= {MASK_IOU} (union >= {MIN_UNION_FRACTION:g} of the map)",
                 "integer_outputs": "exact"}
        if self.precision == "fp32":
            rules["float_outputs"] = f"|engine - onnxruntime| <= {self.atol:g} + {self.rtol:g} * |onnxruntime|"
        else:
            rules["float_outputs"] = (f"max |engine - onnxruntime| <= {HALF_PRECISION_REL_ERROR[self.precision]:g} "
                                      f"* max |onnxruntime| ({self.precision} engine)")
        return rules


def mask_ious(expected: np.ndarray, actual: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-mask IoU over the last two axes, and whether each mask is large enough to gate on.
    Two empty masks agree (IoU 1)."""
    a = (expected > threshold).reshape(-1, *expected.shape[-2:])
    b = (actual > threshold).reshape(-1, *actual.shape[-2:])
    inter = np.logical_and(a, b).sum(axis=(1, 2))
    union = np.logical_or(a, b).sum(axis=(1, 2))
    ious = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    gated = union >= max(1.0, MIN_UNION_FRACTION * a.shape[1] * a.shape[2])
    return ious, gated


def compare(graph: str, expected: dict[str, np.ndarray], actual: dict[str, np.ndarray],
            tolerance: Tolerance) -> tuple[dict[str, dict[str, float]], list[str]]:
    """One case: per-output measurements and the failures (empty when the case passes)."""
    masks = MASK_OUTPUTS.get(graph, {})
    report: dict[str, dict[str, float]] = {}
    failures: list[str] = []
    for name, exp in expected.items():
        if name not in actual:
            failures.append(f"output {name} missing from the engine")
            continue
        act = np.asarray(actual[name])
        if act.shape != exp.shape:
            failures.append(f"output {name} shape {act.shape} != onnxruntime {exp.shape}")
            continue
        if exp.dtype.kind != "f":
            report[name] = {"mismatches": int((act != exp).sum())}
            if report[name]["mismatches"]:
                failures.append(f"output {name}: {report[name]['mismatches']} values differ (exact match required)")
            continue
        err = np.abs(exp.astype(np.float64) - act.astype(np.float64))
        scale = float(np.abs(exp).max(initial=0.0)) or 1.0
        entry = {"max_abs_error": float(err.max(initial=0.0)), "max_rel_error": float(err.max(initial=0.0)) / scale}
        if not np.all(np.isfinite(act)):
            failures.append(f"output {name}: engine produced non-finite values")
        if name in masks:
            ious, gated = mask_ious(exp, act, masks[name])
            entry.update(min_mask_iou=float(ious[gated].min(initial=1.0)), median_mask_iou=float(np.median(ious)),
                         masks=int(ious.size), masks_too_small_to_gate=int((~gated).sum()))
            if entry["min_mask_iou"] < MASK_IOU:
                failures.append(f"output {name}: mask IoU {entry['min_mask_iou']:.4f} < {MASK_IOU}")
        if tolerance.precision == "fp32":
            bad = err > tolerance.atol + tolerance.rtol * np.abs(exp)
            if name not in masks and np.any(bad):
                failures.append(f"output {name} differs by {entry['max_abs_error']:.3g} "
                                f"(atol={tolerance.atol:g} rtol={tolerance.rtol:g})")
        elif name not in masks and entry["max_rel_error"] > HALF_PRECISION_REL_ERROR[tolerance.precision]:
            failures.append(f"output {name}: relative error {entry['max_rel_error']:.3g} > "
                            f"{HALF_PRECISION_REL_ERROR[tolerance.precision]:g} ({tolerance.precision})")
        report[name] = entry
    return report, failures


def _merge(total: dict[str, dict[str, float]], case: dict[str, dict[str, float]]) -> None:
    for name, entry in case.items():
        into = total.setdefault(name, {})
        for key, value in entry.items():
            worst_is_min = key.startswith(("min_", "median_"))
            if key not in into:
                into[key] = value
            elif key in ("masks", "masks_too_small_to_gate", "mismatches"):
                into[key] += value
            else:
                into[key] = min(into[key], value) if worst_is_min else max(into[key], value)


def gate(graph: str, engine: Runner, reference: Runner, cases: list[dict[str, np.ndarray]],
         tolerance: Tolerance, accepts=lambda feeds: True) -> dict[str, Any]:
    """Run every case through both; `passed` only when at least one case ran and none failed.
    `accepts(feeds)` is False for a case outside every optimization profile (skipped, counted)."""
    outputs: dict[str, dict[str, float]] = {}
    failures: list[str] = []
    ran = skipped = 0
    for index, feeds in enumerate(cases):
        if not accepts(feeds):
            skipped += 1
            continue
        expected = reference.run(feeds)
        try:
            actual = engine.run(feeds)
        except Exception as exc:  # an engine that cannot run a case fails the gate
            failures.append(f"case {index}: engine failed: {exc}")
            continue
        ran += 1
        report, case_failures = compare(graph, expected, actual, tolerance)
        _merge(outputs, report)
        failures += [f"case {index}: {f}" for f in case_failures]
    if not ran and not failures:
        failures.append(f"none of the {len(cases)} parity cases fits the engine's optimization profiles")
    return {"passed": not failures, "failures": failures, "cases": ran, "cases_outside_profiles": skipped,
            "precision": tolerance.precision, "criteria": tolerance.describe(), "outputs": outputs,
            "engine": engine.description, "reference": reference.description}


class OrtRunner:
    """The reference: the exported ONNX graph in ONNX Runtime (CPU, as the export's parity)."""

    def __init__(self, path, providers: list[str] | None = None):
        import onnxruntime as ort

        from segserve.export.onnx_export import ort_session

        self.session = ort_session(path) if not providers else ort.InferenceSession(str(path), providers=providers)
        self.names = [o.name for o in self.session.get_outputs()]
        self.description = f"onnxruntime {ort.__version__} {self.session.get_providers()[0]}"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(self.names, feeds)))


# How the cases are regenerated, recorded with every engine.
CASES_SOURCE = ("the family exporter's GraphSpec example_inputs + parity_inputs (seeded), regenerated from the "
                "manifest checkpoint by segserve.engines.parity.parity_cases")


def export_spec(manifest, graph: str):
    """The family exporter's GraphSpec of `graph` (module + parity inputs), rebuilt from the
    manifest's checkpoint (needs torch and transformers)."""
    record = manifest.records[graph]
    family = record.settings.get("family", graph)
    checkpoint = record.checkpoint
    if family == "sam2":
        from segserve.export.sam2 import graph_specs, load_sam2

        specs = graph_specs(load_sam2(checkpoint))
    elif family == "sam2_video":
        from segserve.export.sam2_video import graph_specs, load_sam2_video

        specs = graph_specs(load_sam2_video(checkpoint))
    elif family == "mask2former":
        from segserve.export.mask2former import graph_spec, load_mask2former

        specs = [graph_spec(load_mask2former(checkpoint), int(record.settings["image_size"]))]
    elif family == "grounding_dino":
        from segserve.export.grounding_dino import graph_spec, load_grounding_dino

        model, tokenizer = load_grounding_dino(checkpoint)
        specs = [graph_spec(model, tokenizer, int(record.settings["image_size"]), atol=record.parity["atol"])]
    else:
        raise ValueError(f"{graph}: no exporter known for family {family!r}")
    return next(s for s in specs if s.name == graph)


def parity_cases(manifest, graph: str) -> list[dict[str, np.ndarray]]:
    """The export's parity inputs for `graph`, as numpy feeds."""
    spec = export_spec(manifest, graph)
    return [{k: v.numpy() for k, v in case.items()} for case in [spec.example_inputs, *spec.parity_inputs]]
