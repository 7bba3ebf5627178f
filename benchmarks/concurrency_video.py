"""Video time per frame against the number of objects (issue 15): every object of a frame in one
graph call per shape group (`batched`, the tracker's default) vs one call per object
(`one_at_a_time`: the path before batching, built with `video_batch_objects=False`), side by side.

Two segserve stacks run together (orchestrator + embedded Triton, the tracker's graphs in process),
one per path, on the same random-weight model (sam2.1-hiera-tiny video shapes at 512x512 by
default; `--size hiera-tiny` for 1024x1024, `--size tiny` for smoke runs) and the same synthetic
clip. For each object count (`--objects 1,4,8`) a session gets that many objects, each clicked at
its own point on frame 0, then `Propagate` runs from frame 1 to the end of the clip; the time of
the Propagate stream over the frames it returns (all tracked) is the time per frame (frame encoding, memory attention, decoder,
memory encoder and RLE masks included; frames uploaded and prompts added beforehand, not timed).
Every side is warmed up, then `--rounds` interleaved rounds (>= 5); medians and spreads. Also:
- the ratio of each object count's time per frame to one object's, per path;
- agreement: per frame and object, the batched path's masks against the one-at-a-time path's
  (mask IoU; equal bit for bit in the tests);
- `--breakdown` (default): the same tracking in process (`VideoTracker` without Triton), each
  graph's seconds and calls per frame, per path and object count (where the time goes: what
  batching can save is per-call overhead; each object's memory attention arithmetic stays).

    python benchmarks/concurrency_video.py [--size hiera-tiny-512] [--objects 1,4,8] [--out FILE]

`measure_objects_per_frame(args)` is the measurement (imported by `benchmarks/concurrency.py`); its
`args` are this script's options (`parser()` builds them).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATHS = {"batched": True, "one_at_a_time": False}  # name -> build option video_batch_objects


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("hiera-tiny-512", "hiera-tiny", "tiny"), default="hiera-tiny-512")
    p.add_argument("--artifacts", type=Path, help="exported SAM 2 video graphs (random weights exported if absent)")
    p.add_argument("--objects", default="1,4,8", help="object counts, comma-separated")
    p.add_argument("--frames", type=int, default=6, help="frames of the clip (frames 1.. are tracked and timed)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 5)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the tracker's graphs")
    p.add_argument("--cpu-runtime", default="onnxruntime-fp32", choices=("onnxruntime-fp32", "auto"),
                   help="the graphs' CPU runtime (auto: OpenVINO bf16 where the CPU has native bf16)")
    p.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True,
                   help="also time each graph in process (the tracker without Triton), per path and object count")
    p.add_argument("--out", type=Path)
    return p


def object_points(count: int, height: int, width: int) -> dict[int, dict]:
    """`count` objects, each one positive click at its own place (a grid over the frame)."""
    columns = 4
    rows = (count + columns - 1) // columns
    return {i + 1: {"points": [(width * (0.5 + i % columns) / columns, height * (0.5 + i // columns) / rows, 1)]}
            for i in range(count)}


class _TimedGraphs:
    """The tracker's graphs with each call's seconds added up per graph."""

    def __init__(self, graphs):
        self.graphs = graphs
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def run(self, name, feeds):
        start = time.perf_counter()
        out = self.graphs.run(name, feeds)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.calls[name] = self.calls.get(name, 0) + 1
        return out


def graph_breakdown(artifacts: Path, config: dict, frames, counts: list[int], threads: int, rounds: int,
                    served_graphs: dict[str, str]) -> dict:
    """Per path and object count: seconds per tracked frame in process, and each graph's share.
    `served_graphs`: graph -> "runtime precision" as the served tracker runs it (the precision gate
    may serve some graphs in bf16 and others in fp32)."""
    import numpy as np

    from benchmarks import measure
    from segserve.common import sam2_transforms
    from segserve.triton_models.graph_runner import GraphSettings
    from segserve.triton_models.sam2_video_core import GRAPH_NAMES, LocalGraphs, VideoSession, VideoTracker

    choices = {g: dict(zip(("runtime", "precision"), served_graphs[g].split())) for g in GRAPH_NAMES}
    settings = GraphSettings(choices, threads)
    timed = _TimedGraphs(LocalGraphs.from_artifacts(artifacts, settings=settings))
    size = int(config["image_size"])
    hw = frames.shape[1:3]
    def one_run(batch: bool, count: int) -> tuple[float, dict]:
        objects = object_points(count, *hw)
        prompts = [(sam2_transforms.to_model_coords(np.array([p[:2] for p in o["points"]], np.float32), hw, size),
                    np.array([p[2] for p in o["points"]], np.int32)) for o in objects.values()]
        tracker = VideoTracker(timed, config, max_objects=max(16, count), batch_objects=batch)
        session = VideoSession()
        tracker.add_frames(session, list(frames))
        tracker.add_prompts(session, 0, list(objects), prompts)
        timed.seconds.clear()
        timed.calls.clear()
        start = time.perf_counter()
        for frame in range(1, len(frames)):
            tracker.step(session, frame)
        tracked = len(frames) - 1
        return (time.perf_counter() - start) / tracked, {g: (s / tracked, timed.calls[g] / tracked)
                                                         for g, s in timed.seconds.items()}

    # warmed up, then interleaved rounds (each round runs every path and count once)
    cases = [(name, count) for count in counts for name in PATHS]
    runs: dict = {case: [] for case in cases}
    for index in range(rounds + 1):
        for case in cases[index % len(cases):] + cases[:index % len(cases)]:
            result = one_run(PATHS[case[0]], case[1])
            if index:
                runs[case].append(result)
    out: dict = {name: {} for name in PATHS}
    for (name, count), results in runs.items():
        out[name][str(count)] = {
            "seconds_per_frame": measure.spread([r[0] for r in results]),
            "graphs": {g: {"seconds_per_frame": round(float(np.median([r[1][g][0] for r in results])), 4),
                           "calls_per_frame": results[0][1][g][1]} for g in results[0][1]}}
    return out


def measure_objects_per_frame(args) -> dict:
    from benchmarks import measure
    from segserve.client import SegservClient
    from segserve.common.synthetic_video import moving_shapes
    from segserve.export.sam2_video import export_sam2_video
    from segserve.orchestrator.settings import Settings
    from segserve.runtime.stack import start_stack

    if args.rounds < measure.MIN_ROUNDS:
        raise ValueError(f"rounds must be at least {measure.MIN_ROUNDS}")
    counts = sorted({int(c) for c in str(args.objects).split(",")})
    machine = measure.machine(args.threads)
    artifacts = args.artifacts or ROOT / "build" / "bench" / f"sam2_video_{args.size}"
    records = export_sam2_video(None, artifacts, random_size=args.size)
    size = int(records["sam2_video_decoder"].model_config["image_size"])
    frames, _ = moving_shapes(args.frames, size, size)
    served = {name: measure.build_served(artifacts, artifacts.parent / f"repository_video_objects_{args.size}_{name}",
                                         args.cpu_runtime, session_ttl_s=600, max_sessions=8,
                                         options={"video_intra_op_threads": args.threads, "video_batch_objects": batch,
                                                  "max_video_objects": max(16, max(counts))})
              for name, batch in PATHS.items()}

    def tracking_run(address: str, count: int):
        with SegservClient(address) as client:
            video = client.video
            info = video.start_session(list(frames), batch_size=2)
            video.add_prompts(info.session_id, 0, object_points(count, size, size))
            start = time.perf_counter()
            # from frame 1: every frame returned is computed (frame 0's outputs are the prompt's)
            out = [(f.frame_index, f.masks) for f in video.propagate(info.session_id, start_frame_index=1)]
            elapsed = time.perf_counter() - start
            video.end_session(info.session_id)
        assert len(out) == args.frames - 1 and all(len(m) == count for _, m in out), "a frame missed objects"
        return elapsed / len(out), out  # seconds per frame

    last: dict[str, list] = {}
    with contextlib.ExitStack() as stack:
        address = {name: stack.enter_context(start_stack(Path(served[name]["repository"]),
                                                         artifacts.parent / f"triton_video_objects_{name}",
                                                         Settings())).address for name in PATHS}
        cases = {f"{name}/{count}": (lambda name=name, count=count: tracking_run(address[name], count))
                 for count in counts for name in PATHS}
        times = measure.interleaved(cases, args.rounds, after=last.__setitem__, self_timed=tuple(cases))

    per_frame = {name: {str(count): measure.spread(times[f"{name}/{count}"]) for count in counts} for name in PATHS}
    ratios = {name: {str(count): measure.ratio(per_frame[name][str(count)]["median"],
                                               per_frame[name][str(counts[0])]["median"]) for count in counts}
              for name in PATHS}
    result = {
        "benchmark": "video_objects_per_frame",
        "config": args.size, "image_size": size, "random_weights": True, "frames": args.frames,
        "objects": counts, "threads": args.threads, "rounds": args.rounds, "cpu_runtime": args.cpu_runtime,
        "machine": machine,
        "segserve": served,
        "note": "seconds per frame of a Propagate stream over frames 1.. of the clip (served end to end: encoder, memory "
                "attention, decoder, memory encoder, RLE masks), frames uploaded and objects prompted first "
                "(not timed); one object click each",
        "seconds_per_frame": per_frame,
        f"ratio_vs_{counts[0]}_object": ratios,
        "speedup_batched_vs_one_at_a_time": {
            str(c): measure.ratio(per_frame["one_at_a_time"][str(c)]["median"], per_frame["batched"][str(c)]["median"])
            for c in counts},
        "agreement_batched_vs_one_at_a_time": {
            str(c): {"mask_iou": measure.iou_summary(measure.track_ious(last[f"batched/{c}"], last[f"one_at_a_time/{c}"]))}
            for c in counts},
    }
    if args.breakdown:
        result["in_process_breakdown"] = graph_breakdown(artifacts, records["sam2_video_decoder"].model_config, frames,
                                                         counts, args.threads, args.rounds, served["batched"]["graphs"])
    machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


def main() -> None:
    p = parser()
    args = p.parse_args()
    from benchmarks import measure

    measure.check_rounds(p, args.rounds, "--rounds")
    result = measure_objects_per_frame(args)
    measure.publish(result, out=args.out or ROOT / "out" / "bench_video_objects.json")


if __name__ == "__main__":
    main()
