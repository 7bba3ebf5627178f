"""What GetModelInfo may tell a client about a checkpoint: its name and hash, never a server path."""
from __future__ import annotations

from pathlib import PurePath


def checkpoint_name(value: str | None) -> str:
    """`/srv/checkpoints/sam2.1-hiera-tiny` -> `sam2.1-hiera-tiny`; a Hub id (`facebook/x`) stays whole."""
    if not value:
        return ""
    text = str(value)
    if text.startswith("hf://") or (not text.startswith(("/", ".", "~")) and text.count("/") == 1):
        return text
    return PurePath(text).name
