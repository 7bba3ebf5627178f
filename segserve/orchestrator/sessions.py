"""Image sessions: image_id -> (Triton replica, sequence id), plus the embedding cache.

Explicit sessions come from OpenImage and live until CloseImage or the idle TTL. Images sent as
bytes to MaskFromPrompt open implicit sessions keyed by the bytes' sha256; those form an LRU cache
of embeddings, so repeated prompts on the same picture skip the encoder.

An image_id names its replica, sequence id and size, so any orchestrator replica can serve a
session another one opened (no sticky load balancing needed). The 63-bit random sequence id is
what makes an id unguessable; only replicas this orchestrator discovered itself are ever called.
"""
from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .errors import exhausted, not_found
from .metrics import EMBEDDING_CACHE, OPEN_SESSIONS
from .triton_pool import Replica, TritonPool


def encode_image_id(replica_url: str, sequence_id: int, height: int, width: int) -> str:
    raw = f"1|{replica_url}|{sequence_id:x}|{height}|{width}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_image_id(image_id: str) -> tuple[str, int, int, int] | None:
    try:
        raw = base64.urlsafe_b64decode(image_id + "=" * (-len(image_id) % 4)).decode()
        version, url, sequence, height, width = raw.split("|")
        if version != "1":
            return None
        return url, int(sequence, 16), int(height), int(width)
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass
class ImageSession:
    image_id: str
    sequence_id: int
    replica: Replica
    height: int
    width: int
    implicit: bool
    last_used: float = field(default_factory=time.monotonic)
    adopted: bool = False  # opened through another orchestrator replica


class ImageSessions:
    def __init__(self, pool: TritonPool, max_sessions: int, cache_size: int, ttl_s: float):
        self.pool = pool
        self.max_sessions = max_sessions
        self.cache_size = cache_size
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._sessions: dict[str, ImageSession] = {}
        self._cache: OrderedDict[str, str] = OrderedDict()  # image sha256 -> image_id (implicit)
        self._opening: dict[str, threading.Event] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()  # recently closed ids: NOT_FOUND, not adopted

    def _gauge(self) -> None:
        OPEN_SESSIONS.labels(kind="image").set(sum(not s.implicit for s in self._sessions.values()))

    def _open(self, image: np.ndarray, implicit: bool) -> ImageSession:
        replica = self.pool.place()
        sequence_id = secrets.randbelow(2**63 - 1) + 1
        try:
            height, width = replica.open_session(sequence_id, image)
        except BaseException:
            self.pool.release(replica)
            raise
        session = ImageSession(encode_image_id(replica.url, sequence_id, height, width), sequence_id, replica,
                               height, width, implicit)
        with self._lock:
            self._sessions[session.image_id] = session
            self._gauge()
        return session

    def open(self, image: np.ndarray) -> ImageSession:
        with self._lock:
            self._expire_locked()
            explicit = sum(not s.implicit for s in self._sessions.values())
            if explicit >= self.max_sessions:
                raise exhausted("image", f"{explicit} image sessions are open, the limit is {self.max_sessions}; "
                                         "close some with CloseImage")
        return self._open(image, implicit=False)

    def get(self, image_id: str) -> ImageSession:
        with self._lock:
            session = self._sessions.get(image_id) or self._adopt_locked(image_id)
            if session is None:
                raise not_found("image_id", f"{image_id!r} is not open (never opened, closed or expired)")
            if time.monotonic() - session.last_used > self.ttl_s:
                self._drop_locked(session)
                raise not_found("image_id", f"{image_id!r} expired after {self.ttl_s:.0f} s idle")
            session.last_used = time.monotonic()
            return session

    def cached(self, data: bytes, decode) -> tuple[ImageSession, bool]:
        """The implicit session for these image bytes; `decode()` runs only on a miss."""
        key = hashlib.sha256(data).hexdigest()
        while True:
            with self._lock:
                self._expire_locked()
                image_id = self._cache.get(key)
                if image_id is not None and image_id in self._sessions:
                    self._cache.move_to_end(key)
                    session = self._sessions[image_id]
                    session.last_used = time.monotonic()
                    EMBEDDING_CACHE.labels(result="hit").inc()
                    return session, True
                pending = self._opening.get(key)
                if pending is None:
                    self._opening[key] = threading.Event()
                    break
            pending.wait()  # another request is encoding the same image
        EMBEDDING_CACHE.labels(result="miss").inc()
        try:
            session = self._open(decode(), implicit=True)
            evicted = []
            with self._lock:
                self._cache[key] = session.image_id
                while len(self._cache) > self.cache_size:
                    _, old_id = self._cache.popitem(last=False)
                    if old := self._sessions.get(old_id):
                        self._drop_locked(old)
                        evicted.append(old)
            for old in evicted:
                self._end(old)
            return session, False
        finally:
            with self._lock:
                self._opening.pop(key).set()

    def discard(self, image_id: str) -> None:
        """Forget a session Triton no longer holds (closed elsewhere, or dropped when idle)."""
        with self._lock:
            if session := self._sessions.get(image_id):
                self._drop_locked(session)

    def _adopt_locked(self, image_id: str) -> ImageSession | None:
        """A session opened through another orchestrator replica; Triton knows whether it is live."""
        if image_id in self._closed:
            return None
        decoded = decode_image_id(image_id)
        replica = self.pool.known(decoded[0]) if decoded else None
        if replica is None:
            return None
        session = ImageSession(image_id, decoded[1], replica, decoded[2], decoded[3], implicit=False, adopted=True)
        self.pool.claim(replica)
        self._sessions[image_id] = session
        self._gauge()
        return session

    def close(self, image_id: str) -> None:
        with self._lock:
            session = self._sessions.get(image_id) or self._adopt_locked(image_id)
            if session is None or session.implicit:
                raise not_found("image_id", f"{image_id!r} is not open (never opened, closed or expired)")
            self._drop_locked(session)
            self._closed[image_id] = None
            while len(self._closed) > 4096:
                self._closed.popitem(last=False)
        if session.adopted:
            session.replica.close_session(session.sequence_id, missing_ok=False)  # NOT_FOUND if not live
        else:
            self._end(session)

    def _drop_locked(self, session: ImageSession) -> None:
        self._sessions.pop(session.image_id, None)
        self.pool.release(session.replica)
        self._gauge()

    def _expire_locked(self) -> None:
        now = time.monotonic()
        for session in [s for s in self._sessions.values() if now - s.last_used > self.ttl_s]:
            self._drop_locked(session)  # Triton dropped the sequence at the same idle time

    @staticmethod
    def _end(session: ImageSession) -> None:
        try:
            session.replica.close_session(session.sequence_id)
        except Exception:  # the replica frees it at its TTL anyway
            pass

    def close_all(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            for session in sessions:
                self._drop_locked(session)
        for session in sessions:
            self._end(session)
