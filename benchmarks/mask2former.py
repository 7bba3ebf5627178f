"""Mask2Former through segserve vs PyTorch (fp32 eager and bf16 autocast) + transformers
post-processing, side by side in one run; batched vs unbatched throughput. Prints JSON (and writes it
to --out).

Model: the swin-tiny COCO-panoptic shapes (133 labels, 47.4M parameters) with RANDOM weights,
exported at 512 x 512 into --artifacts (cached there by checkpoint hash); `--size tiny`: the test
config at 384, for smoke runs. Images: scikit-image's astronaut at 512 x 512 and upscaled to
1024 x 1536 (the graph always runs at its export size; post-processing runs at the image size).

- latency: one request at a time, per image and task, four sides in --runs interleaved rounds after a
  warm-up each; medians and spreads. segserve = `Segment` RPC (orchestrator decodes the image,
  Triton runs the `mask2former_segment` ensemble: preprocess, the graph, numpy post-processing,
  label map PNG + RLE segments back), with the default CPU runtime choice (`cpu_runtime="auto"`:
  OpenVINO bf16 where the CPU has native bf16; the JSON records what it resolved to) and with ONNX
  Runtime fp32, two stacks running together. PyTorch = decode the same bytes,
  `Mask2FormerImageProcessorPil`, `Mask2FormerForUniversalSegmentation` forward (fp32 eager, or
  under `torch.autocast("cpu", dtype=torch.bfloat16)` with its outputs back in fp32), the
  processor's post_process_<task>, with the same thresholds. ratio = PyTorch / segserve(auto)
  (> 1: segserve faster). Segment counts of every side are reported next to the times.
- agreement: segserve(auto) vs segserve ONNX Runtime fp32 on the same request: the fraction of
  pixels with the same label, and segments matched by label with their mask IoU.
- throughput: --clients concurrent clients, --requests each, panoptic on the 512x512 image, against an
  auto repository with dynamic batching (max batch 8) and one without
  (`build_repository(batching=False)`); Triton's statistics give the graph's executions, so the mean
  batch size is measured, not assumed.

Both sides run with the same number of compute threads (--threads, default 1: PyTorch's
intra-op threads and each served graph's). On a small shared machine more threads than idle
cores make both sides erratic (measured here: PyTorch's forward 4.2 s with 1 thread, 14.6 s with 2
while other work ran).

Panoptic thresholds: with the swin-tiny random weights every query scores ~0.016 (1/134) and the
score-weighted mask probabilities that `mask_threshold` is compared with (transformers' post-processing
weighs them in place before that test) are ~0.008, so the defaults (0.8 / 0.5 / 0.8) keep no segment
and segment building never runs. PRESETS holds, per --size, thresholds measured to keep a few
segments (swin-tiny, 512x512: 3-4); both sides use them, and --threshold / --mask-threshold /
--overlap-mask-area-threshold override them. The semantic task (always full work) is reported too.
"""
from __future__ import annotations

import argparse
import io
import os
import contextlib
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

TASKS = ("panoptic", "semantic")
# Panoptic thresholds per --size (threshold, mask_threshold, overlap_mask_area_threshold), measured on
# the seeded random checkpoints to keep a few segments; the tiny test config keeps ~4 with the defaults.
PRESETS = {"swin-tiny": {"threshold": 0.016, "mask_threshold": 0.009, "overlap_mask_area_threshold": 0.5},
           "tiny": {"threshold": 0.8, "mask_threshold": 0.5, "overlap_mask_area_threshold": 0.8}}


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _images() -> dict[str, bytes]:
    from skimage import data

    astronaut = data.astronaut()  # 512 x 512
    large = np.asarray(Image.fromarray(astronaut).resize((1536, 1024), Image.BICUBIC))
    return {"512x512": _png(astronaut), "1024x1536": _png(large)}


def _graph_stats(url: str) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics("mask2former", as_json=True)["model_stats"][0]
    finally:
        client.close()
    return int(stats["inference_stats"]["success"].get("count", 0)), int(stats.get("execution_count", 0))


def encode_like_served(task: str, result) -> dict:
    """What the served side sends after its post-processing, built from the processor's result: the
    segment-id map as PNG and one COCO RLE mask per segment (`segserve.common.segments`' format)."""
    from benchmarks import measure
    from segserve.common import segments as codec

    if task == "panoptic":
        segment_map = np.maximum(result["segmentation"].numpy().astype(np.int32), 0)  # -1 (nothing found) -> 0
        ids = [int(s["id"]) for s in result["segments_info"]]
    else:  # semantic: one segment per label present, id = label + 1
        segment_map = result.numpy().astype(np.int32) + 1
        ids = np.unique(segment_map).tolist()
    png = codec.encode_png(segment_map)
    rles = measure.rle_masks(np.stack([segment_map == i for i in ids])) if ids else []
    return {"segments": len(ids), "label_map_png_bytes": len(png),
            "rle_counts_chars": sum(len(m["counts"]) for m in rles)}


def pytorch_segmenter(checkpoint: Path, export_size: int):
    """-> run(data, task, precision, thresholds) for precision fp32 (eager) or bf16 (autocast):
    decode, the processor, the forward, the processor's post-processing (panoptic with `thresholds`),
    then the label map PNG and per-segment RLE the served side sends."""
    from transformers import Mask2FormerImageProcessorPil

    from benchmarks import measure
    from segserve.export.mask2former import load_mask2former

    model = load_mask2former(checkpoint)
    models = {"fp32": model, "bf16": measure.AutocastBf16(model)}
    processor = Mask2FormerImageProcessorPil(size={"height": export_size, "width": export_size})

    def run(data: bytes, task: str, precision: str = "fp32", thresholds: dict | None = None):
        import torch

        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")
        inputs = processor([image], return_tensors="pt")
        with torch.no_grad():
            outputs = models[precision](pixel_values=inputs["pixel_values"])
        post = getattr(processor, f"post_process_{task}_segmentation")
        extra = dict(thresholds or {}) if task == "panoptic" else {}
        return encode_like_served(task, post(outputs, target_sizes=[(image.height, image.width)], **extra)[0])

    return run


def served_work(response) -> dict:
    return {"segments": len(response.segments), "label_map_png_bytes": len(response.label_map.png),
            "rle_counts_chars": sum(len(s.mask.counts) for s in response.segments)}


def segment_request(data: bytes, task: str, thresholds: dict):
    from segserve.api import pb
    from segserve.orchestrator.segment import TASK_ENUM

    request = pb.SegmentRequest(image=data, task=TASK_ENUM[task])
    if task == "panoptic":
        for name, value in thresholds.items():
            setattr(request, name, value)
    return request


SIDES = {"auto": "segserve_auto", "onnxruntime-fp32": "segserve_ort_fp32"}


def latency(addresses: dict[str, str], pytorch, images: dict[str, bytes], runs: int, thresholds: dict) -> dict:
    """Per image and task: the four sides interleaved (segserve through the raw stub, so that neither
    side decodes its answer inside the timing), and the two segserve sides' agreement."""
    from benchmarks import measure
    from segserve.client import SegservClient

    report = {}
    with contextlib.ExitStack() as stack:
        clients = {c: stack.enter_context(SegservClient(addresses[c])) for c in SIDES}
        for name, data in images.items():
            for task in TASKS:
                request = segment_request(data, task, thresholds)
                cases = {"pytorch_fp32_eager": lambda data=data, task=task: pytorch(data, task, "fp32", thresholds),
                         "pytorch_bf16_autocast": lambda data=data, task=task: pytorch(data, task, "bf16", thresholds),
                         **{SIDES[c]: (lambda c=c, request=request: clients[c].stub.Segment(request))
                            for c in SIDES}}
                last: dict = {}
                times = {k: measure.spread(v) for k, v in measure.interleaved(cases, runs, after=last.__setitem__).items()}
                auto = times["segserve_auto"]["median"]
                fp32 = times["pytorch_fp32_eager"]["median"]
                report[f"{name}/{task}"] = {
                    "segserve_s": auto, "segserve_ort_fp32_s": times["segserve_ort_fp32"]["median"],
                    "pytorch_s": fp32, "pytorch_bf16_autocast_s": times["pytorch_bf16_autocast"]["median"],
                    "ratio_pytorch_over_segserve": measure.ratio(fp32, auto),
                    "ratio_bf16_autocast_over_segserve": measure.ratio(times["pytorch_bf16_autocast"]["median"], auto),
                    "ratio_pytorch_over_segserve_ort_fp32": measure.ratio(fp32, times["segserve_ort_fp32"]["median"]),
                    "seconds": times,
                    "work_done": {**{SIDES[c]: served_work(last[SIDES[c]]) for c in SIDES},
                                  "pytorch_fp32_eager": last["pytorch_fp32_eager"],
                                  "pytorch_bf16_autocast": last["pytorch_bf16_autocast"]},
                    "agreement_auto_vs_ort_fp32": measure.segmentation_agreement(
                        SegservClient.parse_segmentation(last["segserve_auto"]),
                        SegservClient.parse_segmentation(last["segserve_ort_fp32"])),
                }
    return report


def throughput(stack, data: bytes, clients: int, requests: int, thresholds: dict) -> dict:
    from segserve.client import SegservClient

    request = segment_request(data, "panoptic", thresholds)
    with SegservClient(stack.address) as client:
        client.stub.Segment(request)  # warm-up
    before = _graph_stats(stack.triton.grpc_url)

    def worker(_):
        with SegservClient(stack.address) as client:
            latencies = []
            for _ in range(requests):
                start = time.perf_counter()
                client.stub.Segment(request)
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
    parser.add_argument("--size", choices=("swin-tiny", "tiny"), default="swin-tiny",
                        help="random-weight config (tiny: smoke runs)")
    parser.add_argument("--artifacts", type=Path)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds per latency case, after a warm-up (>= 5)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=3, help="requests per client in the throughput runs")
    parser.add_argument("--threads", type=int, default=1, help="compute threads for PyTorch and each served graph")
    for name in PRESETS["tiny"]:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, help="panoptic; default: the --size preset")
    args = parser.parse_args(argv)
    from benchmarks import measure

    measure.check_rounds(parser, args.runs, "--runs")
    import torch

    threads = measure.pin_threads(args.threads)
    thresholds = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in PRESETS[args.size].items()}

    from segserve.export.mask2former import export_mask2former
    from segserve.orchestrator.settings import Settings
    from segserve.runtime.stack import start_stack

    machine = measure.machine(args.threads)
    artifacts = args.artifacts or ROOT / "build" / "bench" / f"mask2former-{args.size}"
    start = time.perf_counter()
    record = export_mask2former(None, artifacts, random_size=args.size)
    export_s = time.perf_counter() - start
    export_size = int(record.model_config["image_size"])
    images = _images()
    report: dict = {
        "benchmark": "mask2former",
        "model": {"config": "swin-tiny, 133 labels" if args.size == "swin-tiny" else f"{args.size} (smoke)",
                  "random_weights": record.random_weights, "parameters": record.model_config.get("parameters"),
                  "export_size": export_size, "onnx_parity_max_abs_error": record.parity.get("max_abs_error"),
                  "export_or_cache_s": round(export_s, 1)},
        "machine": machine,
        "threads": threads,
        "panoptic_thresholds": thresholds,
    }
    pytorch = pytorch_segmenter(artifacts / "checkpoints" / f"mask2former-random-{args.size}", export_size)
    with tempfile.TemporaryDirectory(prefix="segserve-bench-m2f-") as tmp:
        tmp = Path(tmp)
        served = {c: measure.build_served(artifacts, tmp / c, c, intra_op_threads=args.threads) for c in SIDES}
        unbatched = measure.build_served(artifacts, tmp / "auto-unbatched", "auto", batching=False,
                                         intra_op_threads=args.threads)
        report["segserve"] = {SIDES[c]: served[c] for c in SIDES}
        with contextlib.ExitStack() as stack:
            running = {c: stack.enter_context(start_stack(tmp / c, tmp / f"triton-{c}", Settings())) for c in SIDES}
            report["latency"] = latency({c: running[c].address for c in SIDES}, pytorch, images, args.runs,
                                        thresholds)
            batched_run = throughput(running["auto"], images["512x512"], args.clients, args.requests, thresholds)
        with start_stack(tmp / "auto-unbatched", tmp / "triton-unbatched", Settings()) as stack:
            unbatched_run = throughput(stack, images["512x512"], args.clients, args.requests, thresholds)
    report["throughput_panoptic_512"] = {
        "clients": args.clients, "cpu_runtime": "auto", "unbatched_repository": unbatched["graphs"],
        "batched": batched_run, "unbatched": unbatched_run,
        "speedup_batched_over_unbatched": round(batched_run["requests_per_s"] / unbatched_run["requests_per_s"], 2),
    }
    machine["torch_threads"] = torch.get_num_threads()
    measure.publish(report, machine, args.out)
    return report


if __name__ == "__main__":
    main()
