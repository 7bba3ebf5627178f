"""Placement of sessions and calls on Triton replicas (`TritonPool`), without a Triton: replicas of a
headless Service come from a faked DNS, their capacities from a faked model config; no inference
call is ever made (a replica that is gone refuses before the network)."""
from __future__ import annotations

import socket
import threading
import time

import grpc
import pytest

from segserve.orchestrator.errors import ServiceError
from segserve.orchestrator.ids import IdSigner, SessionRef
from segserve.orchestrator.sessions import ImageSession, ImageSessions
from segserve.orchestrator.settings import Settings
from segserve.orchestrator.triton_pool import IMAGE, SESSION_MODEL, TRACKER_MODEL, VIDEO, Replica, TritonPool
from segserve.orchestrator.video_sessions import VideoSessions

A, B = "10.0.0.1", "10.0.0.2"
PORT = 8001
SERVICE = f"triton-headless.test:{PORT}"


class FakeDns:
    """getaddrinfo for the headless Service: the addresses in `.addresses`, or an error."""

    def __init__(self, monkeypatch, *addresses):
        self.addresses = list(addresses)
        self.error: socket.gaierror | None = None
        self.calls = 0
        self.hook = None  # called on each lookup (to block it, or look at the pool's lock)
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host, port, *args, **kwargs):
        if not str(host).startswith("triton-headless"):
            return self._real(host, port, *args, **kwargs)
        self.calls += 1
        if self.hook is not None:
            self.hook()
        if self.error is not None:
            raise self.error
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in self.addresses]


class Capacities(dict):
    """(address, model) -> max_sessions; a model missing is not served by that replica, None: the
    replica does not answer. `.read`: the config reads made."""

    def __init__(self):
        super().__init__()
        self.read: list[tuple[str, str]] = []


@pytest.fixture()
def capacities(monkeypatch) -> Capacities:
    caps = Capacities()

    def model_parameters(self, model):
        key = (self.url.rpartition(":")[0], model)
        caps.read.append(key)
        if key not in caps:
            raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, f"this server's model repository has no {model}")
        if caps[key] is None:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "Triton is unavailable; try again shortly")
        return {"max_sessions": str(caps[key])}

    monkeypatch.setattr(Replica, "model_parameters", model_parameters)
    return caps


@pytest.fixture()
def closed(monkeypatch):
    """Addresses whose Triton client was closed."""
    urls: list[str] = []
    monkeypatch.setattr(Replica, "close", lambda self: urls.append(self.url))
    real_retire = Replica.retire

    def retire(self):
        self.client.close = lambda: urls.append(self.url)
        real_retire(self)

    monkeypatch.setattr(Replica, "retire", retire)
    return urls


def _pool() -> TritonPool:
    return TritonPool(Settings(triton_headless=SERVICE, triton_timeout_s=5.0))


def _url(address: str) -> str:
    return f"{address}:{PORT}"


def _place_all(pool: TritonPool, kind: str) -> list[str]:
    placed = []
    while True:
        try:
            placed.append(pool.place(kind).url.rpartition(":")[0])
        except ServiceError as exc:
            assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message
            return placed


def test_least_loaded_replica_with_room(monkeypatch, capacities):
    FakeDns(monkeypatch, A, B)
    capacities.update({(A, SESSION_MODEL): 2, (B, SESSION_MODEL): 2})
    pool = _pool()
    assert [r.url for r in pool.replicas()] == [_url(A), _url(B)]
    assert sorted(_place_all(pool, IMAGE)) == [A, A, B, B]  # alternating: the least filled first
    with pytest.raises(ServiceError) as info:
        pool.place(IMAGE)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "all 2 Triton replicas are full: 4 image sessions opened through this orchestrator, room for 4" in info.value.message
    pool.release(pool.known(_url(B)), IMAGE)
    assert pool.place(IMAGE).url == _url(B)


def test_a_full_replica_is_skipped(monkeypatch, capacities):
    FakeDns(monkeypatch, A, B)
    capacities.update({(A, SESSION_MODEL): 1, (B, SESSION_MODEL): 4})
    pool = _pool()
    first = [pool.place(IMAGE).url for _ in range(3)]
    # A (1 of 1) is full although it holds fewer sessions than B: the rest go to B.
    assert first.count(_url(A)) == 1 and first.count(_url(B)) == 2
    assert _place_all(pool, IMAGE) == [B, B]
    a, b = pool.known(_url(A)), pool.known(_url(B))
    assert (a.held[IMAGE], b.held[IMAGE]) == (1, 4)


def test_refused_only_when_no_replica_has_room_and_the_message_says_so(monkeypatch, capacities):
    FakeDns(monkeypatch, A)
    capacities.update({(A, TRACKER_MODEL): 1})
    pool = _pool()
    pool.place(VIDEO)
    with pytest.raises(ServiceError) as info:
        pool.place(VIDEO)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the Triton replica is full: 1 video sessions opened through this orchestrator, room for 1" in info.value.message
    # A kind no replica serves is not "full": it is missing.
    with pytest.raises(ServiceError) as info:
        pool.place(IMAGE)
    assert info.value.code == grpc.StatusCode.UNIMPLEMENTED


def test_kinds_and_calls_are_counted_apart(monkeypatch, capacities):
    FakeDns(monkeypatch, A, B)
    capacities.update({(A, SESSION_MODEL): 1, (B, SESSION_MODEL): 1, (A, TRACKER_MODEL): 2, (B, TRACKER_MODEL): 2})
    pool = _pool()
    a, b = pool.known(_url(A)), pool.known(_url(B))
    with pool.call() as first, pool.call() as second, pool.call() as third:
        # Calls go to the fewest in flight: one each, then the third to either.
        assert {first.url, second.url} == {a.url, b.url} and third in (a, b)
        assert a.calls + b.calls == 3
        # In-flight calls take no session room, of either kind.
        assert sorted(_place_all(pool, IMAGE)) == [A, B]
        assert sorted(_place_all(pool, VIDEO)) == [A, A, B, B]
    assert (a.calls, b.calls) == (0, 0)
    assert a.held == {IMAGE: 1, VIDEO: 2} and a.sessions == 3
    # Image sessions full everywhere; releasing a video session frees video room only.
    pool.release(a, VIDEO)
    assert pool.place(VIDEO) is a
    with pytest.raises(ServiceError):
        pool.place(IMAGE)
    # A stateless call prefers the replica with fewer calls in flight whatever sessions it holds.
    pool.release(a, IMAGE)
    pool.release(a, VIDEO)
    with pool.call() as busy:
        with pool.call() as other:
            assert other is not busy


def test_a_replica_that_leaves_dns_is_dropped_and_its_sessions_are_not_found(monkeypatch, capacities, closed):
    dns = FakeDns(monkeypatch, A, B)
    capacities.update({(A, SESSION_MODEL): 4, (B, SESSION_MODEL): 4, (A, TRACKER_MODEL): 4, (B, TRACKER_MODEL): 4})
    pool = _pool()
    a = pool.known(_url(A))
    signer = IdSigner(b"k" * 32)
    images = ImageSessions(pool, max_sessions=8, cache_size=2, ttl_s=600, signer=signer)
    videos = VideoSessions(pool, signer, lambda: 600.0)
    # An image session and a video session opened on A (registered as a successful open would).
    assert pool.place(IMAGE) is a
    image_id = signer.sign(SessionRef("image", a.url, 7, 10, 20))
    images._sessions[image_id] = ImageSession(image_id, 7, a, 10, 20, implicit=False, generation=a.generation)
    opened = [videos.open(), videos.open()]  # the first to B, which holds fewer sessions in all
    assert [v.replica.url for v in opened] == [_url(B), _url(A)]
    video = opened[1]
    video.num_frames = 3
    # An id of A's that this orchestrator never held (would be adopted while A is known).
    foreign = signer.sign(SessionRef("video", a.url, 99, 0, 0))
    assert images._explicit_count() == 1 and len(videos.listed()) == 1  # the one on B has no frames yet

    dns.addresses = [B]
    pool.refresh(force=True)
    assert [r.url for r in pool.replicas()] == [_url(B)]
    assert a.gone and closed == [a.url]
    for call in (lambda: images.lease(image_id).__enter__(), lambda: videos.get(video.session_id),
                 lambda: videos.get(foreign), lambda: videos.end(foreign)):
        with pytest.raises(ServiceError) as info:
            call()
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert "its Triton replica is gone" in info.value.message, info.value.message
    assert videos.listed() == [] and images._explicit_count() == 0
    # A straggling call on the dropped replica's client never reaches the network.
    with pytest.raises(ServiceError) as info:
        a.infer(SESSION_MODEL, [], ["IMAGE_SIZE"], "image_id", sequence_id=7)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ServiceError) as info:
        a.infer("segment", [], ["X"], "image")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    # New sessions go to the replicas left.
    assert pool.place(IMAGE).url == _url(B) and videos.open().replica.url == _url(B)


def test_dns_failures(monkeypatch, capacities, closed):
    dns = FakeDns(monkeypatch, A, B)
    pool = _pool()
    dns.error = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    pool.refresh(force=True)
    assert len(pool.replicas()) == 2 and closed == []  # DNS could not say: keep what is known
    dns.error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    pool.refresh(force=True)
    assert pool.replicas() == [] and sorted(closed) == [_url(A), _url(B)]  # no replica left
    with pytest.raises(ServiceError) as info:
        pool.place(IMAGE)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_dns_is_resolved_without_the_lock_by_one_thread(monkeypatch, capacities):
    """A slow lookup holds up neither placement on the replicas known nor other threads; the
    threads that want a refresh while one is under way do not resolve again."""
    dns = FakeDns(monkeypatch, A)
    capacities.update({(A, SESSION_MODEL): 8, (B, SESSION_MODEL): 8})
    pool = _pool()
    assert dns.calls == 1
    entered, release = threading.Event(), threading.Event()
    lock_held = []

    def slow():
        lock_held.append(pool._lock.locked())
        entered.set()
        assert release.wait(10)

    dns.hook, dns.addresses = slow, [A, B]
    pool._resolved_at = 0.0  # a refresh is due
    resolver = threading.Thread(target=pool.place, args=(IMAGE,))
    resolver.start()
    assert entered.wait(10)
    # While DNS is being asked: other threads place on the known replica at once, without resolving.
    started = time.monotonic()
    placed = []
    others = [threading.Thread(target=lambda: placed.append(pool.place(IMAGE).url)) for _ in range(3)]
    for t in others:
        t.start()
    for t in others:
        t.join(5)
    assert placed == [_url(A)] * 3 and time.monotonic() - started < 2.0
    with pool.call() as replica:
        assert replica.url == _url(A)
    release.set()
    resolver.join(10)
    assert dns.calls == 2 and lock_held == [False]
    assert [r.url for r in pool.replicas()] == [_url(A), _url(B)]


def test_callers_with_no_replica_wait_for_the_lookup_under_way(monkeypatch, capacities):
    dns = FakeDns(monkeypatch)
    capacities.update({(A, SESSION_MODEL): 8})
    pool = _pool()
    assert pool.replicas() == []
    entered, release = threading.Event(), threading.Event()
    dns.hook = lambda: (entered.set(), release.wait(10))
    dns.addresses = [A]
    pool._resolved_at = 0.0
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(pool.place(IMAGE).url)) for _ in range(4)]
    threads[0].start()
    assert entered.wait(10)
    for t in threads[1:]:
        t.start()
    time.sleep(0.2)
    assert results == []  # waiting for the answer, not failing with "no replica"
    release.set()
    for t in threads:
        t.join(10)
    assert results == [_url(A)] * 4 and dns.calls == 2


def test_a_replica_that_does_not_answer_is_skipped_and_not_asked_again_at_once(monkeypatch, capacities):
    FakeDns(monkeypatch, A, B)
    capacities.update({(A, SESSION_MODEL): None, (B, SESSION_MODEL): 2})
    pool = _pool()
    assert _place_all(pool, IMAGE) == [B, B]
    assert capacities.read.count((A, SESSION_MODEL)) == 1 and capacities.read.count((B, SESSION_MODEL)) == 1
    # Every replica that answers is full: still "full", not "unavailable".
    with pytest.raises(ServiceError) as info:
        pool.place(IMAGE)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "room for 2 (1 more did not answer)" in info.value.message
    monkeypatch.setattr("segserve.orchestrator.triton_pool.CONFIG_RETRY_S", 0.0)
    capacities[(A, SESSION_MODEL)] = 1
    assert pool.place(IMAGE).url == _url(A)
    assert capacities.read.count((A, SESSION_MODEL)) == 2
