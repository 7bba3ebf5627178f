"""segserve's torch-free SAM 2 transforms against the PyTorch reference definitions."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segserve.common import rle, sam2_transforms
from tests import sam2_reference


@pytest.mark.parametrize("shape", [(480, 640), (1500, 900), (300, 200), (1024, 1024), (17, 2500)])
def test_preprocess_matches_reference_resize_and_normalise(shape):
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = sam2_transforms.preprocess(rgb)
    reference = sam2_reference.pixel_values(rgb).numpy()
    assert ours.shape == (1, 3, 1024, 1024) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() < 1e-5


@pytest.mark.parametrize("shape", [(96, 128), (480, 640), (17, 700)])
def test_transforms_at_the_video_model_size(shape):
    """The video model's 256x256 frame: segserve's preprocess, click scaling and mask upscale against
    the video reference's own torch recipe (tests/sam2_video_reference.py)."""
    from tests import sam2_video_reference as video_reference

    rng = np.random.default_rng(sum(shape))
    frames = rng.integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    ours = np.concatenate([sam2_transforms.preprocess(f, 256) for f in frames])
    assert ours.shape == (2, 3, 256, 256)
    assert np.abs(ours - video_reference.pixel_values(frames, 256).numpy()).max() < 1e-5
    clicks = rng.random((5, 2)).astype(np.float32) * [shape[1], shape[0]]
    np.testing.assert_allclose(sam2_transforms.to_model_coords(clicks, shape, 256),
                               video_reference.model_coords(clicks, shape, 256).numpy(), rtol=1e-6, atol=1e-4)
    logits = rng.normal(size=(3, 64, 64)).astype(np.float32) * 6
    for low_res in logits:
        expected = video_reference.masks_from_low_res(low_res, shape)
        assert 0 < expected.sum() < expected.size
        mismatched = np.count_nonzero(sam2_transforms.masks_from_logits(low_res, shape, 0.0) != expected)
        assert mismatched <= 1e-4 * expected.size


def test_preprocess_real_photo(photo):
    assert np.abs(sam2_transforms.preprocess(photo) - sam2_reference.pixel_values(photo).numpy()).max() < 1e-5


@pytest.mark.parametrize("shape", [(480, 640), (1024, 1024), (200, 150), (777, 333), (2000, 3001)])
def test_mask_upscale_matches_post_process_masks(shape):
    logits = np.random.default_rng(1).normal(size=(2, 3, 256, 256)).astype(np.float32) * 6
    ours = sam2_transforms.upscale_logits(logits, shape)
    reference = F.interpolate(torch.from_numpy(logits), shape, mode="bilinear", align_corners=False).numpy()
    assert np.abs(ours - reference).max() < 1e-3
    mismatched = np.count_nonzero((ours > 0) != (reference > 0))
    assert mismatched <= 1e-5 * reference.size


def test_build_prompts_layout():
    coords, labels = sam2_transforms.build_prompts(np.array([[10, 20]]), np.array([1]), None, (100, 200))
    assert coords.shape == (1, 2, 2) and labels.tolist() == [[1, -1]]
    np.testing.assert_allclose(coords[0, 0], [10 * 1024 / 200, 20 * 1024 / 100])
    coords, labels = sam2_transforms.build_prompts(np.array([[10, 20]]), np.array([0]),
                                                   np.array([[0, 0, 50, 50], [5, 5, 9, 9]]), (100, 200))
    assert coords.shape == (2, 4, 2)
    assert labels.tolist() == [[0, 2, 3, -1], [0, 2, 3, -1]]
    coords, labels = sam2_transforms.build_prompts(None, None, None, (100, 200))
    assert labels.tolist() == [[-1]]


def test_rle_round_trip_and_coco_layout():
    mask = np.zeros((7, 5), bool)
    mask[2:5, 1:3] = True
    encoded = rle.encode(mask)
    assert encoded["size"] == [7, 5] and isinstance(encoded["counts"], str)
    np.testing.assert_array_equal(rle.decode(encoded), mask)
    assert rle.area(encoded) == 6
