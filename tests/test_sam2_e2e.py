"""Masks through orchestrator + real embedded Triton vs transformers' Sam2Model (same checkpoint)."""
import numpy as np
import pytest

from tests import sam2_reference

PROMPTS = {
    "points": dict(points=[(120, 150, 1), (300, 260, 0)]),
    "box": dict(boxes=[(60, 40, 330, 380)]),
    "point_and_box": dict(points=[(200, 200, 1)], boxes=[(60, 40, 330, 380)]),
    "two_boxes": dict(boxes=[(60, 40, 330, 380), (250, 100, 470, 390)]),
}


def reference(model, photo, prompt, multimask=False, mask_input=None):
    points = prompt.get("points")
    return sam2_reference.predict(
        model, photo, multimask=multimask, mask_input=mask_input, boxes=prompt.get("boxes"),
        points=[p[:2] for p in points] if points else None, labels=[p[2] for p in points] if points else None)


def assert_matches(result, expected, min_fraction=0.005):
    low_res, iou_scores, masks = expected
    # Logits of order 1, so the absolute 1e-3 bound below is a real test.
    assert np.abs(low_res).mean() > 0.1
    assert len(result.objects) == low_res.shape[0]
    for p, obj in enumerate(result.objects):
        assert len(obj.masks) == low_res.shape[1]
        for k, mask in enumerate(obj.masks):
            assert abs(mask.score - iou_scores[p, k]) <= 1e-3
            np.testing.assert_allclose(obj.low_res_logits[k], low_res[p, k], atol=1e-3, rtol=0)
            assert sam2_reference.iou(mask.mask, masks[p, k]) >= 0.99
            assert mask.area == int(mask.mask.sum())
    fractions = [m.mask.mean() for o in result.objects for m in o.masks]
    # Random weights: make sure the comparison is not between two empty (or two full) masks.
    assert any(min_fraction < f < 1 - min_fraction for f in fractions), fractions


@pytest.mark.parametrize("multimask", [False, True], ids=["single", "multimask"])
@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_matches_sam2model(client, sam2_torch_model, photo, name, multimask):
    opened = client.open_image(photo)
    try:
        result = client.mask_from_prompt(image_id=opened.image_id, multimask=multimask, return_low_res_logits=True,
                                         **PROMPTS[name])
    finally:
        client.close_image(opened.image_id)
    assert (result.height, result.width) == photo.shape[:2]
    assert_matches(result, reference(sam2_torch_model, photo, PROMPTS[name], multimask))


def test_mask_refinement_matches_sam2model(client, sam2_torch_model, photo):
    opened = client.open_image(photo)
    first = client.mask_from_prompt(image_id=opened.image_id, points=[(120, 150, 1)], return_low_res_logits=True)
    previous = first.objects[0].low_res_logits[0]
    prompt = dict(points=[(120, 150, 1), (250, 300, 1)])
    refined = client.mask_from_prompt(image_id=opened.image_id, mask_input=previous, return_low_res_logits=True,
                                      **prompt)
    client.close_image(opened.image_id)
    expected = reference(sam2_torch_model, photo, prompt, mask_input=previous)
    assert_matches(refined, expected)
    # The mask prompt changes the answer: the refinement really used it.
    without_mask = reference(sam2_torch_model, photo, prompt)
    assert np.abs(without_mask[0] - expected[0]).max() > 1e-3


def test_image_bytes_use_the_embedding_cache(client, sam2_torch_model):
    from skimage import data

    coffee = np.ascontiguousarray(data.coffee()[::2, ::2])
    prompt = dict(points=[(150, 100, 1)])
    first = client.mask_from_prompt(image=coffee, return_low_res_logits=True, **prompt)
    second = client.mask_from_prompt(image=coffee, return_low_res_logits=True, **prompt)
    assert (first.cached, second.cached) == (False, True)
    np.testing.assert_array_equal(first.objects[0].masks[0].mask, second.objects[0].masks[0].mask)
    assert_matches(second, reference(sam2_torch_model, coffee, prompt))


def test_png_mask_format_equals_rle(client, photo):
    opened = client.open_image(photo)
    rle = client.mask_from_prompt(image_id=opened.image_id, boxes=[(60, 40, 330, 380)])
    png = client.mask_from_prompt(image_id=opened.image_id, boxes=[(60, 40, 330, 380)], mask_format="png")
    client.close_image(opened.image_id)
    assert png.objects[0].masks[0].rle is None
    np.testing.assert_array_equal(png.objects[0].masks[0].mask, rle.objects[0].masks[0].mask)


def test_model_info_labels_random_weights(client, photo):
    opened = client.open_image(photo)
    client.close_image(opened.image_id)
    assert opened.model.family == "sam2" and opened.model.random_weights
    info = client.model_info()
    assert info.triton_version and set(info.models[0].artifact_sha256) == {"sam2_image_encoder", "sam2_prompt_decoder"}


def test_concurrent_images_each_get_their_own_masks(stack, sam2_torch_model, photo):
    """Different images at once (the session model's sequence batcher may run them in one execute()):
    each answer is Sam2Model's for its own image and prompt, so results crossed over would fail."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from skimage import data

    from segserve.client import SegservClient

    cases = [(photo, dict(points=[(120, 150, 1)])),
             (np.ascontiguousarray(photo[::-1, ::-1]), dict(points=[(120, 150, 1)])),
             (np.ascontiguousarray(data.coffee()[::2, ::2]), dict(boxes=[(60, 40, 250, 180)]))]
    expected = [reference(sam2_torch_model, image, prompt) for image, prompt in cases]
    # The same click on two images gives different reference masks: a swap would show.
    assert sam2_reference.iou(expected[0][2][0, 0], expected[1][2][0, 0]) < 0.9
    barrier = threading.Barrier(len(cases))

    def call(case):
        image, prompt = case
        with SegservClient(stack.address) as c:
            barrier.wait()
            return c.mask_from_prompt(image=image, return_low_res_logits=True, **prompt)

    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(call, cases))
    for (image, _), result, ref in zip(cases, results, expected):
        assert (result.height, result.width) == image.shape[:2]
        assert_matches(result, ref)
