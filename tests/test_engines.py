"""TensorRT engines: what a CPU can prove (FP32 pins, the parity gate, provenance and the fleet's
refusals, the no-GPU paths), and the `gpu` tests that build and run real engines (skipped here).

The provenance tests use a RECORDED engine description: the JSON record a real build writes, with a
placeholder plan file whose sha256 matches. Nothing here runs or claims to run an engine.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from segserve.engines import parity
from segserve.engines.build import (FP32_PINS, EngineBuildError, LayerInfo, TensorRTUnavailable, check_precision,
                                    gate_and_write, layers_to_pin, require_tensorrt)
from segserve.engines.provenance import Gpu, engine_summary, verified
from segserve.export.manifest import EngineRecord, Manifest, sha256_file

ROOT = Path(__file__).resolve().parents[1]
H100 = Gpu("NVIDIA H100 80GB HBM3", "9.0")


# --- FP32 pins -------------------------------------------------------------------------------------

def test_fp32_pins_match_grounding_dino_text_and_cross_attention_layers():
    layers = [
        LayerInfo(0, "/model/text_backbone/encoder/layer.0/attention/output/LayerNorm/LayerNormalization", "NORMALIZATION"),
        LayerInfo(1, "/model/encoder/layers.0/fusion_layer/attn/Softmax", "SOFTMAX"),
        LayerInfo(2, "/model/decoder/layers.1/encoder_attn_text/Softmax", "SOFTMAX"),
        LayerInfo(3, "/model/backbone/conv_encoder/stages.0/norm/LayerNormalization", "NORMALIZATION"),  # vision
        LayerInfo(4, "/model/text_backbone/encoder/layer.0/attention/self/MatMul", "MATRIX_MULTIPLY"),  # not a type
        LayerInfo(5, "/model/decoder/layers.1/self_attn/Softmax", "SOFTMAX"),  # query self-attention
    ]
    assert [layer.index for layer in layers_to_pin("grounding_dino", layers)] == [0, 1, 2]
    assert layers_to_pin("sam2_image_encoder", layers) == []
    custom = {"g": [("SOFTMAX", r"self_attn")]}
    assert [layer.index for layer in layers_to_pin("g", layers, custom)] == [5]
    assert {kind for kind, _ in FP32_PINS["grounding_dino"]} == {"NORMALIZATION", "SOFTMAX"}


def test_bf16_needs_compute_capability_8():
    check_precision("bf16", H100)
    check_precision("fp32", Gpu("Tesla T4", "7.5"))
    with pytest.raises(EngineBuildError, match="bf16 needs compute capability >= 8.0"):
        check_precision("bf16", Gpu("Tesla T4", "7.5"))
    with pytest.raises(EngineBuildError, match="unknown precision"):
        check_precision("int8", H100)


# --- the parity gate (numpy) -----------------------------------------------------------------------

def _decoder_outputs(seed=0):
    rng = np.random.default_rng(seed)
    masks = rng.normal(size=(2, 3, 64, 64)).astype(np.float32)
    masks[:, :, :32] += 3.0  # a large region, so IoU means something
    return {"multi_masks": masks, "multi_iou": rng.random((2, 3)).astype(np.float32),
            "single_mask": masks[:, :1].copy(), "single_iou": rng.random((2, 1)).astype(np.float32),
            "object_score_logits": rng.normal(size=(2, 1)).astype(np.float32)}


def test_mask_iou_thresholds_logits_and_two_empty_masks_agree():
    a = np.full((2, 8, 8), -1.0)
    b = a.copy()
    a[0, :4], b[0, :2] = 1.0, 1.0
    ious, gated = parity.mask_ious(a, b, 0.0)
    assert ious.tolist() == [0.5, 1.0] and gated.tolist() == [True, False]


def test_compare_passes_identical_outputs_and_fails_a_mask_that_changed():
    expected = _decoder_outputs()
    fp32 = parity.Tolerance("fp32", 1e-4, 1e-3)
    report, failures = parity.compare("sam2_prompt_decoder", expected, {k: v.copy() for k, v in expected.items()}, fp32)
    assert failures == [] and report["multi_masks"]["min_mask_iou"] == 1.0
    broken = {k: v.copy() for k, v in expected.items()}
    broken["single_mask"][0, 0, :32, :16] = -5.0  # a quarter of the mask gone: IoU ~0.5
    report, failures = parity.compare("sam2_prompt_decoder", expected, broken, fp32)
    assert report["single_mask"]["min_mask_iou"] < 0.99
    assert any("single_mask: mask IoU" in f for f in failures)


def test_half_precision_uses_iou_for_masks_and_scaled_error_elsewhere():
    expected = _decoder_outputs()
    rng = np.random.default_rng(1)
    # fp16-like noise: masks move a little (IoU stays >= 0.99), scores by 0.1% of their scale
    noisy = {k: v + rng.normal(scale=1e-3, size=v.shape).astype(np.float32) for k, v in expected.items()}
    fp16 = parity.Tolerance("fp16", 1e-4, 1e-3)
    assert parity.compare("sam2_prompt_decoder", expected, noisy, fp16)[1] == []
    # the same outputs fail the fp32 element tolerance
    assert parity.compare("sam2_prompt_decoder", expected, noisy, parity.Tolerance("fp32", 1e-4, 1e-3))[1]
    drifted = dict(noisy, multi_iou=expected["multi_iou"] * 1.2)
    failures = parity.compare("sam2_prompt_decoder", expected, drifted, fp16)[1]
    assert failures and "multi_iou: relative error" in failures[0]


def test_compare_fails_shapes_missing_outputs_integers_and_nan():
    tol = parity.Tolerance("fp16", 1e-4, 1e-3)
    expected = {"a": np.zeros((2, 3), np.float32), "ids": np.arange(4), "b": np.ones(3, np.float32)}
    actual = {"a": np.zeros((3, 2), np.float32), "ids": np.array([0, 1, 2, 4]), "b": np.array([1, np.nan, 1], np.float32)}
    failures = parity.compare("g", expected, actual, tol)[1]
    assert any("shape" in f for f in failures) and any("ids: 1 values differ" in f for f in failures)
    assert any("non-finite" in f for f in failures)
    assert any("missing" in f for f in parity.compare("g", expected, {}, tol)[1])


class _Stub:
    """Stands in for a runner: returns given outputs (for the gate's decision only)."""

    def __init__(self, outputs, description="stub"):
        self.outputs, self.description = outputs, description

    def run(self, feeds):
        return {k: v.copy() for k, v in self.outputs.items()}


def _record(graph="sam2_prompt_decoder"):
    return EngineRecord(name=graph, backend="tensorrt", onnx_sha256="0" * 64, tensorrt_version="10.5.0",
                        gpu_name=H100.name, compute_capability=H100.compute_capability, precision="fp16")


def test_an_engine_that_fails_its_parity_gate_is_not_written(tmp_path):
    manifest = Manifest(tmp_path)
    (tmp_path / "sam2_prompt_decoder.plan").write_bytes(b"an older plan")  # must not survive a failed rebuild
    expected = _decoder_outputs()
    wrong = dict(expected, single_mask=-expected["single_mask"])
    path, report = gate_and_write(manifest, "sam2_prompt_decoder", b"plan bytes", _Stub(wrong), _Stub(expected),
                                  [{"x": np.zeros(1)}], parity.Tolerance("fp16", 1e-4, 1e-3), _record())
    assert path is None and not report["passed"]
    assert any("single_mask: mask IoU" in f for f in report["failures"])
    assert not (tmp_path / "sam2_prompt_decoder.plan").exists()
    assert "sam2_prompt_decoder" not in Manifest(tmp_path).engines


def test_no_case_inside_the_profiles_is_a_failure_not_a_pass(tmp_path):
    expected = _decoder_outputs()
    path, report = gate_and_write(Manifest(tmp_path), "sam2_prompt_decoder", b"plan", _Stub(expected), _Stub(expected),
                                  [{"x": np.zeros(1)}], parity.Tolerance("fp16", 1e-4, 1e-3), _record(),
                                  accepts=lambda feeds: False)
    assert path is None and "optimization profiles" in report["failures"][0]


def test_a_passing_engine_is_written_with_its_measured_parity(tmp_path):
    expected = _decoder_outputs()
    path, report = gate_and_write(Manifest(tmp_path), "sam2_prompt_decoder", b"plan bytes", _Stub(expected),
                                  _Stub(expected), [{"x": np.zeros(1)}] * 2, parity.Tolerance("fp16", 1e-4, 1e-3),
                                  _record())
    assert path == tmp_path / "sam2_prompt_decoder.plan" and path.read_bytes() == b"plan bytes"
    record = Manifest(tmp_path).engines["sam2_prompt_decoder"]
    assert record.sha256 == sha256_file(path) and record.parity["cases"] == 2
    assert record.parity["measured_on"]["gpu"] == H100.name and "regenerated" in record.parity["cases_source"]


# --- provenance and the fleet's refusals (a recorded engine description) ---------------------------

@pytest.fixture()
def recorded(sam2_artifacts, tmp_path):
    """The sam2 artifacts with engine records as a real fp16 build on an H100 with TensorRT 10.5.0
    would write them; the plan files are placeholders whose sha256 matches their record."""
    from segserve.engines.profiles import profiles_for

    artifacts = tmp_path / "artifacts"
    shutil.copytree(sam2_artifacts, artifacts, ignore=shutil.ignore_patterns("checkpoints"))
    manifest = Manifest(artifacts)
    for graph in ("sam2_image_encoder", "sam2_prompt_decoder"):
        plan = artifacts / f"{graph}.plan"
        plan.write_bytes(f"placeholder for a TensorRT engine of {graph}; never loaded".encode())
        profiles = profiles_for(manifest, graph)
        manifest.put_engine(EngineRecord(
            name=graph, backend="tensorrt", onnx_sha256=manifest.records[graph].sha256, file=plan.name,
            sha256=sha256_file(plan), tensorrt_version="10.5.0.18", gpu_name=H100.name,
            compute_capability=H100.compute_capability, precision="fp16",
            profiles=[{k: [list(s) for s in v] for k, v in p.items()} for p in profiles],
            parity={"passed": True, "cases": 4, "failures": [], "precision": "fp16",
                    "measured_on": {"gpu": H100.name, "compute_capability": "9.0", "tensorrt": "10.5.0.18"}},
            build={"workspace_gib": 4.0, "seconds": 61.2, "timing_cache": None}))
    return artifacts


def _build(artifacts, out, **options):
    from segserve.repository.builder import build_repository

    return build_repository(artifacts, out, "fleet", graph_backend="tensorrt", options=options)


def test_the_manifest_records_every_engine_fact(recorded):
    data = json.loads((recorded / "manifest.json").read_text())
    engines = {e["name"]: e for e in data["engines"]}
    entry = engines["sam2_prompt_decoder"]
    for key in ("file", "sha256", "tensorrt_version", "gpu_name", "compute_capability", "precision", "profiles",
                "parity", "onnx_sha256"):
        assert entry[key], key
    assert {"point_coords", "point_labels"} <= set(entry["profiles"][0])
    assert all(verified(r) for r in Manifest(recorded).engines.values())
    # a manifest without engines keeps its old shape, and re-saving keeps the engines
    manifest = Manifest(recorded)
    manifest.save()
    assert json.loads((recorded / "manifest.json").read_text())["engines"] == data["engines"]


def test_build_repo_links_engines_built_for_the_target(recorded, tmp_path):
    from segserve.repository.builder import validate_repository

    out = tmp_path / "repo"
    _build(recorded, out, target_gpu="NVIDIA  H100 80GB HBM3", target_compute_capability="9.0")
    configs = validate_repository(out)
    assert configs["sam2_image_encoder"].platform == "tensorrt_plan"
    # GetModelInfo's source: each engine as recorded, verified only as far as its record says.
    info = json.loads(configs["sam2_image_session"].parameters["model_info"].string_value)
    engine = info["sam2_image_encoder"]["engine"]
    assert engine["backend"] == "tensorrt" and engine["tensorrt"] == "10.5.0.18" and engine["gpu"] == H100.name
    plan = out / "sam2_prompt_decoder" / "1" / "model.plan"
    assert sha256_file(plan) == json.loads((out / "sam2_prompt_decoder" / "engine.json").read_text())["sha256"]
    plan.write_bytes(b"another engine")
    with pytest.raises(Exception, match="does not hash"):
        validate_repository(out)


def test_the_node_label_spelling_of_a_gpu_is_the_same_gpu(recorded, tmp_path):
    """The chart passes nvidia.com/gpu.product ("NVIDIA-H100-80GB-HBM3"); engines record nvidia-smi's name."""
    _build(recorded, tmp_path / "repo", target_gpu="NVIDIA-H100-80GB-HBM3", target_compute_capability="9.0")
    assert (tmp_path / "repo" / "sam2_image_encoder" / "1" / "model.plan").is_file()


def test_build_repo_refuses_an_engine_for_another_gpu_naming_both(recorded, tmp_path):
    from segserve.repository.builder import RepositoryError

    with pytest.raises(RepositoryError) as info:
        _build(recorded, tmp_path / "repo", target_gpu="NVIDIA L4", target_compute_capability="8.9")
    message = str(info.value)
    assert "NVIDIA H100 80GB HBM3 (compute capability 9.0)" in message and "NVIDIA L4 (compute capability 8.9)" in message
    with pytest.raises(RepositoryError, match="compute capability 8.0"):
        _build(recorded, tmp_path / "repo", target_gpu=H100.name, target_compute_capability="8.0")


def test_build_repo_refuses_an_engine_for_another_tensorrt_naming_both(recorded, tmp_path):
    from segserve.repository.builder import RepositoryError

    manifest = Manifest(recorded)
    manifest.engines["sam2_image_encoder"].tensorrt_version = "10.13.3.9"
    manifest.save()
    with pytest.raises(RepositoryError, match=r"built with TensorRT 10\.13\.3\.9, the fleet image runs TensorRT 10\.5\.0"):
        _build(recorded, tmp_path / "repo", target_gpu=H100.name)


def test_without_target_gpu_or_local_gpu_build_repo_asks_for_one(recorded, tmp_path, monkeypatch):
    from segserve.engines import provenance
    from segserve.repository.builder import RepositoryError

    monkeypatch.setattr(provenance, "local_gpu", lambda: None)
    with pytest.raises(RepositoryError, match="--target-gpu"):
        _build(recorded, tmp_path / "repo")
    monkeypatch.setattr(provenance, "local_gpu", lambda: H100)  # this machine's GPU is the target
    _build(recorded, tmp_path / "repo")


def test_missing_stale_or_unmeasured_engines_are_refused(recorded, tmp_path):
    from segserve.repository.builder import RepositoryError

    manifest = Manifest(recorded)
    manifest.engines["sam2_prompt_decoder"].parity.pop("measured_on")  # not from a GPU run
    manifest.save()
    assert not verified(Manifest(recorded).engines["sam2_prompt_decoder"])
    assert engine_summary(Manifest(recorded))["sam2_prompt_decoder"]["parity_verified_on_gpu"] is False
    with pytest.raises(RepositoryError, match="parity was not measured on a GPU"):
        _build(recorded, tmp_path / "repo", target_gpu=H100.name)
    manifest.engines["sam2_prompt_decoder"].onnx_sha256 = "f" * 64
    manifest.save()
    with pytest.raises(RepositoryError, match="another export"):
        _build(recorded, tmp_path / "repo", target_gpu=H100.name)
    manifest.drop_engine("sam2_prompt_decoder")
    with pytest.raises(RepositoryError, match=r"segserve export --families sam2 .* --tensorrt` on the target GPU"):
        _build(recorded, tmp_path / "repo", target_gpu=H100.name)


# --- no GPU / no TensorRT --------------------------------------------------------------------------

def _no_gpu_here():
    try:
        require_tensorrt()
    except TensorRTUnavailable as exc:
        return str(exc)
    return None


def test_export_tensorrt_without_gpu_fails_at_once_naming_what_is_missing(tmp_path):
    reason = _no_gpu_here()
    if reason is None:
        pytest.skip("this machine has a GPU and TensorRT")
    from segserve.cli import main

    with pytest.raises(SystemExit) as info:
        main(["export", "--tensorrt", "--out", str(tmp_path)])
    message = str(info.value.code)
    assert "TensorRT engines cannot be built here" in message and "make gpu-check" in message
    assert "engine build Job" in message
    assert not (tmp_path / "manifest.json").exists()  # nothing exported before the refusal


def test_export_help_lists_the_tensorrt_options():
    out = subprocess.run([sys.executable, "-m", "segserve.cli", "export", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    for option in ("--tensorrt", "--trt-precision", "--trt-workspace-gib", "--trt-timing-cache", "bf16"):
        assert option in out


def test_gpu_benchmark_without_gpu_exits_with_a_clear_message():
    if _no_gpu_here() is None:
        pytest.skip("this machine has a GPU and TensorRT")
    done = subprocess.run([sys.executable, "benchmarks/gpu.py", "--out", os.devnull], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 2
    assert "cannot run here" in done.stderr and "TensorRT" in done.stderr and "GPU" in done.stderr


# --- on a GPU with TensorRT (make gpu-check) -------------------------------------------------------

@pytest.fixture(scope="module")
def gpu_artifacts():
    reason = _no_gpu_here()
    if reason:
        pytest.skip(reason)
    path = os.environ.get("SEGSERVE_GPU_ARTIFACTS")
    if not path or not (Path(path) / "manifest.json").is_file():
        pytest.skip("SEGSERVE_GPU_ARTIFACTS names no export (make gpu-check builds it)")
    return Path(path)


@pytest.mark.gpu
def test_every_built_engine_passed_its_gate_on_this_gpu(gpu_artifacts):
    from segserve.engines.policy import KEEP_ON_ONNXRUNTIME
    from segserve.engines.provenance import fleet_graph_file, local_gpu
    from segserve.runtime.fleet_image import release

    manifest = Manifest(gpu_artifacts)
    assert set(manifest.engines) == set(manifest.records)
    for graph, record in manifest.engines.items():
        if graph in KEEP_ON_ONNXRUNTIME:
            assert record.backend == "onnxruntime" and record.reason
            continue
        assert verified(record), graph
        assert fleet_graph_file(manifest, graph, release().tensorrt, local_gpu()) is not None


@pytest.mark.gpu
def test_an_engine_reruns_its_parity_cases_on_this_gpu(gpu_artifacts):
    import tensorrt as trt

    from segserve.engines.build import TrtRunner

    manifest = Manifest(gpu_artifacts)
    record = manifest.engines["sam2_prompt_decoder"]
    profiles = [{k: tuple(map(tuple, v)) for k, v in p.items()} for p in record.profiles]
    engine = TrtRunner(trt, (gpu_artifacts / record.file).read_bytes(), profiles)
    report = parity.gate("sam2_prompt_decoder", engine, parity.OrtRunner(manifest.artifact_path("sam2_prompt_decoder")),
                         parity.parity_cases(manifest, "sam2_prompt_decoder"),
                         parity.Tolerance(record.precision, 1e-4, 1e-3), engine.accepts)
    assert report["passed"], report["failures"]


def test_recorded_engine_record_round_trips():
    record = _record()
    assert EngineRecord(**json.loads(json.dumps(asdict(record)))) == record
