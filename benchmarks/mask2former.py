"""Mask2Former through segserve vs PyTorch eager + transformers post-processing; batched vs
unbatched throughput. One run; prints JSON (and writes it to --out).

Model: the swin-tiny COCO-panoptic shapes (133 labels, 47.4M parameters) with RANDOM weights,
exported at 512 x 512 into --artifacts (cached there by checkpoint hash). Images: scikit-image's
astronaut at 512 x 512 and upscaled to 1024 x 1536 (the graph always runs at 512; post-processing
runs at the image size).

- latency: one request at a time. segserve = `Segment` RPC (orchestrator decodes the image, Triton
  runs the `mask2former_segment` ensemble: preprocess, ONNX Runtime graph, numpy post-processing,
  label map PNG + RLE segments back). PyTorch = decode the same bytes, `Mask2FormerImageProcessorPil`,
  `Mask2FormerForUniversalSegmentation` forward, the processor's post_process_<task>. Median of
  --runs after one warm-up each; ratio = PyTorch / segserve (> 1: segserve faster).
- throughput: --clients concurrent clients, --requests each, panoptic at 512, against a repository
  with dynamic batching (max batch 8) and one without (`build_repository(batching=False)`); Triton's
  statistics give the graph's executions, so the mean batch size is measured, not assumed.

Both sides run with the same number of compute threads (--threads, default 1: PyTorch's
intra-op threads and ONNX Runtime's per graph). On a small shared machine more threads than idle
cores make both sides erratic (measured here: PyTorch's forward 4.2 s with 1 thread, 14.6 s with 2
while other work ran). Random weights: few or no panoptic segments pass the default thresholds, so
the semantic task (always full work) is reported too.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

EXPORT_SIZE = 512
TASKS = ("panoptic", "semantic")


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _images() -> dict[str, bytes]:
    from skimage import data

    astronaut = data.astronaut()  # 512 x 512
    large = np.asarray(Image.fromarray(astronaut).resize((1536, 1024), Image.BICUBIC))
    return {"512x512": _png(astronaut), "1024x1536": _png(large)}


def _median(fn, runs: int) -> tuple[float, object]:
    result = fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _graph_stats(url: str) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics("mask2former", as_json=True)["model_stats"][0]
    finally:
        client.close()
    return int(stats["inference_stats"]["success"].get("count", 0)), int(stats.get("execution_count", 0))


def pytorch_latency(checkpoint: Path, images: dict[str, bytes], runs: int) -> dict:
    import torch
    from transformers import Mask2FormerImageProcessorPil

    from segserve.export.mask2former import load_mask2former

    model = load_mask2former(checkpoint)
    processor = Mask2FormerImageProcessorPil(size={"height": EXPORT_SIZE, "width": EXPORT_SIZE})
    results = {"threads": torch.get_num_threads()}
    for name, data in images.items():
        for task in TASKS:
            def run(data=data, task=task):
                with Image.open(io.BytesIO(data)) as opened:
                    image = opened.convert("RGB")
                inputs = processor([image], return_tensors="pt")
                with torch.no_grad():
                    outputs = model(pixel_values=inputs["pixel_values"])
                post = getattr(processor, f"post_process_{task}_segmentation")
                return post(outputs, target_sizes=[(image.height, image.width)])[0]
            seconds, result = _median(run, runs)
            segments = len(result["segments_info"]) if task == "panoptic" else int(len(result.unique()))
            results[f"{name}/{task}"] = {"seconds": round(seconds, 3), "segments": segments}
    return results


def segserve_latency(address: str, images: dict[str, bytes], runs: int) -> dict:
    from segserve.client import SegservClient

    results = {}
    with SegservClient(address) as client:
        for name, data in images.items():
            for task in TASKS:
                seconds, result = _median(lambda data=data, task=task: client.segment(data, task=task), runs)
                results[f"{name}/{task}"] = {"seconds": round(seconds, 3), "segments": len(result.segments)}
    return results


def throughput(stack, data: bytes, clients: int, requests: int) -> dict:
    from segserve.client import SegservClient

    with SegservClient(stack.address) as client:
        client.segment(data)  # warm-up
    before = _graph_stats(stack.triton.grpc_url)

    def worker(_):
        with SegservClient(stack.address) as client:
            latencies = []
            for _ in range(requests):
                start = time.perf_counter()
                client.segment(data)
                latencies.append(time.perf_counter() - start)
            return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for per_client in pool.map(worker, range(clients)) for t in per_client]
    wall = time.perf_counter() - start
    after = _graph_stats(stack.triton.grpc_url)
    served, executions = after[0] - before[0], after[1] - before[1]
    return {"requests": len(latencies), "wall_s": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 3),
            "latency_median_s": round(statistics.median(latencies), 3), "graph_requests": served,
            "graph_executions": executions, "mean_batch": round(served / max(1, executions), 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=ROOT / "build" / "bench" / "mask2former-swin-tiny")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per latency case (after a warm-up)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=3, help="requests per client in the throughput runs")
    parser.add_argument("--threads", type=int, default=1, help="compute threads for PyTorch and ONNX Runtime")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)

    from segserve.export.mask2former import export_mask2former
    from segserve.orchestrator.settings import Settings
    from segserve.repository.builder import build_repository
    from segserve.runtime.stack import start_stack

    load_start = os.getloadavg()
    start = time.perf_counter()
    record = export_mask2former(None, args.artifacts, image_size=EXPORT_SIZE, random_size="swin-tiny")
    export_s = time.perf_counter() - start
    images = _images()
    report: dict = {
        "benchmark": "mask2former",
        "model": {"config": "swin-tiny, 133 labels", "random_weights": record.random_weights,
                  "parameters": record.model_config["parameters"], "export_size": EXPORT_SIZE,
                  "onnx_parity_max_abs_error": record.parity.get("max_abs_error"), "export_or_cache_s": round(export_s, 1)},
        "machine": {"cpus": os.cpu_count(), "threads_per_side": args.threads,
                    "load_average_at_start": [round(v, 2) for v in load_start]},
    }
    with tempfile.TemporaryDirectory(prefix="segserve-bench-m2f-") as tmp:
        tmp = Path(tmp)
        build_repository(args.artifacts, tmp / "batched", "embedded", intra_op_threads=args.threads)
        build_repository(args.artifacts, tmp / "unbatched", "embedded", batching=False,
                         intra_op_threads=args.threads)
        with start_stack(tmp / "batched", tmp / "triton-batched", Settings()) as stack:
            ours = segserve_latency(stack.address, images, args.runs)
            batched = throughput(stack, images["512x512"], args.clients, args.requests)
        with start_stack(tmp / "unbatched", tmp / "triton-unbatched", Settings()) as stack:
            unbatched = throughput(stack, images["512x512"], args.clients, args.requests)
    reference = pytorch_latency(args.artifacts / "checkpoints" / "mask2former-random-swin-tiny", images, args.runs)
    report["machine"]["torch_threads"] = reference.pop("threads")
    report["latency"] = {
        case: {"segserve_s": ours[case]["seconds"], "pytorch_s": reference[case]["seconds"],
               "ratio_pytorch_over_segserve": round(reference[case]["seconds"] / ours[case]["seconds"], 2),
               "segments_segserve": ours[case]["segments"], "segments_pytorch": reference[case]["segments"]}
        for case in ours
    }
    report["throughput_panoptic_512"] = {
        "clients": args.clients, "batched": batched, "unbatched": unbatched,
        "speedup_batched_over_unbatched": round(batched["requests_per_s"] / unbatched["requests_per_s"], 2),
    }
    report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
