"""Image sessions under concurrency, through the real embedded Triton (`tritonclient.grpc`):

- the clicks of several sessions in one execute() are decoded in ONE decoder call (Triton's own
  statistics: one execution for several requests; the model's decoder-call counter on Triton's
  metrics port), and each request gets exactly what it gets alone: different images, different
  prompt kinds (points, boxes, a mask input, several prompts) and point counts in one batch, also
  checked against transformers' Sam2Model;
- a bad request in a batch is refused alone (INVALID_ARGUMENT naming the field), the others answered;
- a START encodes off the click path: clicks of an open session are answered while another image
  is being encoded.
The session model's queue delay is raised so that concurrent requests reliably share an execute().
"""
from __future__ import annotations

import re
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from segserve.common import rle, sam2_transforms
from tests import sam2_reference

MODEL = "sam2_image_session"
QUEUE_DELAY_US = 400_000  # concurrent requests of a test always fall within one batch window
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def triton(sam2_artifacts, tmp_path_factory):
    from segserve.repository.builder import build_repository
    from segserve.runtime.triton import EmbeddedTriton, free_port

    repository = tmp_path_factory.mktemp("batching_repository")
    build_repository(sam2_artifacts, repository, "embedded", max_sessions=8, intra_op_threads=1,
                     options={"image_queue_delay_us": QUEUE_DELAY_US})
    server = EmbeddedTriton(repository, tmp_path_factory.mktemp("batching_triton"), grpc_port=free_port(),
                            http_port=free_port(), metrics_port=free_port())
    with server:
        yield server


@pytest.fixture(scope="module")
def client(triton):
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        yield c


def _tensor(name: str, array: np.ndarray, dtype: str) -> grpcclient.InferInput:
    value = grpcclient.InferInput(name, list(array.shape), dtype)
    value.set_data_from_numpy(array)
    return value


def _open(client, corrid: int, image: np.ndarray) -> None:
    client.infer(MODEL, [_tensor("IMAGE", image[None], "UINT8")], sequence_id=corrid, sequence_start=True,
                 outputs=[grpcclient.InferRequestedOutput("IMAGE_SIZE")])


def _click(client, corrid: int, prompt: dict):
    inputs = [_tensor("POINT_COORDS", prompt["coords"][None].astype(np.float32), "FP32"),
              _tensor("POINT_LABELS", prompt["labels"][None].astype(np.int32), "INT32"),
              _tensor("MULTIMASK", np.array([[prompt["multimask"]]]), "BOOL")]
    if prompt.get("mask") is not None:
        inputs.append(_tensor("MASK_INPUT", prompt["mask"], "FP32"))
    names = ["SCORES", "LOW_RES_LOGITS", "MASKS_RLE", "OBJECT_SCORE"]
    result = client.infer(MODEL, inputs, sequence_id=corrid, outputs=[grpcclient.InferRequestedOutput(n) for n in names])
    return {n: result.as_numpy(n) for n in names}


def _concurrently(client, calls: dict[int, dict]) -> dict[int, object]:
    """Every call at once (one thread each); a refusal comes back as its exception."""
    out: dict[int, object] = {}
    barrier = threading.Barrier(len(calls))

    def run(corrid, prompt):
        barrier.wait()
        try:
            out[corrid] = _click(client, corrid, prompt)
        except InferenceServerException as exc:
            out[corrid] = exc

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _stats(client, settle_s: float = 0.5) -> tuple[int, int]:
    """(executions, requests) once they stop changing: the model answers through response senders,
    and Triton records a request's statistics when it is released, just after its answer."""
    last, stable_since = None, time.monotonic()
    while True:
        stats = client.get_inference_statistics(MODEL).model_stats[0]
        now = (int(stats.execution_count), int(stats.inference_count))
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= settle_s:
            return last
        time.sleep(0.05)


def _decoder_calls(triton) -> tuple[float, float]:
    text = urllib.request.urlopen(triton.metrics_url).read().decode()

    def total(name):
        return sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))

    return total("segserve_triton_image_decoder_calls"), total("segserve_triton_image_decoded_requests")


def _images(photo):
    """Three different images (sizes and content)."""
    return {1: photo, 2: np.ascontiguousarray(photo[50:350, 100:460][:, ::-1]),
            3: np.ascontiguousarray(np.rot90(photo[:300, :300]))}


def _prompts(images, previous_logits: np.ndarray) -> dict[int, dict]:
    """Per session a different kind of prompt and point count (original pixels -> model frame)."""
    def build(corrid, points=None, labels=None, boxes=None, multimask=False, mask=None):
        coords, point_labels = sam2_transforms.build_prompts(
            None if points is None else np.array(points, np.float32), None if labels is None else np.array(labels),
            None if boxes is None else np.array(boxes, np.float32), images[corrid].shape[:2])
        return {"coords": coords, "labels": point_labels, "multimask": multimask, "mask": mask,
                "points": points, "point_labels": labels, "boxes": boxes}

    return {
        1: build(1, points=[(120, 150), (300, 260), (200, 100)], labels=[1, 0, 1], multimask=True),  # 4 points
        2: build(2, boxes=[(30, 20, 250, 280)]),  # box: 2 corners + pad
        3: build(3, points=[(150, 150)], labels=[1], mask=previous_logits[None, None]),  # click + mask input
        4: build(1, boxes=[(60, 40, 330, 380), (250, 100, 470, 390)], points=[(200, 200)], labels=[1]),  # 2 prompts
    }


@pytest.fixture(scope="module")
def sessions(client, photo):
    images = _images(photo)
    for corrid, image in images.items():
        _open(client, corrid, image)
    _open(client, 4, images[1])  # a second session on the first image
    images[4] = images[1]
    yield images
    for corrid in images:
        try:
            client.infer(MODEL, [], sequence_id=corrid, sequence_end=True,
                         outputs=[grpcclient.InferRequestedOutput("IMAGE_SIZE")])
        except InferenceServerException:
            pass


@pytest.fixture(scope="module")
def prompts(client, sessions):
    first = _click(client, 3, {"coords": np.array([[[100.0, 300.0], [0.0, 0.0]]]), "labels": np.array([[1, -1]]),
                               "multimask": False})
    return _prompts(sessions, first["LOW_RES_LOGITS"][0, 0, 0])


def _assert_same(batched, solo):
    # Logits of order 1: the absolute bound is a real test.
    assert np.abs(solo["LOW_RES_LOGITS"]).mean() > 0.1
    np.testing.assert_allclose(batched["LOW_RES_LOGITS"], solo["LOW_RES_LOGITS"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(batched["SCORES"], solo["SCORES"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched["OBJECT_SCORE"], solo["OBJECT_SCORE"], atol=1e-5, rtol=0)
    assert batched["MASKS_RLE"].tolist() == solo["MASKS_RLE"].tolist()


def test_clicks_of_several_sessions_share_one_decoder_call(triton, client, sessions, prompts, sam2_torch_model):
    solo = {corrid: _click(client, corrid, p) for corrid, p in prompts.items()}
    executions, inferences = _stats(client)
    calls, decoded = _decoder_calls(triton)
    batched = _concurrently(client, prompts)
    after_executions, after_inferences = _stats(client)
    after_calls, after_decoded = _decoder_calls(triton)
    # Triton's statistics: the four requests shared execute() calls (one, unless the machine is too
    # busy to send them within the queue delay), and each execute() made ONE decoder call.
    requests, executions = after_inferences - inferences, after_executions - executions
    assert requests == 4 and executions < requests, (requests, executions)
    assert (after_decoded - decoded, after_calls - calls) == (4, executions)
    fractions = []
    for corrid, prompt in prompts.items():
        _assert_same(batched[corrid], solo[corrid])
        image = sessions[corrid]
        # and what transformers' Sam2Model gives for the same prompt on the same image
        low_res, scores, masks = sam2_reference.predict(
            sam2_torch_model, image, points=prompt["points"], labels=prompt["point_labels"], boxes=prompt["boxes"],
            mask_input=None if prompt["mask"] is None else prompt["mask"][0, 0], multimask=prompt["multimask"])
        np.testing.assert_allclose(batched[corrid]["LOW_RES_LOGITS"][0], low_res, atol=1e-3, rtol=0)
        np.testing.assert_allclose(batched[corrid]["SCORES"][0], scores, atol=1e-3, rtol=0)
        for p, row in enumerate(batched[corrid]["MASKS_RLE"][0]):
            for k, counts in enumerate(row):
                mask = rle.decode({"size": list(image.shape[:2]), "counts": counts.decode()})
                assert sam2_reference.iou(mask, masks[p, k]) >= 0.99
                fractions.append(mask.mean())
    assert any(0.005 < f < 0.995 for f in fractions), fractions  # not all empty or full masks


def test_a_bad_request_in_a_batch_fails_alone(triton, client, sessions, prompts):
    solo = {corrid: _click(client, corrid, prompts[corrid]) for corrid in (1, 2, 4)}
    bad_labels = {**prompts[3], "labels": np.where(prompts[3]["labels"] == 1, 7, prompts[3]["labels"])}
    executions, inferences = _stats(client)
    out = _concurrently(client, {1: prompts[1], 2: prompts[2], 3: bad_labels, 4: prompts[4]})
    after_executions, after_inferences = _stats(client)
    assert after_inferences - inferences == 4 and after_executions - executions < 4  # shared execute()
    assert isinstance(out[3], InferenceServerException)
    assert str(out[3].status()).endswith("INVALID_ARGUMENT") and "POINT_LABELS" in out[3].message()
    for corrid in (1, 2, 4):
        _assert_same(out[corrid], solo[corrid])
    nan_coords = {**prompts[2], "coords": np.full_like(prompts[2]["coords"], np.nan)}
    out = _concurrently(client, {1: prompts[1], 2: nan_coords})
    assert str(out[2].status()).endswith("INVALID_ARGUMENT") and "POINT_COORDS" in out[2].message()
    _assert_same(out[1], solo[1])
    # the refused session is unharmed
    _assert_same(_click(client, 2, prompts[2]), solo[2])


def test_clicks_are_answered_while_another_image_encodes(client, sessions, prompts):
    """A START is answered by the encoder worker, not inside execute(): a click of an open session
    sent just after the START of a large image (its preprocessing and encoding take far longer than
    a click) is answered before that START. On the one-at-a-time path it would wait for the encode."""
    big = np.ascontiguousarray(np.tile(sessions[1], (8, 6, 1)))  # 3200 x 2880
    done: dict[str, float] = {}

    def open_big():
        _open(client, 9, big)
        done["open"] = time.perf_counter()

    opener = threading.Thread(target=open_big)
    opener.start()
    time.sleep(0.05)
    click = _click(client, 2, prompts[2])
    done["click"] = time.perf_counter()
    opener.join()
    try:
        assert "open" in done and click["SCORES"].shape[:2] == (1, 1)
        assert done["click"] < done["open"], done
    finally:
        client.infer(MODEL, [], sequence_id=9, sequence_end=True, outputs=[grpcclient.InferRequestedOutput("IMAGE_SIZE")])
