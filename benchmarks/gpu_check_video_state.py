"""The video tracker with its state on a GPU (CuPy), against the same session in numpy.

The fleet's tracker keeps the memory bank in the array module of its graphs' outputs: CuPy when
Triton's GPU models answer its BLS calls. This runs that array code without Triton: the graphs in
ONNX Runtime (CPU), their outputs moved to the GPU with `cupy.asarray`, so everything the tracker
keeps is built by CuPy. It checks that the stored state is CuPy arrays and that every step's
low-res masks and scores equal the numpy run's exactly.

    python benchmarks/gpu_check_video_state.py [--artifacts DIR] [--frames 8]

`--artifacts`: exported SAM 2 video graphs (`segserve export`); without it, tiny random ones are
exported first (needs torch and transformers). Prints one JSON object; exit status 1 on a mismatch.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segserve.common.synthetic_video import moving_shapes  # noqa: E402
from segserve.triton_models.sam2_video_core import OrtGraphs, VideoSession, VideoTracker, to_host  # noqa: E402
from tests.video_tracker_run import play_script  # noqa: E402

HW = (96, 128)


def session_script(centres, hw: tuple[int, int] = HW):
    """Clicks on two objects and a box on a third on frame 0, a mask prompt for a fourth on frame 2
    (tracked before it from that future frame alone), then forward propagation from frame 0."""
    height = hw[0]
    (x1, y1), (x2, y2) = centres[1][0], centres[2][0]
    yy, xx = np.mgrid[:hw[0], :hw[1]]
    mask = (xx - 20) ** 2 + (yy - height * 0.8) ** 2 < 12 ** 2
    return [("prompt", 0, {1: ([(x1, y1)], [1]),
                           2: ([(x2, y2), (x2, y2 - 8)], [1, 1]),
                           3: ([(4.0, height * 0.55), (40.0, height * 0.7)], [2, 3])}),
            ("prompt", 2, {4: mask}),
            ("propagate", None, False)]


def run_raw(tracker: VideoTracker, frames: np.ndarray, script):
    """[(frame, object ids, low-res logits [O, L, L], scores [O])] and the session."""
    results = []
    session = play_script(tracker, frames, script, lambda r: results.append(
        (r.frame_index, r.obj_ids, r.low_res_masks, r.object_scores)))
    return results, session


def state_arrays(session: VideoSession) -> list:
    """Every array the session keeps from the graphs (memory bank and feature cache)."""
    arrays = [] if session.feature_cache is None else list(session.feature_cache[1].values())
    for obj in session.objects:
        for out in [*obj.cond.values(), *obj.non_cond.values()]:
            arrays += [a for a in (out.pred_masks, out.object_pointer, out.object_score, out.maskmem_features,
                                   out.maskmem_pos) if a is not None]
    return arrays


class CupyGraphs:
    """ONNX Runtime graphs whose outputs live on the GPU, as BLS outputs of GPU models do."""

    def __init__(self, graphs: OrtGraphs):
        import cupy

        self.cupy = cupy
        self.graphs = graphs

    def run(self, name: str, feeds: dict) -> dict:
        out = self.graphs.run(name, {k: to_host(v) for k, v in feeds.items()})
        return {k: self.cupy.asarray(v) for k, v in out.items()}


def compare_on_gpu(artifacts: Path, frames: int = 8) -> dict:
    import cupy

    from segserve.export.manifest import Manifest

    config = Manifest(artifacts).records["sam2_video_decoder"].model_config
    clip, centres = moving_shapes(frames, *HW)
    script = session_script(centres)
    graphs = OrtGraphs.from_artifacts(artifacts, threads=1)
    started = time.perf_counter()
    expected, _ = run_raw(VideoTracker(graphs, config), clip, script)
    numpy_s = time.perf_counter() - started
    started = time.perf_counter()
    got, session = run_raw(VideoTracker(CupyGraphs(graphs), config), clip, script)
    cupy_s = time.perf_counter() - started
    state = state_arrays(session)
    mismatches = [i for i, (a, b) in enumerate(zip(expected, got))
                  if a[:2] != b[:2] or not np.array_equal(a[2], b[2]) or not np.array_equal(a[3], b[3])]
    return {
        "device": cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode(),
        "cupy": cupy.__version__, "numpy": np.__version__,
        "steps": len(got), "objects": len(session.objects),
        "state_arrays": len(state), "state_on_gpu": all(isinstance(a, cupy.ndarray) for a in state),
        "state_bytes_on_gpu": int(sum({id(a): a.nbytes for a in state if isinstance(a, cupy.ndarray)}.values())),
        "memory_bytes_counted": session.memory_bytes,
        "results_on_host": all(isinstance(r[2], np.ndarray) and isinstance(r[3], np.ndarray) for r in got),
        "mismatched_steps": mismatches, "numpy_s": round(numpy_s, 3), "cupy_s": round(cupy_s, 3),
        "ok": not mismatches and len(got) == len(expected) and all(isinstance(a, cupy.ndarray) for a in state),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, help="exported SAM 2 video graphs (default: export tiny ones)")
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args(argv)
    if args.artifacts is None:
        from segserve.export.sam2_video import export_sam2_video

        args.artifacts = Path(tempfile.mkdtemp(prefix="video_artifacts_"))
        export_sam2_video(None, args.artifacts)
    report = compare_on_gpu(args.artifacts, args.frames)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
