"""Throughput under concurrency (issue 15): image clicks while other users open images, and many
sessions clicking at once, on the concurrent path (START encoded off the click path, the clicks of
one execute() decoded in one decoder call: the default) side by side with the one-at-a-time path
(START encoded inside execute(), one decoder call per request: build option
`image_clicks=serial`), in one run. JSON on stdout (and --out).

Two segserve stacks (orchestrator + embedded Triton) on the same random-weight SAM 2
(sam2.1-hiera-tiny shapes by default; `--size tiny` for smoke runs) run together, each scenario
on one stack after the other (order alternating per scenario). Clicks are MaskFromPrompt calls
with one random point on an open image (masks back as RLE), through the orchestrator.

- clicks_while_encoding: `--clickers` (6) users click on their open images while `--openers` (2)
  users open new images (OpenImage, then CloseImage) for `--duration` seconds. Click p50 / p99 and
  their ratio, clicks and opens done.
- batched_clicks: `--sessions` (8) users click at once, each on their own image, `--rounds`
  clicks each. Triton's statistics of `sam2_image_session` (executions against requests) and the
  model's decoder calls against decoded requests (its counters on Triton's metrics port), click
  throughput of the concurrent path against the one-at-a-time path.
- video_objects_per_frame: `benchmarks/concurrency_video.py`'s `measure_objects_per_frame`, when
  that file exists (`--video-size`, `--skip-video`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATHS = {"concurrent": "concurrent", "one_at_a_time": "serial"}  # name -> build option image_clicks
MODEL = "sam2_image_session"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("hiera-tiny", "tiny"), default="hiera-tiny",
                   help="random-weight SAM 2 config (tiny: smoke runs only)")
    p.add_argument("--artifacts", type=Path)
    p.add_argument("--image-size", type=int, default=1024, help="side of the square photos opened")
    p.add_argument("--clickers", type=int, default=6)
    p.add_argument("--openers", type=int, default=2)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of the clicks-while-encoding scenario")
    p.add_argument("--sessions", type=int, default=8, help="users clicking at once (batched clicks)")
    p.add_argument("--rounds", type=int, default=20, help="clicks per user in the batched-clicks scenario")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of each in-process graph")
    p.add_argument("--video-size", default="hiera-tiny-512", choices=("hiera-tiny-512", "hiera-tiny", "tiny"),
                   help="--size of benchmarks/concurrency_video.py")
    p.add_argument("--skip-video", action="store_true")
    p.add_argument("--out", type=Path)
    return p


def photos(count: int, size: int) -> list[np.ndarray]:
    """Different photos: crops of scikit-image's astronaut, resized to `size`."""
    from PIL import Image
    from skimage import data

    base = data.astronaut()
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        y, x = rng.integers(0, 200, 2)
        crop = Image.fromarray(np.ascontiguousarray(base[y:y + 312, x:x + 312]))
        out.append(np.asarray(crop.resize((size, size), Image.BILINEAR)))
    return out


class Side:
    """One stack: its client, Triton's statistics and the session model's decoder counters."""

    def __init__(self, stack, client):
        import tritonclient.grpc as grpcclient

        self.stack, self.client = stack, client
        self.triton = grpcclient.InferenceServerClient(stack.triton.grpc_url)

    def counters(self, settle_s: float = 0.5) -> dict[str, float]:
        """Once Triton's counts stop changing: the session model answers through response senders,
        and Triton records a request when it is released, just after its answer."""
        last, since = None, time.monotonic()
        while last is None or time.monotonic() - since < settle_s:
            stats = self.triton.get_inference_statistics(MODEL).model_stats[0]
            now = (int(stats.execution_count), int(stats.inference_count))
            if now != last:
                last, since = now, time.monotonic()
            time.sleep(0.05)
        text = urllib.request.urlopen(self.stack.triton.metrics_url).read().decode()

        def total(name):
            return sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))

        return {"executions": last[0], "requests": last[1],
                "decoder_calls": total("segserve_triton_image_decoder_calls"),
                "decoded_requests": total("segserve_triton_image_decoded_requests")}


def click(client, image_id: str, rng: np.random.Generator, size: int) -> float:
    x, y = rng.uniform(0, size, 2)
    started = time.perf_counter()
    client.mask_from_prompt(image_id=image_id, points=[(float(x), float(y), 1)])
    return time.perf_counter() - started


def run_threads(workers: list) -> None:
    threads = [threading.Thread(target=w) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def clicks_while_encoding(side: Side, images: list[np.ndarray], args) -> dict:
    from benchmarks import measure
    from segserve.client import image_bytes

    clickers = [side.client.open_image(images[i % len(images)]).image_id for i in range(args.clickers)]
    encoded = [image_bytes(images[(args.clickers + i) % len(images)]) for i in range(args.openers)]
    for image_id in clickers:  # warm: each session's first click
        click(side.client, image_id, np.random.default_rng(0), args.image_size)
    latencies: list[float] = []
    opens: list[float] = []
    stop = time.perf_counter() + args.duration
    lock = threading.Lock()

    def clicker(k):
        rng = np.random.default_rng(k)
        while time.perf_counter() < stop:
            t = click(side.client, clickers[k], rng, args.image_size)
            with lock:
                latencies.append(t)

    def opener(k):
        while time.perf_counter() < stop:
            started = time.perf_counter()
            image_id = side.client.open_image(encoded[k]).image_id
            with lock:
                opens.append(time.perf_counter() - started)
            side.client.close_image(image_id)

    run_threads([lambda k=k: clicker(k) for k in range(args.clickers)] +
                [lambda k=k: opener(k) for k in range(args.openers)])
    for image_id in clickers:
        side.client.close_image(image_id)
    clicks = measure.percentiles(latencies, 1e3)
    ratio = clicks["p99"] / clicks["p50"]
    return {"click_ms": clicks, "p99_over_p50": round(ratio, 3),
            "clicks_per_s": round(len(latencies) / args.duration, 2),
            "open_image_s": measure.spread(opens) if opens else None, "opens": len(opens)}


def batched_clicks(side: Side, images: list[np.ndarray], args) -> dict:
    from benchmarks import measure

    ids = [side.client.open_image(images[i % len(images)]).image_id for i in range(args.sessions)]
    for image_id in ids:
        click(side.client, image_id, np.random.default_rng(0), args.image_size)
    before = side.counters()
    latencies: list[float] = []
    lock = threading.Lock()

    def user(k):
        rng = np.random.default_rng(100 + k)
        for _ in range(args.rounds):
            t = click(side.client, ids[k], rng, args.image_size)
            with lock:
                latencies.append(t)

    started = time.perf_counter()
    run_threads([lambda k=k: user(k) for k in range(args.sessions)])
    wall = time.perf_counter() - started
    after = side.counters()
    for image_id in ids:
        side.client.close_image(image_id)
    delta = {k: after[k] - before[k] for k in after}
    return {"clicks": len(latencies), "wall_s": round(wall, 3), "clicks_per_s": round(len(latencies) / wall, 2),
            "click_ms": measure.percentiles(latencies, 1e3),
            "triton_session_model": {"requests": delta["requests"], "executions": delta["executions"],
                                     "requests_per_execution": measure.ratio(delta["requests"], delta["executions"])},
            "decoder": {"decoded_requests": int(delta["decoded_requests"]), "calls": int(delta["decoder_calls"]),
                        "requests_per_call": measure.ratio(delta["decoded_requests"], delta["decoder_calls"])}}


def video_objects_per_frame(args) -> dict | None:
    if args.skip_video or not (ROOT / "benchmarks" / "concurrency_video.py").is_file():
        return None
    from benchmarks import concurrency_video

    video_args = concurrency_video.parser().parse_args(["--size", args.video_size])
    return concurrency_video.measure_objects_per_frame(video_args)


def main() -> None:
    args = parser().parse_args()
    from benchmarks import measure
    from segserve.client import SegservClient
    from segserve.export.sam2 import export_sam2
    from segserve.orchestrator.settings import Settings
    from segserve.repository.builder import build_repository
    from segserve.runtime.stack import start_stack

    artifacts = measure.sam2_artifacts(args.artifacts, args.size)
    machine = measure.machine(args.threads)
    records = export_sam2(None, artifacts, random_size=args.size)
    images = photos(args.clickers + args.openers + args.sessions, args.image_size)
    settings = Settings(max_image_sessions=64, embedding_cache_size=0)
    result = {"benchmark": "concurrency", "machine": machine,
              "model": {"config": "sam2.1-hiera-tiny shapes" if args.size == "hiera-tiny" else f"{args.size} (smoke)",
                        "weights": "random", "parameters": records["sam2_image_encoder"].model_config.get("parameters"),
                        "image": f"{args.image_size}x{args.image_size}"},
              "settings": {k: getattr(args, k) for k in ("clickers", "openers", "duration", "sessions", "rounds",
                                                          "threads")}}
    with contextlib.ExitStack() as stack:
        sides = {}
        for name, clicks in PATHS.items():
            repository = artifacts.parent / f"{artifacts.name}_repository_clicks_{clicks}"
            build_repository(artifacts, repository, "embedded", intra_op_threads=args.threads,
                             options={"image_clicks": clicks})
            running = stack.enter_context(start_stack(repository, ROOT / "build" / "bench" / f"triton_clicks_{clicks}",
                                                      settings))
            sides[name] = Side(running, stack.enter_context(SegservClient(running.address)))
        scenarios = {"clicks_while_encoding": clicks_while_encoding, "batched_clicks": batched_clicks}
        for index, (scenario, run) in enumerate(scenarios.items()):
            order = list(PATHS) if index % 2 == 0 else list(PATHS)[::-1]
            result[scenario] = {name: run(sides[name], images, args) for name in order}
    batched = result["batched_clicks"]
    batched["throughput_concurrent_over_one_at_a_time"] = measure.ratio(
        batched["concurrent"]["clicks_per_s"], batched["one_at_a_time"]["clicks_per_s"])
    video = video_objects_per_frame(args)
    if video is not None:
        result["video_objects_per_frame"] = video
    measure.publish(result, machine, args.out)


if __name__ == "__main__":
    main()
