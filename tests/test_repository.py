"""The repository builder: both targets from one description, strict static validation."""
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from segserve.repository.builder import RepositoryError, build_repository, validate_repository


def _config(root, name):
    return text_format.Parse((root / name / "config.pbtxt").read_text(), mc.ModelConfig())


def test_embedded_target_is_python_backend_everywhere(embedded_repository):
    configs = validate_repository(embedded_repository)
    assert set(configs) == {"sam2_image_encoder", "sam2_prompt_decoder", "sam2_image_session"}
    assert all(c.backend == "python" for c in configs.values())
    session = configs["sam2_image_session"]
    assert session.parameters["runner"].string_value == "inprocess"
    # The model evicts at its TTL; Triton's idle limit is a margin above it, so that a request for an
    # evicted session reaches the model and is answered NOT_FOUND.
    assert session.parameters["session_ttl_s"].string_value == "600"
    assert session.sequence_batching.max_sequence_idle_microseconds == 660_000_000
    assert session.sequence_batching.HasField("oldest")
    encoder = configs["sam2_image_encoder"]
    assert encoder.max_batch_size > 1 and encoder.HasField("dynamic_batching")


def test_fleet_target_serves_graphs_with_onnxruntime_and_checks_the_image_runtime(sam2_artifacts, tmp_path):
    import json

    from segserve.triton_models.runtime_check import runtime_digest

    build_repository(sam2_artifacts, tmp_path, "fleet")
    configs = validate_repository(tmp_path)
    assert configs["sam2_image_encoder"].platform == "onnxruntime_onnx"
    assert configs["sam2_image_encoder"].instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert configs["sam2_prompt_decoder"].platform == "onnxruntime_onnx"
    session = configs["sam2_image_session"]
    assert session.backend == "python" and session.parameters["runner"].string_value == "bls"
    # The code comes from the segserve Triton image, not the repository; model.py checks it at load.
    version_dir = tmp_path / "sam2_image_session" / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == ["model.py"]
    model_py = (version_dir / "model.py").read_text()
    assert f'check_runtime("sam2_image_session", "{runtime_digest()}")' in model_py
    assert "from segserve.triton_models.sam2_image_session import TritonPythonModel" in model_py
    assert json.loads((tmp_path / "repository.json").read_text())["segserve_runtime"] == runtime_digest()
    assert [d.dims for d in configs["sam2_image_encoder"].input] == [[3, 1024, 1024]]


def test_tensorrt_target_needs_engines(sam2_artifacts, tmp_path):
    with pytest.raises(RepositoryError, match="TensorRT"):
        build_repository(sam2_artifacts, tmp_path, "fleet", graph_backend="tensorrt")


def test_validation_catches_a_config_that_does_not_match_its_graph(sam2_artifacts, tmp_path):
    build_repository(sam2_artifacts, tmp_path, "fleet")
    path = tmp_path / "sam2_prompt_decoder" / "config.pbtxt"
    path.write_text(path.read_text().replace('"point_labels"', '"point_label"'))
    with pytest.raises(RepositoryError, match="point_label"):
        validate_repository(tmp_path)
    path.write_text("name: 'sam2_prompt_decoder' no_such_field: 1")
    with pytest.raises(text_format.ParseError):
        validate_repository(tmp_path)


def test_empty_artifacts_are_refused(tmp_path):
    with pytest.raises(RepositoryError, match="segserve export"):
        build_repository(tmp_path, tmp_path / "repo")
