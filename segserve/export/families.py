"""Every exportable model family behind one call, for `segserve export`, the demo and the chart's
init container. Random-weight sizes are named the same for all: `tiny` (tests, demo) and `real`
(the published shapes, for benchmarks)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Family:
    name: str
    exporter: Callable[..., object]
    random_sizes: dict[str, str]  # tiny|real -> the family's own config name
    env: str  # environment variable naming a local checkpoint


def _sam2(checkpoint, out, expect_sha256, random_size, force):
    from .sam2 import export_sam2

    return export_sam2(checkpoint, out, expect_sha256, random_size=random_size, force=force)


def _mask2former(checkpoint, out, expect_sha256, random_size, force):
    from .mask2former import export_mask2former

    return export_mask2former(checkpoint, out, expect_sha256=expect_sha256, force=force, random_size=random_size)


def _grounding_dino(checkpoint, out, expect_sha256, random_size, force):
    from .grounding_dino import export_grounding_dino

    return export_grounding_dino(checkpoint, out, expect_sha256=expect_sha256, force=force, random_size=random_size)


def _sam2_video(checkpoint, out, expect_sha256, random_size, force):
    from .sam2_video import export_sam2_video

    return export_sam2_video(checkpoint, out, expect_sha256, random_size=random_size, force=force)


FAMILIES: dict[str, Family] = {
    "sam2": Family("sam2", _sam2, {"tiny": "tiny", "real": "hiera-tiny"}, "SEGSERVE_SAM2_CHECKPOINT"),
    "sam2_video": Family("sam2_video", _sam2_video, {"tiny": "tiny", "real": "hiera-tiny"},
                         "SEGSERVE_SAM2_VIDEO_CHECKPOINT"),
    "mask2former": Family("mask2former", _mask2former, {"tiny": "tiny", "real": "swin-tiny"},
                          "SEGSERVE_MASK2FORMER_CHECKPOINT"),
    "grounding_dino": Family("grounding_dino", _grounding_dino, {"tiny": "tiny", "real": "swin-tiny"},
                             "SEGSERVE_GROUNDING_DINO_CHECKPOINT"),
}


def export_families(names: list[str], out: Path, checkpoints: dict[str, Path | None] | None = None,
                    expect_sha256: dict[str, str] | None = None, size: str = "tiny", force: bool = False) -> dict:
    """Export the named families; a family's checkpoint comes from `checkpoints` or its env var."""
    checkpoints, expect_sha256 = checkpoints or {}, expect_sha256 or {}
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown model families {unknown}; known: {sorted(FAMILIES)}")
    records = {}
    for name in names:
        family = FAMILIES[name]
        checkpoint = checkpoints.get(name) or (Path(os.environ[family.env]) if os.environ.get(family.env) else None)
        records[name] = family.exporter(checkpoint, Path(out), expect_sha256.get(name),
                                        family.random_sizes[size], force)
    return records
