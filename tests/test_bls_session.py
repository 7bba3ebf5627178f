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


def test_bls_runner_decodes_the_clicks_of_several_sessions_in_one_decoder_call(sam2_artifacts, photo, tmp_path):
    """The fleet's path: the sessions' embeddings (BLS Tensors) gathered into one call of the
    `sam2_prompt_decoder` model; Triton's statistics of that model show it, and each session gets
    what it gets alone."""
    import threading

    import tritonclient.grpc as grpcclient

    from segserve.common import sam2_transforms
    from segserve.runtime.triton import EmbeddedTriton, free_port

    repository = tmp_path / "repo"
    build_repository(sam2_artifacts, repository, "embedded", session_runner="bls", intra_op_threads=1,
                     options={"image_queue_delay_us": 400_000})

    def tensor(name, array, dtype):
        value = grpcclient.InferInput(name, list(array.shape), dtype)
        value.set_data_from_numpy(array)
        return value

    images = {1: photo, 2: np.ascontiguousarray(photo[::-1, 50:400]), 3: np.ascontiguousarray(photo[100:, ::-1])}
    prompts = {1: ([(120.0, 150.0), (300.0, 260.0)], [1, 0], None), 2: (None, None, [(30.0, 20.0, 250.0, 280.0)]),
               3: ([(200.0, 200.0)], [1], [(60.0, 40.0, 330.0, 380.0), (100.0, 100.0, 300.0, 300.0)])}
    with EmbeddedTriton(repository, tmp_path / "triton", grpc_port=free_port(), http_port=free_port(),
                        metrics_port=free_port()) as triton, grpcclient.InferenceServerClient(triton.grpc_url) as client:
        def click(corrid):
            points, labels, boxes = prompts[corrid]
            coords, point_labels = sam2_transforms.build_prompts(
                None if points is None else np.array(points, np.float32), None if labels is None else np.array(labels),
                None if boxes is None else np.array(boxes, np.float32), images[corrid].shape[:2])
            result = client.infer("sam2_image_session", [tensor("POINT_COORDS", coords[None], "FP32"),
                                                         tensor("POINT_LABELS", point_labels[None], "INT32")],
                                  sequence_id=corrid, outputs=[grpcclient.InferRequestedOutput("LOW_RES_LOGITS")])
            return result.as_numpy("LOW_RES_LOGITS")

        def decoder_stats():
            """Once they stop changing: a request answered through its response sender is counted
            when Triton releases it, just after the answer."""
            import time

            last, since = None, time.monotonic()
            while last is None or time.monotonic() - since < 0.5:
                stats = {m.name: m for m in client.get_inference_statistics().model_stats}
                now = {n: (stats[n].inference_count, stats[n].execution_count)
                       for n in ("sam2_image_session", "sam2_prompt_decoder")}
                if now != last:
                    last, since = now, time.monotonic()
                time.sleep(0.05)
            return last

        for corrid, image in images.items():
            client.infer("sam2_image_session", [tensor("IMAGE", image[None], "UINT8")], sequence_id=corrid,
                         sequence_start=True, outputs=[grpcclient.InferRequestedOutput("IMAGE_SIZE")])
        solo = {corrid: click(corrid) for corrid in images}
        before = decoder_stats()
        batched: dict[int, np.ndarray] = {}
        barrier = threading.Barrier(len(images))

        def send(corrid):
            barrier.wait()
            batched[corrid] = click(corrid)

        threads = [threading.Thread(target=send, args=(c,)) for c in images]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = decoder_stats()
    # three requests shared execute() calls of the session model (one, unless the machine is too
    # busy to send them within the queue delay), and each made ONE request to the decoder model
    requests, executions = (after["sam2_image_session"][i] - before["sam2_image_session"][i] for i in (0, 1))
    assert requests == 3 and executions < 3
    assert [after["sam2_prompt_decoder"][i] - before["sam2_prompt_decoder"][i] for i in (0, 1)] == [executions] * 2
    for corrid in images:
        assert np.abs(solo[corrid]).mean() > 0.1
        np.testing.assert_allclose(batched[corrid], solo[corrid], atol=1e-4, rtol=0)
