"""The readable model repository committed in the checkout: `model_repository/embedded` and
`model_repository/fleet`, every config.pbtxt, model.py and repository.json that `segserve build-repo`
writes for the default checkpoints' shapes, and no graph, engine, tokenizer or weight file.

Rendered by `build_repository` itself (`graph_files=False`) from the recorded signatures of a
real-size export, `model_repository/default_graphs/manifest.json` (SAM 2.1 hiera-tiny at 1024²,
Grounding DINO tiny at 800² with 256 tokens, Mask2Former swin-tiny at 512²; the graph and checkpoint
hashes there are zeros). What would depend on this machine is fixed, so the result is the same
everywhere: the embedded graphs on ONNX Runtime fp32 (build-repo's `--cpu-runtime onnxruntime`),
threads for `CPU_CORES` cores, and a placeholder for the segserve runtime's sha256.

Regenerate with `make repository` (`python -m segserve.repository.readable`); `--check` (and
tests/test_readable_repository.py) fails on any difference, as the gRPC stubs test does.
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "model_repository"
RECORDED = REPOSITORY / "default_graphs"
TARGETS = ("embedded", "fleet")
CPU_CORES = 8  # a nominal node: graph threads are these cores shared by the instances running graphs
RUNTIME_DIGEST = "SEGSERVE-RUNTIME-SHA256"  # build-repo writes the sha256 of the segserve runtime here


def render(out: Path = REPOSITORY, recorded: Path = RECORDED) -> list[Path]:
    """Write `out/<target>` for both targets; returns the files written, relative to `out`."""
    from .builder import build_repository

    for target in TARGETS:
        folder = Path(out) / target
        shutil.rmtree(folder, ignore_errors=True)
        build_repository(recorded, folder, target, cpu_runtime="onnxruntime", graph_files=False,
                         options={"cpu_cores": CPU_CORES, "runtime_digest": RUNTIME_DIGEST})
        # Git keeps no empty folder, and Triton needs an ensemble's (empty) version folder 1/.
        for empty in [d for d in folder.rglob("*") if d.is_dir() and not any(d.iterdir())]:
            (empty / ".gitkeep").touch()
    return files(out)


def files(root: Path) -> list[Path]:
    """The rendered files under `root`'s target folders (a stray __pycache__ is not part of it)."""
    return sorted(p.relative_to(root) for target in TARGETS for p in (Path(root) / target).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


def differences(committed: Path = REPOSITORY, recorded: Path = RECORDED) -> list[str]:
    """What differs between the committed copy and a fresh rendering: one line per file."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = render(Path(tmp), recorded)
        have = files(committed)
        lines = [f"missing: {p}" for p in fresh if p not in have]
        lines += [f"not rendered any more: {p}" for p in have if p not in fresh]
        lines += [f"differs: {p}" for p in fresh
                  if p in have and not filecmp.cmp(Path(tmp) / p, Path(committed) / p, shallow=False)]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m segserve.repository.readable", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed copy, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        lines = differences()
        print("\n".join(lines) if lines else "model_repository/ is up to date")
        sys.exit(1 if lines else 0)
    written = render()
    print(f"{len(written)} files in {REPOSITORY}/{{{','.join(TARGETS)}}}")


if __name__ == "__main__":
    main()
