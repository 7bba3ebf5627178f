"""The embedding cache never ends a session a request is using: a request holding a lease on an
image's cached session keeps it while other clients push that image out of the cache (the stack
caches 2), and a streamed GenerateMasks on the same bytes still runs on it.

The lease is taken in-process through the same `ImageSessions.cached` path a request takes: a
stream of its own would race the evictions (the server may finish it before they happen)."""
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
    service = stack.orchestrator.service
    images = service.images
    assert images.cache_size == 2
    photo = photo.copy()
    photo[:2] = (7, 77, 177)  # bytes no other test sends: every open below is a miss
    data = _png(photo)
    with images.cached(data, lambda: service._decode(data)) as (held, hit):
        assert hit is False
        # Five other images by bytes while the lease is held: each is a cache miss that evicts.
        for k in range(5):
            other = np.ascontiguousarray(np.roll(photo, 37 * (k + 1), axis=1))
            assert client.mask_from_prompt(image=other, points=[(20, 30, 1)]).cached is False
        with images._lock:  # the leased session is still registered and cached, the others were evicted
            leased = [s for s in images._sessions.values() if s.leases]
            assert leased == [held] and not held.retired
            assert held.image_id in images._cache.values()
        # Its Triton sequence is alive: a stream on the same bytes hits the cache and runs on it.
        request = apb.GenerateMasksRequest(image=data, stream=True,
                                           parameters=apb.AutoMaskParameters(points_per_side=12, points_per_batch=4))
        with grpc.insecure_channel(stack.address) as channel:
            replies = list(apb_grpc.AutoMaskStub(channel).GenerateMasks(request, timeout=300))
        assert replies[-1].done and replies[-1].progress.points_done == 144
        assert replies[-1].decoder_calls == 36
        with images._lock:
            assert held.leases == 1 and not held.retired  # the stream's lease came and went on it
    # Released, it is an entry like any other: the stream made it the most recent, so two more
    # misses evict it, and nothing stays leased.
    for flipped in (photo[::-1], photo[:, ::-1]):
        assert client.mask_from_prompt(image=np.ascontiguousarray(flipped), points=[(20, 30, 1)]).cached is False
    with images._lock:
        assert all(s.leases == 0 for s in images._sessions.values())
        assert held.retired and held.image_id not in images._cache.values()
        assert len(images._cache) <= images.cache_size
