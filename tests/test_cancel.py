"""A client that cancels, or whose deadline passes, stops the work it started: automatic masks stop
within one decoder batch (Triton's own statistics show no further decoder call), and the call is
counted as CANCELLED / DEADLINE_EXCEEDED, not OK."""
import io
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from segserve.api import load

apb, apb_grpc = load("automask")
SESSION_MODEL = "sam2_image_session"


def triton_requests(stack, model: str = SESSION_MODEL) -> int:
    """Requests Triton has run for `model` (successful or not), from its statistics API."""
    with grpcclient.InferenceServerClient(stack.triton.grpc_url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    inference = stats["inference_stats"]
    return sum(int(inference.get(k, {}).get("count", 0)) for k in ("success", "fail"))


def counted(stack, method: str, code: str) -> float:
    port = stack.orchestrator.service.settings.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("segserve_requests_total{") and f'method="{method}"' in line and f'code="{code}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def settle(stack, quiet_s: float = 1.5, limit_s: float = 20.0) -> int:
    """Triton's request count once it stops changing for `quiet_s`."""
    deadline = time.monotonic() + limit_s
    last = triton_requests(stack)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = triton_requests(stack)
        if now == last:
            return now
        last = now
    raise AssertionError(f"Triton kept working for {limit_s} s after the client left")


@pytest.fixture()
def automask(stack):
    channel = grpc.insecure_channel(stack.address)
    yield apb_grpc.AutoMaskStub(channel)
    channel.close()


def _request(photo, stream: bool) -> "apb.GenerateMasksRequest":
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    # 64 x 64 points, 8 per decoder call: 512 calls, far more than fit in the deadline.
    return apb.GenerateMasksRequest(image=buffer.getvalue(), stream=stream,
                                    parameters=apb.AutoMaskParameters(points_per_side=64, points_per_batch=8))


def test_a_deadline_stops_a_non_streamed_generate_masks(stack, automask, photo):
    before_count = counted(stack, "GenerateMasks", "DEADLINE_EXCEEDED")
    start = triton_requests(stack)
    with pytest.raises(grpc.RpcError) as info:
        automask.GenerateMasks(_request(photo, stream=False), timeout=3.0).__next__()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    stopped = settle(stack)
    decoder_calls = stopped - start - 1  # minus the encoder's START
    assert 0 < decoder_calls < 512, decoder_calls  # it had started, and it did not run to the end
    time.sleep(2.0)
    assert triton_requests(stack) == stopped  # nothing more, ever
    assert counted(stack, "GenerateMasks", "DEADLINE_EXCEEDED") == before_count + 1


def test_cancelling_a_streamed_generate_masks_stops_it(stack, automask, photo):
    before_count = counted(stack, "GenerateMasks", "CANCELLED")
    start = triton_requests(stack)
    call = automask.GenerateMasks(_request(photo, stream=True), timeout=120.0)
    progress = [next(call) for _ in range(3)]
    assert [m.progress.points_done for m in progress] == [8, 16, 24]
    call.cancel()
    stopped = settle(stack)
    # 3 batches answered, at most the prefetched one and the one in flight on top (plus the START).
    assert stopped - start <= 1 + 3 + 2, stopped - start
    deadline = time.monotonic() + 10
    while counted(stack, "GenerateMasks", "CANCELLED") < before_count + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert counted(stack, "GenerateMasks", "CANCELLED") == before_count + 1


def test_the_image_stays_usable_after_a_cancelled_request(client, stack, automask, photo):
    """The cancelled request held a lease on the cached image session: released, not leaked."""
    request = _request(photo, stream=True)
    call = automask.GenerateMasks(request, timeout=120.0)
    next(call)
    call.cancel()
    settle(stack)
    images = stack.orchestrator.service.images
    with images._lock:
        assert all(s.leases == 0 for s in images._sessions.values())
    result = client.mask_from_prompt(image=request.image, points=[(100, 120, 1)])
    assert result.cached and np.asarray(result.objects[0].best.mask).any()
