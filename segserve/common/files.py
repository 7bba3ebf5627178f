"""File hashing shared by the exporter (manifest provenance) and the Triton runtime (OpenVINO's
compiled-model cache per model content); it lives here because the runtime ships `segserve.common`
but not `segserve.export`."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
