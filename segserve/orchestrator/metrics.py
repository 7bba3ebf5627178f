"""The orchestrator's own Prometheus metrics (Triton exports its nv_inference_* series itself)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUEST_LATENCY = Histogram("segserve_request_latency_seconds", "RPC latency by method", ["method"], buckets=_BUCKETS)
STAGE_LATENCY = Histogram("segserve_stage_latency_seconds", "Latency of one stage of a request", ["stage"], buckets=_BUCKETS)
REQUESTS = Counter("segserve_requests", "RPCs by method and gRPC status code", ["method", "code"])
OPEN_SESSIONS = Gauge("segserve_open_sessions", "Sessions held by this orchestrator", ["kind"])
EMBEDDING_CACHE = Counter("segserve_embedding_cache", "Image-embedding cache lookups", ["result"])
