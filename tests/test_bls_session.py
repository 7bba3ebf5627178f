"""The fleet's session code path (BLS to separate encoder/decoder models), run on the CPU server."""
import numpy as np

from segserve.client import SegservClient
from segserve.repository.builder import build_repository
from segserve.runtime.stack import start_stack


def test_bls_runner_gives_the_same_masks(sam2_artifacts, client, photo, tmp_path):
    repository = tmp_path / "repo"
    build_repository(sam2_artifacts, repository, "embedded", session_runner="bls")
    prompt = dict(points=[(200, 200, 1)], boxes=[(60, 40, 330, 380)], multimask=True, return_low_res_logits=True)
    opened = client.open_image(photo)
    expected = client.mask_from_prompt(image_id=opened.image_id, **prompt)
    client.close_image(opened.image_id)
    with start_stack(repository, tmp_path / "triton") as stack, SegservClient(stack.address) as bls_client:
        opened = bls_client.open_image(photo)
        got = bls_client.mask_from_prompt(image_id=opened.image_id, **prompt)
        stats = stack.triton  # the encoder and decoder models really ran
        import tritonclient.grpc as grpcclient
        triton = grpcclient.InferenceServerClient(stats.grpc_url)
        counts = {m.name: m.inference_count for m in triton.get_inference_statistics().model_stats}
        triton.close()
    assert counts["sam2_image_encoder"] == 1 and counts["sam2_prompt_decoder"] == 1
    for a, b in zip(expected.objects[0].masks, got.objects[0].masks):
        np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(expected.objects[0].low_res_logits[0], got.objects[0].low_res_logits[0], atol=1e-5)
