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
    assert decoder["inputs"]["image_embeddings"]["shape"] == ["images", 64, 64, 64]  # 1 or one per prompt
    assert decoder["outputs"]["multi_masks"]["shape"] == ["prompts", 3, 256, 256]
    assert decoder["settings"]["graph"] == "batch-v1"


def test_decoder_graph_decodes_a_batch_of_images_as_one_prompt_at_a_time(sam2_artifacts):
    """The exported decoder (ONNX Runtime) given one image per prompt, prompts of different point
    counts padded with absent points and different mask inputs, gives every prompt what it gives
    alone on its own image."""
    import numpy as np

    from segserve.common.sam2_transforms import ABSENT_LABEL
    from segserve.export.onnx_export import ort_session

    session = ort_session(sam2_artifacts / "sam2_prompt_decoder.onnx")
    rng = np.random.default_rng(0)
    images = {"image_embeddings": rng.normal(size=(3, 64, 64, 64)), "high_res_feats_0": rng.normal(size=(3, 8, 256, 256)),
              "high_res_feats_1": rng.normal(size=(3, 16, 128, 128))}
    images = {k: v.astype(np.float32) for k, v in images.items()}
    prompts = [  # (coords, labels) per image: a click + pad, a box + pad, two clicks + box + pad
        (np.array([[300.0, 200.0], [0.0, 0.0]]), np.array([1, -1])),
        (np.array([[100.0, 150.0], [600.0, 800.0], [0.0, 0.0]]), np.array([2, 3, -1])),
        (np.array([[320.0, 410.0], [700.0, 90.0], [100.0, 150.0], [600.0, 800.0], [0.0, 0.0]]), np.array([1, 0, 2, 3, -1])),
    ]
    masks = (rng.normal(size=(3, 1, 256, 256)) * 4).astype(np.float32)
    has_mask = np.array([0.0, 1.0, 1.0], np.float32)
    names = [o.name for o in session.get_outputs()]
    solo = []
    for i, (coords, labels) in enumerate(prompts):
        feeds = {k: v[i:i + 1] for k, v in images.items()}
        feeds.update(point_coords=coords[None].astype(np.float32), point_labels=labels[None].astype(np.int32),
                     mask_input=masks[i:i + 1], has_mask_input=has_mask[i:i + 1])
        solo.append(session.run(names, feeds))
    width = max(len(labels) for _, labels in prompts)
    coords = np.zeros((3, width, 2), np.float32)
    labels = np.full((3, width), ABSENT_LABEL, np.int32)
    for i, (c, lab) in enumerate(prompts):
        coords[i, :len(lab)], labels[i, :len(lab)] = c, lab
    batched = session.run(names, {**images, "point_coords": coords, "point_labels": labels, "mask_input": masks,
                                  "has_mask_input": has_mask})
    for i in range(3):
        assert np.abs(solo[i][0]).mean() > 0.1  # logits of order 1: a real comparison
        for got, want in zip(batched, solo[i]):
            np.testing.assert_allclose(got[i:i + 1], want, atol=1e-4, rtol=0)
    # and the padding matters: the same prompts padded with pad points (-1) instead differ
    padded = session.run(names, {**images, "point_coords": coords, "point_labels": np.where(labels == ABSENT_LABEL, -1, labels),
                                 "mask_input": masks, "has_mask_input": has_mask})
    assert np.abs(padded[0][0] - solo[0][0][0]).max() > 1e-3


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
