"""Orchestrator limits and addresses; each can be set by a SEGSERVE_* environment variable."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass
class Settings:
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
    max_image_sessions: int = 64  # explicit OpenImage sessions, per orchestrator
    embedding_cache_size: int = 16  # implicit sessions for images sent as bytes
    session_ttl_s: float = 600.0  # replaced by the TTL in Triton's session-model config once read
    triton_timeout_s: float = 120.0

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"SEGSERVE_{f.name.upper()}")
            if raw is not None:
                values[f.name] = type(f.default)(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
