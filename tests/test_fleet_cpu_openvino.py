"""The CPU fleet target (`build-repo --target fleet --graph-backend openvino`), proven on CPU.

The SAM 2 image models rendered for Triton's openvino backend (NGC 24.10's r24.10 release: KIND_CPU,
`model.onnx` through default_model_filename, its documented parameters only) are served by the
embedded tritonserver of the image's release, the Python models on the image's Python and packages
(`fleet_image.fleet_python`), each openvino graph replaced by a Python stand-in running the same
ONNX file with OpenVINO at the precision the config asks for (bf16). Masks are compared end to end
with Sam2Model (PyTorch, fp32) as bf16 agreement. What stays unproven here: Triton's own openvino
backend and its OpenVINO release (2024.x in 24.10; the stand-ins run segserve's pin), and the NGC
image itself. Reuses tests/test_fleet_cpu.py's environment (same module-level skip).
"""
from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

from segserve.runtime import fleet_image  # noqa: E402
from tests import sam2_reference  # noqa: E402
from tests.conftest import TEST_ID_KEY  # noqa: E402
from tests.test_fleet_cpu import _configs  # noqa: E402  (skips this module where the fleet Python is missing)
from tests.test_sam2_e2e import PROMPTS  # noqa: E402
from tests.test_sam2_e2e import reference as sam2_prompt_reference  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = mc.ModelInstanceGroup.KIND_CPU
IOU_MEDIAN_MIN = 0.98  # bf16 vs the fp32 reference (random weights are harsher than real ones)


@pytest.fixture(scope="module")
def ov_workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("fleet-openvino")


@pytest.fixture(scope="module")
def ov_repository(sam2_artifacts, ov_workspace, fleet_env_dir):
    """-> (repository with CPU stand-ins, the configs as `build-repo` rendered them)."""
    from segserve.repository.builder import build_repository
    from segserve.repository.standins import replace_graphs_with_cpu_standins

    repository = ov_workspace / "repository"
    build_repository(sam2_artifacts, repository, "fleet", "openvino", session_ttl_s=120, max_sessions=8,
                     options={"cpu_cores": 4})
    rendered = _configs(repository)
    replaced = replace_graphs_with_cpu_standins(repository, fleet_image.standin_libraries(fleet_env_dir))
    assert replaced == ["sam2_image_encoder", "sam2_prompt_decoder"]
    return repository, rendered


@pytest.fixture(scope="module")
def ov_stack(ov_repository, ov_workspace, fleet_env_dir):
    from segserve.orchestrator.settings import Settings
    from segserve.runtime.stack import start_stack

    settings = Settings(max_image_sessions=8, embedding_cache_size=4, max_image_pixels=40_000_000, id_key=TEST_ID_KEY)
    runtime = fleet_image.fleet_python(fleet_env_dir)
    with start_stack(ov_repository[0], ov_workspace / "triton", settings, python=runtime) as running:
        yield running


def test_rendered_for_the_openvino_backend(ov_repository):
    """The encoder on the openvino backend with its documented keys only; every instance KIND_CPU;
    the prompt decoder, whose bounded output dims (`..1`) the 24.10 backend's exact shape check
    cannot match, on Triton's onnxruntime backend on the CPU, saying why."""
    from segserve.repository.builder import OPENVINO_PARAMETERS

    _, rendered = ov_repository
    encoder = rendered["sam2_image_encoder"]
    assert encoder.backend == "openvino" and not encoder.platform
    assert encoder.default_model_filename == "model.onnx"
    assert set(encoder.parameters) <= OPENVINO_PARAMETERS
    assert {k: v.string_value for k, v in encoder.parameters.items()} == {
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2", "HINT_BF16": "YES"}
    # r24.10 compiles a batched model at exactly max_batch_size: one request per execution.
    assert encoder.max_batch_size == 1 and not encoder.HasField("dynamic_batching")
    decoder = rendered["sam2_prompt_decoder"]
    assert decoder.platform == "onnxruntime_onnx" and "single_iou" in decoder.parameters["openvino_refused"].string_value
    for name, config in rendered.items():
        assert [g.kind for g in config.instance_group] == [CPU], name


def test_validate_refuses_what_the_backend_refuses(ov_repository, tmp_path):
    import shutil

    from google.protobuf import text_format

    from segserve.repository.builder import RepositoryError, validate_repository

    repository = tmp_path / "repository"
    shutil.copytree(ov_repository[0], repository)
    path = repository / "sam2_image_encoder" / "config.pbtxt"
    def hint(c):
        c.parameters["INFERENCE_PRECISION_HINT"].string_value = "bf16"  # a later release's key

    def batched(c):
        c.max_batch_size = 4

    def gpu(c):
        c.instance_group[0].kind = mc.ModelInstanceGroup.KIND_GPU

    def no_filename(c):
        c.ClearField("default_model_filename")

    for edit, words in [(hint, "not the openvino backend's"), (batched, "exactly max_batch_size"),
                        (gpu, "KIND_CPU instances only"), (no_filename, "model.xml")]:
        config = mc.ModelConfig()
        config.CopyFrom(ov_repository[1]["sam2_image_encoder"])
        edit(config)
        path.write_text(text_format.MessageToString(config))
        with pytest.raises(RepositoryError, match=words):
            validate_repository(repository)


def test_standins_run_openvino_bf16(ov_repository):
    _, rendered = ov_repository
    served = _configs(ov_repository[0])
    encoder = served["sam2_image_encoder"]
    assert encoder.backend == "python" and not encoder.default_model_filename
    assert encoder.parameters["graph_runtime"].string_value == (
        '{"sam2_image_encoder": {"runtime": "openvino", "precision": "bf16"}}')
    assert encoder.parameters["graph_threads"].string_value == "2"
    for field in ("input", "output", "max_batch_size", "instance_group"):
        assert getattr(encoder, field) == getattr(rendered["sam2_image_encoder"], field), field


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_image_prompt_agrees_with_sam2model(ov_stack, sam2_torch_model, photo, name):
    from segserve.client import SegservClient

    expected = sam2_prompt_reference(sam2_torch_model, photo, PROMPTS[name], True)
    masks = expected[2]
    assert masks.any(axis=(-1, -2)).all()
    with SegservClient(ov_stack.address) as client:
        result = client.mask_from_prompt(image=photo, multimask=True, **PROMPTS[name])
    assert len(result.objects) == masks.shape[0]
    ious = [sam2_reference.iou(mask.mask, masks[p, k]) for p, obj in enumerate(result.objects)
            for k, mask in enumerate(obj.masks)]
    assert len(ious) == masks.shape[0] * masks.shape[1]
    assert np.median(ious) >= IOU_MEDIAN_MIN, ious
