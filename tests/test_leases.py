"""The embedding cache never ends a session a request is using: a streamed GenerateMasks on image
bytes keeps going while other clients push its image out of the cache (the stack caches 2)."""
import io

import grpc
import numpy as np
from PIL import Image

from segserve.api import load

apb, apb_grpc = load("automask")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_cache_eviction_never_ends_a_session_in_use(stack, client, photo):
    images = stack.orchestrator.service.images
    assert images.cache_size == 2
    request = apb.GenerateMasksRequest(image=_png(photo), stream=True,
                                       parameters=apb.AutoMaskParameters(points_per_side=12, points_per_batch=4))
    with grpc.insecure_channel(stack.address) as channel:
        call = apb_grpc.AutoMaskStub(channel).GenerateMasks(request, timeout=300)
        assert next(call).progress.points_done == 4
        # Five other images by bytes while the stream is open: each is a cache miss that evicts.
        for k in range(5):
            other = np.ascontiguousarray(np.roll(photo, 37 * (k + 1), axis=1))
            assert client.mask_from_prompt(image=other, points=[(20, 30, 1)]).cached is False
        with images._lock:  # the leased session is still registered, the others were evicted
            leased = [s for s in images._sessions.values() if s.leases]
            assert len(leased) == 1 and not leased[0].retired
        rest = list(call)
    assert rest[-1].done and rest[-1].progress.points_done == 144
    assert rest[-1].decoder_calls == 36
    # Released: the next miss evicts it like any other entry, and nothing stays leased.
    client.mask_from_prompt(image=np.ascontiguousarray(photo[::-1]), points=[(20, 30, 1)])
    with images._lock:
        assert all(s.leases == 0 for s in images._sessions.values())
        assert len(images._cache) <= images.cache_size
