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


def export_families(names: list[str], out: Path, checkpoints: dict[str, str | Path | None] | None = None,
                    expect_sha256: dict[str, str] | None = None, size: str = "tiny", force: bool = False,
                    allow_unpinned: bool = False) -> dict:
    """Export the named families; a family's checkpoint comes from `checkpoints` or its env var: a
    local path, or `hf://ORG/NAME@COMMIT` (export.hub: downloaded or found in the Hugging Face cache,
    verified, then exported as a local directory would be; a branch or tag needs `allow_unpinned`)."""
    from .hub import is_hub_uri, resolve
    from .manifest import Manifest, checkpoint_digest

    checkpoints, expect_sha256 = checkpoints or {}, expect_sha256 or {}
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown model families {unknown}; known: {sorted(FAMILIES)}")
    records = {}
    for name in names:
        family = FAMILIES[name]
        given, what = checkpoints.get(name), "--checkpoint"
        if not given and os.environ.get(family.env):
            given, what = os.environ[family.env], family.env
        hub = None
        if is_hub_uri(str(given or "")):
            hub = resolve(str(given), name, Path(out) / "checkpoints" / "hub", allow_unpinned, what=what)
            checkpoint = hub.path
        else:
            checkpoint = Path(given) if given else None
        records[name] = family.exporter(checkpoint, Path(out), expect_sha256.get(name),
                                        family.random_sizes[size], force)
        source = None
        if hub is not None:  # the manifest says which commit and files this family was exported from
            source = {**hub.provenance(), "checkpoint_sha256": checkpoint_digest(hub.files)}
        Manifest(Path(out)).set_checkpoint_source(name, source)
    return records
