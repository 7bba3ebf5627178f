"""Video sessions: session_id -> (Triton replica, sequence id), as `sessions.py` does for images.

A session is a Triton sequence of the tracker on one replica (random 63-bit sequence id), placed on
the least-filled replica with room (`TritonPool.place`). Its id is signed (`ids.py`) and names the
replica and sequence, so any orchestrator sharing the key serves it: an authentic id this process
does not hold is *adopted* once Triton has answered INFO for it (never START), and never counts
against a replica's room here (its opener counted it). Ids ended here are remembered (NOT_FOUND,
not adopted again). EndSession through any orchestrator ENDs the sequence; the others find it gone
at their next call (NOT_FOUND) and forget it.

Requests of one session are serialised by a per-session lock of this process; Triton's sequence
batcher serialises them across orchestrators. Sessions idle *here* past the tracker's TTL are
forgotten and, if opened here and the tracker no longer holds them either, ENDed (Triton keeps a
sequence's slot until END or its own idle limit); one used through another orchestrator lives on.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ServiceError, invalid, not_found
from .ids import IdSigner, SessionRef, quote
from .metrics import OPEN_SESSIONS
from .rpc import NO_SCOPE, CallScope
from .tracker_client import SessionGone, Tracker
from .triton_pool import VIDEO, Replica, TritonPool

log = logging.getLogger("segserve.orchestrator.video")
REMEMBERED = 4096  # ended ids kept to answer NOT_FOUND rather than adopt them again
RESTARTED = "the Triton server holding it restarted, and its sessions were lost: start the session again"
REPLICA_GONE = "its Triton replica is gone (it left the Service), and its sessions with it: start the session again"


@dataclass(eq=False)
class VideoSession:
    session_id: str
    sequence_id: int
    replica: Replica
    generation: int  # of its replica when opened: a restarted Triton lost the session
    height: int = 0
    width: int = 0
    num_frames: int = 0
    object_ids: list[int] = field(default_factory=list)
    adopted: bool = False  # opened through another orchestrator
    idle_here: bool = False  # dropped for idleness on this orchestrator: ENDed only if Triton agrees
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def lost(self) -> bool:
        return self.replica.gone or self.generation != self.replica.generation


class VideoSessions:
    def __init__(self, pool: TritonPool, signer: IdSigner, ttl_s: Callable[[], float]):
        self.pool = pool
        self.signer = signer
        self._ttl_s = ttl_s  # the tracker's TTL (read from its config, so it may need Triton)
        self._lock = threading.Lock()
        self._sessions: dict[str, VideoSession] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._to_end: list[VideoSession] = []  # dropped under the lock, ENDed after it

    # ---- bookkeeping (callers hold self._lock) -------------------------------------------------
    def _gauge(self) -> None:
        OPEN_SESSIONS.labels(kind="video").set(sum(not s.adopted for s in self._sessions.values()))

    def _drop_locked(self, session: VideoSession, remember: bool = True) -> None:
        if self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]
            if not session.adopted:
                self.pool.release(session.replica, VIDEO)
        if remember:
            self._ended[session.session_id] = None
            while len(self._ended) > REMEMBERED:
                self._ended.popitem(last=False)
        self._gauge()

    def _expire_locked(self, ttl_s: float) -> None:
        now = time.monotonic()
        for session in [s for s in self._sessions.values() if now - s.last_used > ttl_s]:
            # Idle here, but perhaps used through other orchestrators since: forgotten (adoptable
            # again), and ENDed only if the tracker, whose TTL sees every use, no longer holds it.
            self._drop_locked(session, remember=False)
            if not session.adopted:
                session.idle_here = True
                self._to_end.append(session)

    def _end_dropped(self) -> None:
        with self._lock:
            sessions, self._to_end = self._to_end, []
        for session in sessions:
            if session.lost or (session.idle_here and self._held_by_triton(session)):
                continue
            Tracker(session.replica).end(session)

    @staticmethod
    def _held_by_triton(session: VideoSession) -> bool:
        """The tracker evicts idle sessions before it answers: one it still holds was used within its
        TTL through another orchestrator (this INFO keeps it one TTL more at most)."""
        try:
            Tracker(session.replica).info(session)
        except SessionGone:
            return False
        except ServiceError as exc:
            log.warning("checking idle video session %s failed (%s): %s", quote(session.session_id), exc.code.name,
                        exc.message)
            return True  # not ended: the tracker's own TTL frees it
        return True

    def _resolve_locked(self, session_id: str, ref: SessionRef) -> VideoSession:
        """The session an id names; an id of another orchestrator gives an unregistered, adopted
        session that `get` registers once Triton has answered for it."""
        session = self._sessions.get(session_id)
        if session is None:
            if session_id in self._ended:
                raise not_found("session_id", f"{quote(session_id)} is not open (ended or expired)")
            replica = self.pool.known(ref.replica_url)
            if replica is None:
                raise not_found("session_id", f"{quote(session_id)}: {REPLICA_GONE}")
            return VideoSession(session_id, ref.sequence_id, replica, replica.generation, adopted=True)
        if session.lost:
            self._drop_locked(session)
            raise not_found("session_id", f"{quote(session_id)}: {REPLICA_GONE if session.replica.gone else RESTARTED}")
        return session

    def _verified(self, session_id: str) -> SessionRef:
        if not session_id:
            raise invalid("session_id", "is required")
        ref = self.signer.verify(session_id, "video")
        if ref is None:
            raise not_found("session_id", f"{quote(session_id)} is not a video session id issued by this service")
        return ref

    # ---- lifecycle -----------------------------------------------------------------------------
    def open(self, exclude: tuple[Replica, ...] = ()) -> VideoSession:
        """A new session on a replica with room (none of `exclude`), reserved (registered) until
        `abandon` or END."""
        ttl_s = self._ttl_s()
        with self._lock:
            self._expire_locked(ttl_s)
        self._end_dropped()
        replica = self.pool.place(VIDEO, exclude=exclude)
        sequence_id = secrets.randbelow(2**63 - 1) + 1
        session_id = self.signer.sign(SessionRef("video", replica.url, sequence_id, 0, 0))
        session = VideoSession(session_id, sequence_id, replica, replica.generation)
        with self._lock:
            self._sessions[session_id] = session
            self._gauge()
        return session

    def abandon(self, session: VideoSession) -> None:
        """START failed: forget the session, and END it (Triton keeps a refused START's slot until
        its idle limit otherwise)."""
        with self._lock:
            self._drop_locked(session)
        Tracker(session.replica).end(session)

    def get(self, session_id: str, scope: CallScope = NO_SCOPE) -> VideoSession:
        ref = self._verified(session_id)
        ttl_s = self._ttl_s()
        try:
            with self._lock:
                self._expire_locked(ttl_s)
                session = self._resolve_locked(session_id, ref)
                if not session.adopted or self._sessions.get(session_id) is session:
                    session.last_used = time.monotonic()
                    return session
        finally:
            self._end_dropped()
        try:
            Tracker(session.replica, scope).info(session)
        except SessionGone:
            with self._lock:
                self._drop_locked(session)  # remembered: not asked again
            raise
        with self._lock:  # Triton answered for it: adopted
            if session_id in self._ended:
                raise not_found("session_id", f"{quote(session_id)} is not open (ended or expired)")
            session = self._sessions.setdefault(session_id, session)
            session.last_used = time.monotonic()
            self._gauge()
            return session

    def forget_if_gone(self, session: VideoSession, exc: ServiceError) -> None:
        """Triton no longer holds the session: neither do we (its END frees a slot Triton may still keep)."""
        if isinstance(exc, SessionGone):
            with self._lock:
                self._drop_locked(session)
                if not session.adopted:
                    self._to_end.append(session)
            self._end_dropped()

    def end(self, session_id: str) -> None:
        """EndSession: END the sequence, wherever it was opened; NOT_FOUND when Triton no longer held it."""
        ref = self._verified(session_id)
        ttl_s = self._ttl_s()
        try:
            with self._lock:
                self._expire_locked(ttl_s)
                session = self._resolve_locked(session_id, ref)
                self._drop_locked(session)
        finally:
            self._end_dropped()
        with session.lock:
            Tracker(session.replica).end(session, missing_ok=False)

    def listed(self) -> list[VideoSession]:
        """Sessions started (frames received) and still reachable, opened here or adopted."""
        ttl_s = self._ttl_s()
        with self._lock:
            self._expire_locked(ttl_s)
            sessions = [s for s in self._sessions.values() if s.num_frames and not s.lost]
        self._end_dropped()
        return sessions

    def held(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close_all(self) -> None:
        """At shutdown: forget every session without ENDing it. Other orchestrator replicas serve
        them (a rolling update keeps them); the tracker's TTL frees the ones nobody uses."""
        with self._lock:
            sessions = list(self._sessions.values())
            for session in sessions:
                self._drop_locked(session, remember=False)
        opened = sum(not s.adopted and not s.lost for s in sessions)
        if opened:
            log.info("leaving %d video sessions open in Triton for other orchestrator replicas (ended at their TTL)",
                     opened)

