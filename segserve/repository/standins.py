"""CPU stand-ins for a fleet repository's graph models, so the fleet repository can be served by the
embedded (CPU-only) tritonserver: the proof on CPU that a fleet pod loads and answers.

Each graph model (`onnxruntime_onnx` or `tensorrt_plan` on the GPU) becomes a Python model of the
same name, inputs, outputs, max_batch_size, dynamic batching and instance count that runs the same
ONNX file with ONNX Runtime (`segserve.triton_models.onnx_model`). Only the instance kind changes
(KIND_GPU -> KIND_CPU: there is no GPU). ONNX Runtime is not in the fleet image's Python: each
stand-in puts `libraries` (ONNX Runtime of the release's onnxruntime backend, from
`fleet_image.standin_libraries`) on its own path, so no other model can import it. Everything else
in the repository, the Python models, ensembles and sequence batching, stays as rendered.

A graph on Triton's openvino backend (`--graph-backend openvino`, CPU nodes; already KIND_CPU)
becomes a Python model running the same ONNX file with OpenVINO (`graph_runner.open_graph`,
runtime openvino, parameters `graph_runtime` / `graph_threads` of `onnx_model`): bf16 where the
config says `HINT_BF16: YES`, else the CPU plugin's own default, which the backend gets too (bf16
on a CPU with AMX or AVX512-BF16, fp32 elsewhere), with its INFERENCE_NUM_THREADS.
`default_model_filename` goes: the Python backend would take model.onnx for its model.py.
"""
from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from segserve.triton_models.graph_runner import cpu_has_native_bf16

_STANDIN_PY = '''# CPU stand-in of a fleet graph model (segserve.repository.standins): not part of a fleet repository.
import sys

sys.path.insert(0, {libraries!r})  # ONNX Runtime and OpenVINO, for this model only

from segserve.triton_models.onnx_model import TritonPythonModel  # noqa: E402,F401
'''


def replace_graphs_with_cpu_standins(repository: Path, libraries: Path) -> list[str]:
    """Rewrite every graph model of a built fleet repository in place; returns their names."""
    repository = Path(repository)
    replaced = []
    for config_path in sorted(repository.glob("*/config.pbtxt")):
        config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
        openvino = config.backend == "openvino"
        if config.platform not in ("onnxruntime_onnx", "tensorrt_plan") and not openvino:
            continue
        version_dir = config_path.parent / "1"
        if not (version_dir / "model.onnx").is_file():
            raise FileNotFoundError(f"{config.name}: a CPU stand-in runs the graph's ONNX file, and "
                                    f"{version_dir / 'model.onnx'} is missing")
        config.platform = ""
        config.backend = "python"
        for group in config.instance_group:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
            del group.gpus[:]
        config.parameters["onnx_file"].string_value = "model.onnx"
        if openvino:
            config.ClearField("default_model_filename")
            params = {k: v.string_value for k, v in config.parameters.items()}
            bf16 = params.get("HINT_BF16", "").upper() == "YES" or cpu_has_native_bf16()
            config.parameters["graph_runtime"].string_value = json.dumps(
                {config.name: {"runtime": "openvino", "precision": "bf16" if bf16 else "fp32"}})
            config.parameters["graph_threads"].string_value = params.get("INFERENCE_NUM_THREADS", "0")
        config_path.write_text(text_format.MessageToString(config))
        (version_dir / "model.py").write_text(_STANDIN_PY.format(libraries=str(libraries)))
        replaced.append(config.name)
    index = repository / "repository.json"
    if index.is_file():
        info = json.loads(index.read_text())
        info["cpu_standins"] = replaced
        index.write_text(json.dumps(info, indent=2))
    return replaced
