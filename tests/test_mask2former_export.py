"""Mask2Former export: tiny random model -> ONNX, parity, manifest, cache reuse, checkpoint pinning."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from segserve.common import mask2former_post as post
from segserve.export import mask2former as m2f
from segserve.export.manifest import ChecksumMismatch, Manifest, sha256_checkpoint, sha256_file
from segserve.export.onnx_export import ort_session

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 384  # the tiny model's default export size


def _scene(seed: int, height: int, width: int) -> np.ndarray:
    """A synthetic photo: coloured rectangles and discs on a gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)),
                      np.full_like(xx, int(rng.integers(0, 256)))], -1).astype(np.float64)
    for _ in range(5):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(height // 10, height // 3 + 1), rng.integers(width // 10, width // 3 + 1)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1 if rng.random() < 0.5 else \
            (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        image[inside] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


@pytest.fixture(scope="module")
def exported(family_artifacts):
    """The session's Mask2Former export (the same `export_mask2former(None, out)` call), in a linked
    copy of its own: the cache tests below export into it again."""
    out = family_artifacts("mask2former")
    return out, Manifest(out).records["mask2former"]


@pytest.fixture(scope="module")
def checkpoint(exported):
    return exported[0] / "checkpoints" / "mask2former-random-tiny"


def test_manifest_record(exported, checkpoint):
    out, record = exported
    assert record.name == "mask2former" and (out / record.file).is_file()
    assert Manifest(out).records["mask2former"] == record
    on_disk = {r["name"]: r for r in json.loads((out / "manifest.json").read_text())["artifacts"]}["mask2former"]
    assert on_disk["sha256"] == record.sha256 == sha256_file(out / record.file)
    assert on_disk["checkpoint_sha256"] == record.checkpoint_sha256 == sha256_checkpoint(checkpoint)
    assert on_disk["opset"] == record.opset == 17
    assert (checkpoint / "RANDOM_WEIGHTS").is_file() and record.random_weights is True
    queries, labels = 16, len(m2f.TINY_LABELS)
    assert record.inputs == {"pixel_values": {"dtype": "float32", "shape": ["batch", 3, SIZE, SIZE]}}
    assert record.outputs == {
        "class_queries_logits": {"dtype": "float32", "shape": ["batch", queries, labels + 1]},
        "masks_queries_logits": {"dtype": "float32", "shape": ["batch", queries, SIZE // 4, SIZE // 4]},
    }
    # The exporter's own parity measurement is recorded (provenance); the graph itself is measured by
    # test_onnx_matches_pytorch_on_preprocessed_images, not by reading these numbers back.
    assert {"cases", "max_abs_error"} <= set(on_disk["parity"])
    config = record.model_config
    assert config["image_size"] == SIZE and config["num_queries"] == queries
    assert config["id2label"] == {str(i): name for i, name in enumerate(m2f.TINY_LABELS)}
    pre = config["preprocess"]
    assert pre["resize"]["height"] == pre["resize"]["width"] == SIZE and pre["resize"]["rule"] == "exact"
    assert pre["image_mean"] == pytest.approx(post.IMAGENET_MEAN) and pre["rescale_factor"] == pytest.approx(1 / 255)
    assert config["postprocess"]["mask_size"] == post.HF_MASK_SIZE


def test_graph_is_float32_with_standard_ops(exported):
    out, record = exported
    facts = m2f.check_graph(out / record.file)
    assert facts["float64_tensors"] == [] and facts["custom_domains"] == []
    assert facts["grid_sample_nodes"] == 3  # one per feature level in the single encoder layer


def test_export_patch_changes_nothing(checkpoint):
    model = m2f.load_mask2former(checkpoint)
    assert m2f.check_patches(model, 128) == 0.0
    encoder = model.model.pixel_level_module.decoder.encoder
    assert "get_reference_points" not in vars(encoder)  # restored after use


def test_onnx_matches_pytorch_on_preprocessed_images(exported, checkpoint):
    out, record = exported
    model = m2f.load_mask2former(checkpoint)
    config = post.PreprocessConfig.from_model_config(record.model_config)
    pixel_values, _ = post.preprocess([_scene(i, h, w) for i, (h, w) in enumerate([(240, 320), (300, 200), (96, 96)])],
                                      config)
    with torch.no_grad():
        expected = model(pixel_values=torch.from_numpy(pixel_values))
    classes, masks = ort_session(out / record.file).run(None, {"pixel_values": pixel_values})
    assert classes.shape == (3, 16, len(m2f.TINY_LABELS) + 1)
    assert np.abs(classes - expected.class_queries_logits.numpy()).max() < 1e-4
    assert np.abs(masks - expected.masks_queries_logits.numpy()).max() < 1e-4
    # the random model is not degenerate: confident classes, masks that vary over the image
    assert np.abs(masks).max() > 5 and masks.reshape(3, 16, -1).std(-1).mean() > 1


def test_second_export_is_reused(exported, capsys):
    out, record = exported
    mtime = (out / record.file).stat().st_mtime_ns
    again = m2f.export_mask2former(None, out)
    assert again == record and (out / record.file).stat().st_mtime_ns == mtime
    assert "cached" in capsys.readouterr().err
    # the CLI takes the same path
    m2f.main(["--out", str(out)])
    assert json.loads(capsys.readouterr().out)["sha256"] == record.sha256


def test_pinned_checkpoint_hash(exported, checkpoint, tmp_path):
    out, record = exported
    with pytest.raises(ChecksumMismatch):
        m2f.export_mask2former(None, out, expect_sha256="0" * 64)
    with pytest.raises(ChecksumMismatch):
        m2f.export_mask2former(checkpoint, tmp_path / "other", expect_sha256="f" * 64)
    assert not (tmp_path / "other" / "manifest.json").exists()
    assert m2f.export_mask2former(None, out, expect_sha256=record.checkpoint_sha256) == record


def test_checkpoint_directory_with_processor_config(checkpoint, tmp_path):
    """A given checkpoint goes through the same loader; its preprocessor_config.json sets the
    normalisation recorded for the serving side."""
    local = tmp_path / "ckpt"
    shutil.copytree(checkpoint, local)
    (local / "RANDOM_WEIGHTS").unlink()
    (local / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "rescale_factor": 1 / 255,
         "do_rescale": True, "do_normalize": True, "resample": 2, "size": {"shortest_edge": 384}}))
    record = m2f.export_mask2former(local, tmp_path / "out", image_size=128,
                                    expect_sha256=sha256_checkpoint(local))
    assert record.random_weights is False
    assert record.inputs["pixel_values"]["shape"] == ["batch", 3, 128, 128]
    # the graph at the new size, measured here against the checkpoint's PyTorch forward
    pixel_values = np.random.default_rng(5).normal(size=(2, 3, 128, 128)).astype(np.float32)
    with torch.no_grad():
        expected = m2f.load_mask2former(local)(pixel_values=torch.from_numpy(pixel_values))
    classes, masks = ort_session(tmp_path / "out" / record.file).run(None, {"pixel_values": pixel_values})
    assert np.abs(classes - expected.class_queries_logits.numpy()).max() < 1e-4
    assert np.abs(masks - expected.masks_queries_logits.numpy()).max() < 1e-4
    pre = record.model_config["preprocess"]
    assert pre["image_mean"] == [0.5] * 3 and pre["image_std"] == [0.25] * 3 and pre["resize"]["height"] == 128
    with pytest.raises(ValueError):
        m2f.export_mask2former(local, tmp_path / "bad", image_size=100)
