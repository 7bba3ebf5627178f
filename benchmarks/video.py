"""SAM 2 video tracking benchmark: segserve (orchestrator + embedded Triton tracker) vs
transformers' `Sam2VideoModel` propagation in PyTorch fp32 eager and bf16 autocast, side by side in
one run on this machine.

Random weights with sam2.1-hiera-tiny video shapes at 512x512 (`--size hiera-tiny` for 1024x1024,
`--size tiny` for smoke runs). A synthetic clip of moving shapes; one object clicked on frame 0,
then propagation to the end. Two segserve stacks run together: the default CPU runtime choice
(`cpu_runtime="auto"`: OpenVINO bf16 where the CPU has native bf16; the JSON records what it
resolved to) and ONNX Runtime fp32. Every side starts from the same RGB frames, does the same work
with the same compute threads (--threads), is warmed up, then --rounds interleaved rounds run one
tracking run of each side per round; medians and spreads. Prints JSON (and writes it to --out):
- PyTorch: the click on frame 0 and `propagate_in_video_iterator`, frame preprocessing and encoding
  included (segserve preprocesses and encodes each frame inside its timing too), each mask upscaled
  to the frame size, thresholded and RLE-encoded as segserve answers; fp32 eager and under
  `torch.autocast("cpu", dtype=torch.bfloat16)`;
- segserve, one session: AddPrompts + Propagate frames/s (masks back as RLE). The frames are
  uploaded first (raw RGB, StartVideoSession: transport and storage only, no preprocessing); that
  upload is timed separately and reported next to it, not in the frames/s;
- segserve(auto), N concurrent sessions (after the interleaved rounds: one warm-up, then --rounds
  runs; wall time includes the uploads): aggregate frames/s over all sessions, and per session;
- agreement: per-frame mask IoU, segserve(auto) vs segserve ONNX Runtime fp32 (median / min);
  parity: worst IoU of segserve ONNX Runtime fp32, segserve(auto) and PyTorch bf16 vs PyTorch fp32.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIDES = {"auto": "segserve_auto", "onnxruntime-fp32": "segserve_ort_fp32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("hiera-tiny-512", "hiera-tiny", "tiny"), default="hiera-tiny-512")
    parser.add_argument("--artifacts", type=Path)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 5)")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="compute threads per side: PyTorch's, and the tracker's graphs'")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from benchmarks import measure

    measure.check_rounds(parser, args.rounds, "--rounds")

    from transformers import Sam2VideoModel

    from segserve.client import SegservClient
    from segserve.common.synthetic_video import moving_shapes
    from segserve.export.sam2_video import export_sam2_video
    from segserve.orchestrator.settings import Settings
    from segserve.runtime.stack import start_stack
    from tests.sam2_video_reference import run_reference

    def worst(ours, reference) -> float:  # the lowest per-frame, per-object mask IoU of two tracks
        return round(min(measure.track_ious(ours, reference)), 5)

    threads = measure.pin_threads(args.threads)
    machine = measure.machine(args.threads)
    artifacts = args.artifacts or ROOT / "build" / "bench" / f"sam2_video_{args.size}"
    records = export_sam2_video(None, artifacts, random_size=args.size)
    config = records["sam2_video_decoder"].model_config
    size = int(config["image_size"])
    frames, centres = moving_shapes(args.frames, size, size)
    script = [("prompt", 0, {1: ([centres[1][0]], [1])}), ("propagate", None, False)]
    model = Sam2VideoModel.from_pretrained(artifacts / "checkpoints" / f"sam2-video-random-{args.size}").eval()

    def eager(precision="fp32"):
        # run_reference preprocesses every frame, tracks and upscales + thresholds each mask; the RLE
        # is what segserve does before answering
        with measure.bf16_autocast() if precision == "bf16" else contextlib.nullcontext():
            track = run_reference(model, frames, script)
        rle = [measure.rle_masks(np.stack(list(masks.values()))) for _, masks in track]
        return track, sum(len(r) for r in rle), sum(len(m["counts"]) for r in rle for m in r)

    served = {choice: measure.build_served(artifacts, artifacts.parent / f"repository_video_{args.size}_{choice}", choice,
                                           session_ttl_s=600, max_sessions=max(8, args.sessions),
                                           options={"video_intra_op_threads": args.threads})
              for choice in SIDES}

    def one_session(address):
        with SegservClient(address) as client:
            video = client.video
            t0 = time.perf_counter()
            info = video.start_session(list(frames), batch_size=2)
            upload = time.perf_counter() - t0
            t0 = time.perf_counter()
            first = video.add_prompts(info.session_id, 0, {1: {"points": [(*centres[1][0], 1)]}})
            out = [(first.frame_index, first.masks)]
            answers = [first, *video.propagate(info.session_id)]
            elapsed = time.perf_counter() - t0
            out += [(f.frame_index, f.masks) for f in answers[1:]]
            video.end_session(info.session_id)
            return elapsed, (out, upload, answers)

    last: dict[str, list] = {}
    with contextlib.ExitStack() as stack:
        address = {c: stack.enter_context(start_stack(Path(served[c]["repository"]),
                                                      artifacts.parent / f"triton_video_workspace_{c}", Settings())).address
                   for c in SIDES}
        cases = {"pytorch_fp32_eager": eager, "pytorch_bf16_autocast": lambda: eager("bf16"),
                 **{SIDES[c]: (lambda c=c: one_session(address[c])) for c in SIDES}}
        uploads: dict[str, list[float]] = {name: [] for name in SIDES.values()}
        work: dict[str, dict] = {}

        def keep(name, result):
            if name in uploads:
                track, upload, answers = result
                uploads[name].append(upload)
                work[name] = {"masks": sum(len(a.masks) for a in answers),
                              "rle_counts_chars": sum(len(r["counts"]) for a in answers for r in a.rle.values())}
            else:
                track, masks, chars = result
                work[name] = {"masks": masks, "rle_counts_chars": chars}
            last[name] = track

        times = measure.interleaved(cases, args.rounds, after=keep, self_timed=tuple(SIDES.values()))

        def concurrent():
            with ThreadPoolExecutor(args.sessions) as pool:
                return list(pool.map(lambda _: one_session(address["auto"])[1][0], range(args.sessions)))

        concurrent_runs: dict[str, list] = {}
        concurrent_times = measure.interleaved({"concurrent": concurrent}, args.rounds, after=concurrent_runs.__setitem__)
        runs = concurrent_runs["concurrent"]
        concurrent_s = measure.spread(concurrent_times["concurrent"])["median"]

    tracked = args.frames  # frames computed: the prompted one, then the propagation (frame 0 reused)
    seconds = {name: measure.spread(t) for name, t in times.items()}
    fps = {name: {"frames_per_s": round(tracked / s["median"], 3), "seconds": s} for name, s in seconds.items()}
    eager_fps = fps["pytorch_fp32_eager"]["frames_per_s"]
    bf16_fps = fps["pytorch_bf16_autocast"]["frames_per_s"]
    auto_fps = fps["segserve_auto"]["frames_per_s"]
    fp32_reference = last["pytorch_fp32_eager"]
    result = {
        "benchmark": "sam2_video",
        "config": args.size, "image_size": size, "random_weights": True,
        "frames": args.frames, "objects": 1, "rounds": args.rounds,
        "machine": machine,
        "threads": threads,
        "segserve": {SIDES[c]: served[c] for c in SIDES},
        "note": "frames/s over the prompted frame + propagation, frame preprocessing, encoding and RLE included "
                "on every side; segserve's frames uploaded first (segserve_upload_s, not in frames/s); "
                "seconds = one whole tracking run",
        "eager_transformers": fps["pytorch_fp32_eager"],
        "bf16_autocast_transformers": fps["pytorch_bf16_autocast"],
        "segserve_single_session": fps["segserve_auto"],
        "segserve_ort_fp32_single_session": fps["segserve_ort_fp32"],
        "segserve_upload_s": {SIDES[c]: measure.spread(uploads[SIDES[c]][-args.rounds:]) for c in SIDES},
        "work_done": work,
        "segserve_concurrent": {"sessions": args.sessions, "cpu_runtime": "auto",
                                "aggregate_frames_per_s": round(args.sessions * tracked / concurrent_s, 3),
                                "per_session_frames_per_s": round(tracked / concurrent_s, 3),
                                "seconds": measure.spread(concurrent_times["concurrent"])},
        "ratio_single_vs_eager": measure.ratio(auto_fps, eager_fps),
        "ratio_single_vs_bf16_autocast": measure.ratio(auto_fps, bf16_fps),
        "ratio_ort_fp32_single_vs_eager": measure.ratio(fps["segserve_ort_fp32"]["frames_per_s"], eager_fps),
        "ratio_concurrent_aggregate_vs_eager": measure.ratio(args.sessions * tracked / concurrent_s, eager_fps),
        "agreement_auto_vs_ort_fp32": {"mask_iou": measure.iou_summary(
            measure.track_ious(last["segserve_auto"], last["segserve_ort_fp32"]))},
        "parity": {"worst_iou_vs_eager": worst(last["segserve_ort_fp32"], fp32_reference),
                   "worst_iou_auto_vs_eager": worst(last["segserve_auto"], fp32_reference),
                   "worst_iou_bf16_autocast_vs_eager": worst(last["pytorch_bf16_autocast"], fp32_reference),
                   "worst_iou_concurrent_vs_single": min(worst(r, last["segserve_auto"]) for r in runs)},
    }
    measure.publish(result, machine, args.out or ROOT / "out" / "bench_video.json")


if __name__ == "__main__":
    main()
