"""Image sessions: image_id -> (Triton replica, sequence id), plus the embedding cache.

Explicit sessions come from OpenImage and live until CloseImage or the idle TTL. Images sent as
bytes open implicit sessions keyed by the bytes' sha256; those form an LRU cache of embeddings, so
repeated prompts on the same picture skip the encoder.

An image_id is signed (`ids.py`): it names its replica, sequence id and size, so any orchestrator
replica sharing the key can serve a session another one opened, and nothing in it is used before
the signature verifies. A session another replica opened is *adopted* only once Triton has answered
for it, and never counts against this replica's cap (its opener counted it). A session whose
Triton replica left DNS answers NOT_FOUND ("its Triton replica is gone").

Requests hold a lease on the session they use (`lease`, `cached`): eviction from the cache, the
TTL and CloseImage never END a sequence while a lease is held; the END waits for the last one.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import grpc
import numpy as np

from .errors import ServiceError, exhausted, not_found
from .ids import IdSigner, SessionRef, quote
from .metrics import EMBEDDING_CACHE, OPEN_SESSIONS, STAGE_LATENCY
from .rpc import NO_SCOPE, CallScope
from .triton_pool import IMAGE, SESSION_MODEL, Replica, TritonPool

log = logging.getLogger("segserve.orchestrator.sessions")
RESTARTED = "the Triton server holding it restarted, and its sessions were lost: open the image again"
REPLICA_GONE = "its Triton replica is gone (it left the Service), and its sessions with it: open the image again"


@dataclass(eq=False)
class ImageSession:
    image_id: str
    sequence_id: int
    replica: Replica
    height: int
    width: int
    implicit: bool
    generation: int
    adopted: bool = False  # opened through another orchestrator replica
    last_used: float = field(default_factory=time.monotonic)
    leases: int = 0
    retired: bool = False  # no longer reachable by id; ENDed when the last lease goes
    idle_here: bool = False  # retired for idleness on this orchestrator: ENDed only if Triton agrees

    def infer(self, inputs: list, outputs: list[str], scope: CallScope = NO_SCOPE):
        """A request on this session's sequence (never START). Triton's answer must be for an image
        of this session's size; a sequence Triton no longer holds is NOT_FOUND."""
        try:
            result = self.replica.infer(SESSION_MODEL, inputs, ["IMAGE_SIZE", *outputs], "image_id", scope,
                                        self.sequence_id)
        except ServiceError as exc:
            # The session model never refuses a request the orchestrator validated; Triton's sequence
            # batcher refuses one for a sequence it dropped (idle, or lost in a restart).
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise not_found("image_id", "is no longer held by Triton (closed, expired, or lost when Triton restarted)") from exc
            raise
        size = tuple(int(v) for v in result.as_numpy("IMAGE_SIZE").reshape(-1))
        if size != (self.height, self.width):
            raise not_found("image_id", "does not match the session Triton holds under it")
        return result


class ImageSessions:
    def __init__(self, pool: TritonPool, max_sessions: int, cache_size: int, ttl_s: float,
                 signer: IdSigner | None = None):
        self.pool = pool
        self.max_sessions = max_sessions
        self.cache_size = cache_size
        self.ttl_s = ttl_s
        self.signer = signer or IdSigner(secrets.token_bytes(32))
        self._lock = threading.Lock()
        self._sessions: dict[str, ImageSession] = {}
        self._cache: OrderedDict[str, str] = OrderedDict()  # image sha256 -> image_id (implicit)
        self._opening: dict[str, threading.Event] = {}
        self._pending_opens = 0
        self._to_end: list[ImageSession] = []  # retired under the lock, ENDed after it
        self._closed: OrderedDict[str, None] = OrderedDict()  # recently closed ids: NOT_FOUND, not adopted

    # ---- bookkeeping (callers hold self._lock) -------------------------------------------------
    def _explicit_count(self) -> int:
        return sum(not s.implicit and not s.adopted and not s.replica.gone for s in self._sessions.values())

    def _gauge(self) -> None:
        OPEN_SESSIONS.labels(kind="image").set(self._explicit_count())

    def _retire_locked(self, session: ImageSession) -> ImageSession | None:
        """Unreachable from now on; returns the session if its END may be sent now (no lease)."""
        if self._sessions.get(session.image_id) is session:
            del self._sessions[session.image_id]
            if not session.adopted:
                self.pool.release(session.replica, IMAGE)
        session.retired = True
        self._gauge()
        return session if session.leases == 0 else None

    def _expire_locked(self) -> list[ImageSession]:
        now = time.monotonic()
        stale = [s for s in self._sessions.values() if s.leases == 0 and now - s.last_used > self.ttl_s]
        for session in stale:
            session.idle_here = not session.implicit  # an explicit id may be in use through another replica
        return [s for s in stale if self._retire_locked(s)]

    def _end(self, sessions) -> None:
        for session in sessions:
            if session.adopted or session.generation != session.replica.generation or session.replica.gone:
                continue  # its opener ends it, or it died with its Triton
            try:
                if session.idle_here and self._held_by_triton(session):
                    continue  # used through another orchestrator within the TTL: not idle, not ours to end
                session.replica.close_session(session.sequence_id)
            except ServiceError as exc:  # the replica frees it at its TTL anyway
                log.warning("ending image session on %s failed (%s): %s", session.replica.url, exc.code.name,
                            exc.message)

    @staticmethod
    def _held_by_triton(session: ImageSession) -> bool:
        """Whether the session model still holds a session this orchestrator has not used for its TTL.
        The model evicts idle sessions before it answers and sees every orchestrator's requests, so
        a session it still holds was used elsewhere within the TTL (this request keeps it one TTL
        more at most)."""
        try:
            session.replica.infer(SESSION_MODEL, [], ["IMAGE_SIZE"], "image_id", sequence_id=session.sequence_id)
        except ServiceError as exc:
            if exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return False
            raise
        return True

    # ---- opening -------------------------------------------------------------------------------
    def _open(self, image: np.ndarray, implicit: bool, scope: CallScope) -> ImageSession:
        refused: tuple[Replica, ...] = ()
        last_refusal: ServiceError | None = None
        while True:
            try:
                replica = self.pool.place(IMAGE, exclude=refused)
            except ServiceError:
                if last_refusal is not None:
                    raise last_refusal from None  # no other replica: the model's own refusal says why
                raise
            sequence_id = secrets.randbelow(2**63 - 1) + 1
            generation = replica.generation
            start = time.perf_counter()
            try:
                height, width = replica.open_session(sequence_id, image, scope)
                STAGE_LATENCY.labels(stage="encode").observe(time.perf_counter() - start)
                break
            except BaseException as exc:
                self.pool.release(replica, IMAGE)
                # Triton keeps a sequence slot after a failed START until its idle timeout: free it now.
                with contextlib.suppress(ServiceError):
                    replica.close_session(sequence_id)
                # Full by the model's own count (other orchestrators' sessions): try another replica.
                if isinstance(exc, ServiceError) and exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused, last_refusal = refused + (replica,), exc
                    continue
                raise
        # The size signed into the id is the one Triton reports for the sequence.
        image_id = self.signer.sign(SessionRef("image", replica.url, sequence_id, height, width))
        return ImageSession(image_id, sequence_id, replica, height, width, implicit, generation)

    def open(self, image: np.ndarray, scope: CallScope = NO_SCOPE) -> ImageSession:
        with self._lock:
            expired = self._expire_locked()
            explicit = self._explicit_count() + self._pending_opens
            if explicit >= self.max_sessions:
                raise exhausted("image", f"{explicit} image sessions are open, the limit is {self.max_sessions}; "
                                         "close some with CloseImage")
            self._pending_opens += 1
        self._end(expired)
        try:
            session = self._open(image, implicit=False, scope=scope)
        finally:
            with self._lock:
                self._pending_opens -= 1
        with self._lock:
            self._sessions[session.image_id] = session
            self._gauge()
        return session

    # ---- use -----------------------------------------------------------------------------------
    def _resolve_locked(self, image_id: str) -> ImageSession:
        """The session an id names; an authentic id of another replica gives an unregistered session
        that `lease` registers once Triton has answered for it."""
        session = self._sessions.get(image_id)
        if session is None:
            ref = self.signer.verify(image_id, "image")
            if ref is None:
                raise not_found("image_id", f"{quote(image_id)} is not an image id issued by this service")
            replica = self.pool.known(ref.replica_url)
            if image_id in self._closed:
                raise not_found("image_id", f"{quote(image_id)} is not open (closed)")
            if replica is None:
                raise not_found("image_id", f"{quote(image_id)}: {REPLICA_GONE}")
            session = ImageSession(image_id, ref.sequence_id, replica, ref.height, ref.width, implicit=False,
                                   generation=replica.generation, adopted=True)
        elif session.replica.gone:
            self._retire_locked(session)
            raise not_found("image_id", f"{quote(image_id)}: {REPLICA_GONE}")
        elif session.generation != session.replica.generation:
            self._retire_locked(session)
            raise not_found("image_id", f"{quote(image_id)}: {RESTARTED}")
        elif time.monotonic() - session.last_used > self.ttl_s and session.leases == 0:
            # Idle here, but perhaps used through other orchestrators since: the model, whose TTL sees
            # every use, decides. The request goes on as for an adopted id (NOT_FOUND if it expired).
            self._retire_locked(session)
            session = ImageSession(image_id, session.sequence_id, session.replica, session.height, session.width,
                                   implicit=False, generation=session.generation, adopted=True)
        return session

    @contextlib.contextmanager
    def lease(self, image_id: str):
        """The session of an image_id, held for the duration of the block. A NOT_FOUND from Triton
        inside the block forgets the session (Triton no longer holds it)."""
        try:
            with self._lock:
                session = self._resolve_locked(image_id)
                session.leases += 1
                session.last_used = time.monotonic()
        finally:
            self._end_dropped()
        try:
            yield session
        except ServiceError as exc:
            self._forget_if_gone(session, exc)
            raise
        else:
            with self._lock:
                if session.adopted and not session.retired and image_id not in self._sessions:
                    self._sessions[image_id] = session  # Triton answered for it: adopted
        finally:
            self._release(session)

    def _end_dropped(self) -> None:
        with self._lock:
            sessions, self._to_end = self._to_end, []
        self._end(sessions)

    def _forget_if_gone(self, session: ImageSession, exc: ServiceError) -> None:
        """A NOT_FOUND from Triton: it no longer holds the sequence, so neither do we."""
        if exc.code == grpc.StatusCode.NOT_FOUND:
            with self._lock:
                self._retire_locked(session)

    def _release(self, session: ImageSession) -> None:
        with self._lock:
            session.leases -= 1
            session.last_used = time.monotonic()
            end_now = session.retired and session.leases == 0
        if end_now:
            self._end([session])

    @contextlib.contextmanager
    def cached(self, data: bytes, decode, scope: CallScope = NO_SCOPE):
        """(session, hit) of the implicit session for these image bytes, leased for the block;
        `decode()` runs only on a miss."""
        key = hashlib.sha256(data).hexdigest()
        while True:
            with self._lock:
                expired = self._expire_locked()
                image_id = self._cache.get(key)
                session = self._sessions.get(image_id) if image_id else None
                if session is not None and (session.generation != session.replica.generation or session.replica.gone):
                    self._retire_locked(session)  # lost with its Triton: encode again
                    session = None
                if session is not None:
                    self._cache.move_to_end(key)
                    session.leases += 1
                    session.last_used = time.monotonic()
                    hit = True
                    break
                pending = self._opening.get(key)
                if pending is None:
                    self._opening[key] = threading.Event()
                    hit = False
                    break
            self._end(expired)
            pending.wait()  # another request is encoding the same image
            scope.check()
        self._end(expired)
        if hit:
            EMBEDDING_CACHE.labels(result="hit").inc()
        else:
            EMBEDDING_CACHE.labels(result="miss").inc()
            try:
                session = self._open(decode(), implicit=True, scope=scope)
                with self._lock:
                    session.leases += 1
                    self._sessions[session.image_id] = session
                    self._cache[key] = session.image_id
                    evicted = []
                    for old_key in list(self._cache):
                        if len(self._cache) <= self.cache_size:
                            break
                        old = self._sessions.get(self._cache[old_key])
                        if old is not None and old.leases > 0:
                            continue  # in use: evicted later, once released
                        del self._cache[old_key]
                        if old is not None and self._retire_locked(old):
                            evicted.append(old)
                self._end(evicted)
            finally:
                with self._lock:
                    self._opening.pop(key).set()
        try:
            yield session, hit
        except ServiceError as exc:
            self._forget_if_gone(session, exc)
            raise
        finally:
            self._release(session)

    def close(self, image_id: str) -> None:
        try:
            with self._lock:
                session = self._resolve_locked(image_id)
        finally:
            self._end_dropped()
        with self._lock:
            if session.implicit:
                raise not_found("image_id", f"{quote(image_id)} is not open (never opened, closed or expired)")
            self._closed[image_id] = None
            while len(self._closed) > 4096:
                self._closed.popitem(last=False)
            if session.adopted:
                self._retire_locked(session)
                end_now = None
            else:
                end_now = self._retire_locked(session)
        if session.adopted:
            session.replica.close_session(session.sequence_id, missing_ok=False)  # NOT_FOUND if not live
        elif end_now:
            self._end([end_now])

    def held(self) -> int:
        """Sessions this orchestrator tracks (opened here, cached or adopted)."""
        with self._lock:
            return len(self._sessions)

    def close_all(self) -> None:
        """At shutdown: END the cache's sessions (nobody else knows them). Explicit sessions are left
        to the model's TTL: other orchestrator replicas serve them (a rolling update keeps them)."""
        with self._lock:
            sessions = [s for s in list(self._sessions.values()) if self._retire_locked(s)]
        left = [s for s in sessions if not s.implicit and not s.adopted]
        if left:
            log.info("leaving %d image sessions open in Triton for other orchestrator replicas (ended at their TTL)",
                     len(left))
        self._end([s for s in sessions if s.implicit])
