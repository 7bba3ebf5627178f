"""Orchestrator limits and addresses; each can be set by a SEGSERVE_* environment variable."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass
class Settings:
    # Address the gRPC and metrics ports bind: loopback unless told otherwise (0.0.0.0 in a pod).
    host: str = "127.0.0.1"
    triton_url: str = "127.0.0.1:8001"
    # host:port of a headless Service: every address it resolves to is one Triton replica.
    triton_headless: str = ""
    grpc_port: int = 50051
    metrics_port: int = 9464
    workers: int = 16
    max_image_bytes: int = 64 << 20
    max_image_pixels: int = 64_000_000
    max_points: int = 64
    max_boxes: int = 32
    max_automask_points: int = 16384  # GenerateMasks: grid points over all crops, per request
    # Explicit OpenImage sessions and cached implicit ones, per orchestrator: together within the
    # session model's default cap (64, `segserve build-repo`), so the stated limit is the real one.
    max_image_sessions: int = 48
    embedding_cache_size: int = 16  # implicit sessions for images sent as bytes
    session_ttl_s: float = 600.0  # replaced by the TTL in Triton's session-model config once read
    triton_timeout_s: float = 120.0
    # Key that signs session ids (shared by every orchestrator replica; from a Kubernetes Secret),
    # given inline or as a file; the previous key is still accepted during a rotation.
    id_key: str = ""
    id_key_file: str = ""
    id_key_previous: str = ""
    id_key_previous_file: str = ""

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"SEGSERVE_{f.name.upper()}")
            if raw is not None:
                values[f.name] = type(f.default)(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
