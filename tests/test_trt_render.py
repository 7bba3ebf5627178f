"""Fleet configs for both TensorRT modes, every family, parsed back strictly.

`onnxruntime-trt`: graphs stay on the onnxruntime backend with its TensorRT accelerator, whose
parameters are exactly keys the onnxruntime backend documents (r24.10) and whose profile strings
parse back to `profiles_for`'s shapes; `tensorrt`: plans. In both, the deformable-attention graphs
(`KEEP_ON_ONNXRUNTIME`) get no TensorRT at all. Plan linking and its refusals belong to the engine
builder's tests; here `tensorrt` is rendered with `render_config` directly.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from segserve.engines.policy import KEEP_ON_ONNXRUNTIME
from segserve.engines.profiles import Limits, covers, envelope, parse_shapes_string, profiles_for
from segserve.export.manifest import Manifest
from segserve.repository.builder import (ORT_TRT_PARAMETERS, RepositoryError, TrtRender, build_repository,
                                         model_specs, render_config, validate_repository)


@pytest.fixture(scope="module")
def all_families(all_family_artifacts) -> Path:
    return all_family_artifacts


@pytest.fixture(scope="module")
def ort_trt(all_families, tmp_path_factory):
    root = tmp_path_factory.mktemp("ort-trt")
    build_repository(all_families, root, "fleet", "onnxruntime-trt", options={"trt_cache_path": "/cache/trt/"})
    return root, validate_repository(root)


def _graphs(configs: dict[str, mc.ModelConfig]) -> dict[str, mc.ModelConfig]:
    return {n: c for n, c in configs.items() if c.platform in ("onnxruntime_onnx", "tensorrt_plan")}


def test_onnxruntime_trt_renders_every_graph_with_documented_keys(ort_trt, all_families):
    root, configs = ort_trt
    manifest = Manifest(all_families)
    graphs = _graphs(configs)
    assert set(graphs) == set(manifest.records) and len(graphs) == 9
    for name, config in graphs.items():
        # strictly parsed back, as Triton reads it
        assert text_format.Parse((root / name / "config.pbtxt").read_text(), mc.ModelConfig()) == config
        assert config.platform == "onnxruntime_onnx" and (root / name / "1" / "model.onnx").is_file()
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        accelerators = config.optimization.execution_accelerators
        assert not accelerators.cpu_execution_accelerator
        if name in KEEP_ON_ONNXRUNTIME:
            assert not accelerators.gpu_execution_accelerator, name  # CUDA provider only
            continue
        [trt] = accelerators.gpu_execution_accelerator
        params = dict(trt.parameters)
        assert trt.name == "tensorrt" and set(params) <= ORT_TRT_PARAMETERS, name
        assert params["precision_mode"] == "FP16" and params["trt_layer_norm_fp32_fallback"] == "1"
        assert params["trt_engine_cache_enable"] == params["trt_timing_cache_enable"] == "1"
        assert params["trt_engine_cache_path"] == params["trt_timing_cache_path"] == f"/cache/trt/{name}"
        assert int(params["max_workspace_size_bytes"]) > 0
        # one profile (the accelerator runs on profile 0): the envelope of the graph's profiles
        profiles = profiles_for(manifest, name)
        merged = envelope(profiles)
        parsed = [parse_shapes_string(params[f"trt_profile_{k}_shapes"]) for k in ("min", "opt", "max")]
        assert all(len(p) == 1 for p in parsed), name
        assert {n: (parsed[0][0][n], parsed[1][0][n], parsed[2][0][n]) for n in merged} == merged
        assert set(parsed[0][0]) == set(manifest.records[name].inputs)
        for profile in profiles:  # every shape any profile covers, the rendered one covers
            assert covers(merged, {n: v[0] for n, v in profile.items()})
            assert covers(merged, {n: v[2] for n, v in profile.items()})


def test_onnxruntime_trt_options(all_families, tmp_path):
    manifest = Manifest(all_families)
    [spec] = [s for s in model_specs(manifest) if s.name == "sam2_video_memory_encoder"]
    trt = TrtRender.from_options({"trt_precision": "fp32", "trt_workspace_bytes": 1 << 30, "max_video_objects": 4})
    config = render_config(spec, "fleet", "onnxruntime-trt", manifest, trt)
    params = config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters
    assert params["precision_mode"] == "FP32" and "trt_layer_norm_fp32_fallback" not in params
    assert params["max_workspace_size_bytes"] == str(1 << 30)
    assert parse_shapes_string(params["trt_profile_max_shapes"])[0]["vision_feat"][0] == 4  # the tracker's cap
    with pytest.raises(RepositoryError, match="precision"):
        render_config(spec, "fleet", "onnxruntime-trt", manifest, TrtRender(precision="INT8"))
    with pytest.raises(RepositoryError, match="manifest"):
        render_config(spec, "fleet", "onnxruntime-trt")
    with pytest.raises(RepositoryError, match="graph backend"):
        build_repository(all_families, tmp_path, "fleet", "tensorrt-llm")
    # the embedded target ignores the graph backend: Python models everywhere
    assert render_config(spec, "embedded", "onnxruntime-trt", manifest).backend == "python"


def test_tensorrt_renders_plans_except_the_deformable_graphs(all_families):
    manifest = Manifest(all_families)
    graphs = [s for s in model_specs(manifest) if s.graph]
    assert len(graphs) == 9
    for spec in graphs:
        config = text_format.Parse(text_format.MessageToString(render_config(spec, "fleet", "tensorrt", manifest)),
                                   mc.ModelConfig())
        expected = "onnxruntime_onnx" if spec.graph in KEEP_ON_ONNXRUNTIME else "tensorrt_plan"
        assert config.platform == expected, spec.name
        assert not config.optimization.execution_accelerators.gpu_execution_accelerator
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]


def test_tensorrt_configs_validate_with_placeholder_plans(all_families, tmp_path):
    """Rendering only: the tensorrt configs replace the onnxruntime ones of a built fleet repository,
    with placeholder files standing in for engines (the engine builder links real plans and tests its
    refusals); the deformable graphs keep their ONNX file."""
    root = tmp_path / "repository"
    build_repository(all_families, root, "fleet")
    manifest = Manifest(all_families)
    for spec in model_specs(manifest):
        config = render_config(spec, "fleet", "tensorrt", manifest)
        (root / spec.name / "config.pbtxt").write_text(text_format.MessageToString(config))
        if config.platform == "tensorrt_plan":
            (root / spec.name / "1" / "model.onnx").unlink()
            (root / spec.name / "1" / "model.plan").write_bytes(b"placeholder, not an engine")
    # validate_repository's plan checks (engine.json provenance) are the engine builder's; parse strictly here
    configs = _graphs({p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig())
                       for p in root.glob("*/config.pbtxt")})
    assert len(configs) == 9
    for name, config in configs.items():
        if name in KEEP_ON_ONNXRUNTIME:
            assert config.platform == "onnxruntime_onnx" and (root / name / "1" / "model.onnx").is_file()
        else:
            assert config.platform == "tensorrt_plan" and (root / name / "1" / "model.plan").is_file()


def test_validation_refuses_undocumented_accelerator_keys(ort_trt, tmp_path):
    root, _ = ort_trt
    copy = tmp_path / "repository"
    shutil.copytree(root, copy)
    path = copy / "sam2_image_encoder" / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["trt_fp16_enable"] = "1"
    path.write_text(text_format.MessageToString(config))
    with pytest.raises(RepositoryError, match="trt_fp16_enable"):
        validate_repository(copy)


def test_profiles_follow_the_limits(all_families):
    manifest = Manifest(all_families)
    narrow = profiles_for(manifest, "sam2_prompt_decoder", Limits(image_points=4, image_boxes=2, image_batch=1))[0]
    assert narrow["point_coords"][2][:2] == (2, 7)
    # The session decodes the clicks of a whole execute() (its max_batch_size requests) in one call.
    batched = profiles_for(manifest, "sam2_prompt_decoder", Limits(image_points=4, image_boxes=2, image_batch=8))[0]
    assert batched["point_coords"][2][:2] == (16, 7)
