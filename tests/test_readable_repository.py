"""The committed model_repository/{embedded,fleet} must be what build-repo's code renders today from
the recorded default-checkpoint signatures (as test_api_stubs does for the gRPC stubs); regenerate
with `make repository`."""
from __future__ import annotations

import json
import re

from tritonclient.grpc import model_config_pb2 as mc

from segserve.repository import readable
from segserve.repository.builder import validate_repository
from segserve.export.manifest import Manifest


def test_committed_repository_matches_a_fresh_rendering():
    lines = readable.differences()
    assert not lines, "model_repository/ is stale; run `make repository` and commit it:\n" + "\n".join(lines)


def test_rendering_is_deterministic_and_holds_no_graph_or_local_path(tmp_path):
    first = readable.render(tmp_path / "a")
    second = readable.render(tmp_path / "b")
    assert first == second and len(first) > 40
    for rel in first:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
        assert rel.name in ("config.pbtxt", "model.py", "repository.json", ".gitkeep"), rel  # no graph, engine, tokenizer
        text = (tmp_path / "a" / rel).read_text()
        for local in (str(tmp_path), str(readable.ROOT), "/tmp/", "/home/"):
            assert local not in text, (rel, local)
        # hashes only as the recorded zeros or the runtime placeholder, never a real build's
        assert not [h for h in re.findall(r"[0-9a-f]{64}", text) if set(h) != {"0"}], rel


def test_readable_repository_shows_batching_sequences_and_instances():
    """What a Triton user reads there: parsed back strictly, the settings each target serves with."""
    configs = {t: validate_repository(readable.REPOSITORY / t, graph_files=False) for t in readable.TARGETS}
    assert set(configs["embedded"]) == set(configs["fleet"])
    assert {"sam2_image_session", "sam2_video_tracker", "mask2former_segment", "text_to_mask"} <= set(configs["fleet"])
    for target, by_name in configs.items():
        session = by_name["sam2_image_session"]
        assert session.sequence_batching.HasField("oldest") and session.sequence_batching.max_sequence_idle_microseconds
        assert by_name["sam2_image_encoder"].max_batch_size == 4
        assert by_name["sam2_image_encoder"].HasField("dynamic_batching")
        assert [i.name for i in by_name["sam2_image_encoder"].input] == ["pixel_values"]
        assert list(by_name["sam2_image_encoder"].input[0].dims) == [3, 1024, 1024]  # hiera-tiny at 1024²
        encoder_kind = by_name["sam2_image_encoder"].instance_group[0].kind
        if target == "fleet":
            assert by_name["sam2_image_encoder"].platform == "onnxruntime_onnx"
            assert encoder_kind == mc.ModelInstanceGroup.KIND_GPU
            assert session.parameters["runner"].string_value == "bls"
        else:
            assert by_name["sam2_image_encoder"].backend == "python"
            assert encoder_kind == mc.ModelInstanceGroup.KIND_CPU
            runtimes = json.loads(by_name["sam2_image_encoder"].parameters["graph_runtime"].string_value)
            assert runtimes == {"sam2_image_encoder": {"runtime": "onnxruntime", "precision": "fp32"}}


def test_recorded_signatures_are_what_the_exporters_write(all_family_artifacts):
    """The recorded real-size signatures cannot drift from the exporters: the same graphs, tensors,
    dtypes, ranks, named dynamic axes and model config keys as a tiny export of every family (only
    the sizes of fixed axes differ; `checkpoint` and `parameters` are left out of the recording: a
    local path and a parameter count)."""
    recorded, exported = Manifest(readable.RECORDED), Manifest(all_family_artifacts)
    assert set(recorded.records) == set(exported.records)

    def shape(signature):
        return {name: (info["dtype"], len(info["shape"]), [d for d in info["shape"] if isinstance(d, str)])
                for name, info in signature.items()}

    for name, record in recorded.records.items():
        other = exported.records[name]
        assert shape(record.inputs) == shape(other.inputs), name
        assert shape(record.outputs) == shape(other.outputs), name
        assert set(record.model_config) == set(other.model_config) - {"checkpoint", "parameters"}, name
        assert record.opset == other.opset, name

