"""SAM 2 video tracking benchmark: segserve (orchestrator + embedded Triton tracker) vs
transformers' eager `Sam2VideoModel` propagation, one run on this machine.

Random weights with sam2.1-hiera-tiny video shapes at 512x512 (`--size hiera-tiny` for 1024x1024).
A synthetic clip of moving shapes; one object clicked on frame 0, then propagation to the end.
Prints JSON (and writes it to --out):
- eager: `propagate_in_video_iterator` frames/s (frame encoding included, as segserve does it);
- segserve, one session: Propagate frames/s (frames uploaded beforehand; masks back as RLE);
- segserve, N concurrent sessions: aggregate frames/s over all sessions, and per session;
- ratio = segserve / eager frames/s; parity of the masks (IoU vs eager, worst frame).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=("hiera-tiny-512", "hiera-tiny"), default="hiera-tiny-512")
    parser.add_argument("--artifacts", type=Path)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for PyTorch and for ONNX Runtime in the tracker")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from transformers import Sam2VideoModel

    from segserve.client import SegservClient
    from segserve.common.synthetic_video import moving_shapes
    from segserve.export.sam2_video import export_sam2_video
    from segserve.orchestrator.settings import Settings
    from segserve.repository.builder import build_repository
    from segserve.runtime.stack import start_stack
    from tests.sam2_video_reference import compare, run_reference

    torch.set_num_threads(args.threads)
    artifacts = args.artifacts or ROOT / "build" / "bench" / f"sam2_video_{args.size}"
    records = export_sam2_video(None, artifacts, random_size=args.size)
    config = records["sam2_video_decoder"].model_config
    size = int(config["image_size"])
    frames, centres = moving_shapes(args.frames, size, size)
    script = [("prompt", 0, {1: ([centres[1][0]], [1])}), ("propagate", None, False)]

    model = Sam2VideoModel.from_pretrained(artifacts / "checkpoints" / f"sam2-video-random-{args.size}").eval()
    start = time.perf_counter()
    reference = run_reference(model, frames, script)
    eager_s = time.perf_counter() - start
    del model

    repository = artifacts.parent / f"repository_video_{args.size}"
    build_repository(artifacts, repository, "embedded", session_ttl_s=600, max_sessions=max(8, args.sessions),
                     options={"video_intra_op_threads": args.threads})

    def one_session(address):
        with SegservClient(address) as client:
            video = client.video
            info = video.start_session(list(frames), batch_size=2)
            t0 = time.perf_counter()
            first = video.add_prompts(info.session_id, 0, {1: {"points": [(*centres[1][0], 1)]}})
            out = [(first.frame_index, first.masks)]
            out += [(f.frame_index, f.masks) for f in video.propagate(info.session_id)]
            elapsed = time.perf_counter() - t0
            video.end_session(info.session_id)
            return out, elapsed

    with start_stack(repository, artifacts.parent / "triton_video_workspace", Settings()) as stack:
        one_session(stack.address)  # warm-up (ORT sessions, first-run allocations)
        single, single_s = one_session(stack.address)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.sessions) as pool:
            runs = list(pool.map(lambda _: one_session(stack.address), range(args.sessions)))
        concurrent_s = time.perf_counter() - start

    worst, _ = compare(single, reference)
    worst_concurrent = min(compare(r, single)[0] for r, _ in runs)
    tracked = args.frames  # frames computed: the prompted one, then the propagation (frame 0 reused)
    eager_fps = tracked / eager_s
    single_fps = tracked / single_s
    result = {
        "benchmark": "sam2_video",
        "config": args.size, "image_size": size, "random_weights": True,
        "frames": args.frames, "objects": 1, "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "eager_transformers": {"frames_per_s": round(eager_fps, 3), "seconds": round(eager_s, 2)},
        "note": "frames/s over the prompted frame + propagation, frame encoding included; frames uploaded first",
        "segserve_single_session": {"frames_per_s": round(single_fps, 3), "seconds": round(single_s, 2)},
        "segserve_concurrent": {"sessions": args.sessions,
                                "aggregate_frames_per_s": round(args.sessions * tracked / concurrent_s, 3),
                                "per_session_frames_per_s": round(tracked / concurrent_s, 3),
                                "seconds": round(concurrent_s, 2)},
        "ratio_single_vs_eager": round(single_fps / eager_fps, 3),
        "ratio_concurrent_aggregate_vs_eager": round(args.sessions * tracked / concurrent_s / eager_fps, 3),
        "parity": {"worst_iou_vs_eager": round(worst, 5), "worst_iou_concurrent_vs_single": round(worst_concurrent, 5)},
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = args.out or ROOT / "out" / "bench_video.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
