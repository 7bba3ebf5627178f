"""SAM 2 export: manifest provenance, the weights cache, pinned checkpoint hashes, loud parity failure."""
import json

import onnx
import pytest
import torch

from segserve.export import onnx_export
from segserve.export.manifest import ChecksumMismatch, Manifest, sha256_checkpoint, sha256_file
from segserve.export.sam2 import DECODER, ENCODER, export_sam2


def test_manifest_lists_every_artifact_with_provenance(sam2_artifacts):
    manifest = json.loads((sam2_artifacts / "manifest.json").read_text())
    records = {r["name"]: r for r in manifest["artifacts"]}
    assert set(records) == {ENCODER, DECODER}
    checkpoint_sha = sha256_checkpoint(sam2_artifacts / "checkpoints" / "sam2-random-tiny")
    for record in records.values():
        path = sam2_artifacts / record["file"]
        assert record["sha256"] == sha256_file(path)
        assert record["checkpoint_sha256"] == checkpoint_sha
        assert record["random_weights"] is True and record["model_config"]["random_weights"] is True
        assert record["opset"] == onnx_export.default_opset(onnx.load(str(path), load_external_data=False))
        assert record["parity"]["max_abs_error"] < 1e-4 and record["parity"]["cases"] >= 2
    encoder = records[ENCODER]
    assert encoder["inputs"]["pixel_values"]["shape"] == ["batch", 3, 1024, 1024]
    assert encoder["outputs"]["image_embeddings"]["shape"] == ["batch", 64, 64, 64]
    decoder = records[DECODER]
    assert decoder["inputs"]["point_coords"]["shape"] == ["prompts", "points", 2]
    assert decoder["outputs"]["multi_masks"]["shape"] == ["prompts", 3, 256, 256]


def test_second_export_reuses_cached_graphs(sam2_artifacts, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in sam2_artifacts.glob("*.onnx")}
    export_sam2(None, sam2_artifacts)
    assert {p.name: p.stat().st_mtime_ns for p in sam2_artifacts.glob("*.onnx")} == before
    assert "up to date" in capsys.readouterr().err


def test_pinned_checkpoint_hash_is_enforced(sam2_artifacts, tmp_path):
    checkpoint = sam2_artifacts / "checkpoints" / "sam2-random-tiny"
    with pytest.raises(ChecksumMismatch, match="expected"):
        export_sam2(checkpoint, tmp_path, expect_sha256="0" * 64)
    assert not list(tmp_path.glob("*.onnx"))


def test_changed_checkpoint_invalidates_the_cache(sam2_artifacts):
    manifest = Manifest(sam2_artifacts)
    record = manifest.records[ENCODER]
    assert manifest.reusable(ENCODER, record.checkpoint_sha256, record.settings) is not None
    assert manifest.reusable(ENCODER, "f" * 64, record.settings) is None
    assert manifest.reusable(ENCODER, record.checkpoint_sha256, {**record.settings, "opset": 99}) is None


def test_export_fails_loudly_above_tolerance(tmp_path):
    class TraceDiverges(torch.nn.Module):
        """Exports a graph that computes something else than eager PyTorch (a mis-traced op)."""

        def __init__(self, drift):
            super().__init__()
            self.drift = drift

        def forward(self, x):
            return x * 2 + (self.drift if torch.jit.is_tracing() else 0.0)

    def spec(drift):
        return onnx_export.GraphSpec(name="toy", module=TraceDiverges(drift), example_inputs={"x": torch.ones(2, 3)},
                                     output_names=["y"])

    onnx_export.export_artifact(spec(1e-6), Manifest(tmp_path / "a"), "toy", "0" * 64, True, {})
    assert (tmp_path / "a" / "toy.onnx").exists()
    with pytest.raises(onnx_export.ParityError, match="differs from PyTorch"):
        onnx_export.export_artifact(spec(1e-2), Manifest(tmp_path / "b"), "toy", "1" * 64, True, {})
    assert not (tmp_path / "b" / "toy.onnx").exists()
    assert "toy" not in Manifest(tmp_path / "b").records
