"""Session ids that a client cannot forge: versioned, with an HMAC-SHA256 over every field.

An id names where a session lives (the Triton replica and sequence id) and what it is (kind,
image size), so any orchestrator replica sharing the key can route it without shared state. Nothing
in an id is read before its tag verifies. Keys come from a Kubernetes Secret (files) or the
environment; the previous key is still accepted during a rotation, new ids are signed with the
current one. Without a configured key each process makes its own, which is right for one
orchestrator and wrong for several (logged).

Format: `<version>.<base64url payload>.<base64url tag>`; payload = kind|replica|sequence(hex)|height|width.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

VERSION = "s2"
MAX_ID_CHARS = 512  # real ids are ~100 characters; anything longer is refused before decoding
TAG_BYTES = 16
KINDS = ("image", "video")
log = logging.getLogger("segserve.orchestrator.ids")


@dataclass(frozen=True)
class SessionRef:
    kind: str
    replica_url: str
    sequence_id: int
    height: int
    width: int


def quote(value: str, limit: int = 24) -> str:
    """A client-supplied id for an error message: bounded, whatever the client sent."""
    shown = value if len(value) <= limit else value[:limit] + f"…({len(value)} chars)"
    return repr(shown)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _read_key(inline: str, path: str, optional_file: bool = False) -> bytes | None:
    """A key given inline or as a file (a mounted Secret). The previous key's file exists only
    during a rotation, so it may be missing; the current key's file may not."""
    if path and optional_file and not Path(path).exists():
        return None
    value = Path(path).read_text().strip() if path else inline.strip()
    return value.encode() if value else None


class IdSigner:
    def __init__(self, key: bytes, previous: bytes | None = None):
        if len(key) < 16:
            raise ValueError("the id key must be at least 16 bytes long")
        self._keys = [key] + ([previous] if previous else [])

    @classmethod
    def from_settings(cls, settings) -> "IdSigner":
        """`id_key[_file]` (current) and `id_key_previous[_file]` (accepted), i.e. SEGSERVE_ID_KEY,
        SEGSERVE_ID_KEY_FILE, SEGSERVE_ID_KEY_PREVIOUS, SEGSERVE_ID_KEY_PREVIOUS_FILE."""
        key = _read_key(settings.id_key, settings.id_key_file)
        if key is None:
            log.warning("SEGSERVE_ID_KEY is not set: session ids are signed with a key of this process only, "
                        "so other orchestrator replicas cannot serve them")
            key = secrets.token_bytes(32)
        return cls(key, _read_key(settings.id_key_previous, settings.id_key_previous_file, optional_file=True))

    def _tag(self, key: bytes, payload: bytes) -> bytes:
        return hmac.new(key, VERSION.encode() + b"." + payload, hashlib.sha256).digest()[:TAG_BYTES]

    def sign(self, ref: SessionRef) -> str:
        if ref.kind not in KINDS or "|" in ref.replica_url:
            raise ValueError(f"cannot sign {ref}")
        payload = f"{ref.kind}|{ref.replica_url}|{ref.sequence_id:x}|{ref.height}|{ref.width}".encode()
        return f"{VERSION}.{_b64(payload)}.{_b64(self._tag(self._keys[0], payload))}"

    def verify(self, token: str, kind: str) -> SessionRef | None:
        """The fields of a genuine id of this kind, else None (forged, altered, other kind, malformed)."""
        if not token or len(token) > MAX_ID_CHARS:
            return None
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != VERSION:
            return None
        try:
            payload, tag = _unb64(parts[1]), _unb64(parts[2])
        except (ValueError, TypeError):
            return None
        # One spelling per id: base64 decoding ignores padding and unused bits, which would let a
        # client mint aliases of a genuine id (each a separate registry entry) without the key.
        if _b64(payload) != parts[1] or _b64(tag) != parts[2]:
            return None
        if not any(hmac.compare_digest(tag, self._tag(key, payload)) for key in self._keys):
            return None
        # Authentic from here on: the fields were written by an orchestrator holding the key.
        got_kind, url, sequence, height, width = payload.decode().split("|")
        if got_kind != kind:
            return None
        return SessionRef(got_kind, url, int(sequence, 16), int(height), int(width))
