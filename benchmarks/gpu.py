"""GPU benchmark (`make gpu-check`): TensorRT engine vs ONNX Runtime vs PyTorch eager, side by side in
one run, per family: SAM 2 encoder / decoder ms, video frames/s (hiera-tiny), Grounding DINO ms,
Mask2Former ms. Median and spread of interleaved runs after warm-up, as JSON.

Inputs: the artifacts of `segserve export --random-size real --tensorrt` (manifest + engines). Each
graph runs its smallest export parity case (one request's shapes). ONNX Runtime runs on its CUDA
provider when onnxruntime-gpu is installed, else on the CPU (the JSON says which); PyTorch eager on
the GPU when torch sees one, else on the CPU. Engine and ONNX Runtime times include the host<->device
copies of inputs and outputs; PyTorch times use tensors already on its device. Video frames/s is
1000 / (encoder + memory attention + decoder + memory encoder medians): one object, one tracked
frame. Without an NVIDIA GPU and TensorRT it exits 2 and says what is missing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

VIDEO_STEP = ("sam2_video_image_encoder", "sam2_video_memory_attention", "sam2_video_decoder",
              "sam2_video_memory_encoder")


def missing() -> list[str]:
    from segserve.engines.build import TensorRTUnavailable, require_tensorrt

    try:
        require_tensorrt()
    except TensorRTUnavailable as exc:
        return [str(exc)]
    return []


class _Torch:
    def __init__(self, module, device):
        import torch

        self.torch, self.device = torch, device
        self.module = module.eval().to(device)
        self.description = f"pytorch {torch.__version__} eager {device}"

    def prepare(self, feeds):
        return [self.torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for v in feeds.values()]

    def __call__(self, tensors):
        with self.torch.no_grad():
            self.module(*tensors)
        if self.device == "cuda":
            self.torch.cuda.synchronize()


def _timed(call, arg) -> float:
    start = time.perf_counter()
    call(arg)
    return (time.perf_counter() - start) * 1000.0


def bench_graph(manifest, graph: str, trt, runs: int, warmup: int) -> dict:
    import onnxruntime as ort
    import torch

    from segserve.engines import parity
    from segserve.engines.build import TrtRunner

    spec = parity.export_spec(manifest, graph)
    cases = [{k: v.numpy() for k, v in c.items()} for c in [spec.example_inputs, *spec.parity_inputs]]
    feeds = min(cases, key=lambda c: sum(v.nbytes for v in c.values()))
    runners, out = {}, {"shapes": {k: list(v.shape) for k, v in feeds.items()}}
    record = manifest.engines.get(graph)
    if record is not None and record.backend == "tensorrt":
        engine = TrtRunner(trt, (manifest.directory / record.file).read_bytes(),
                           [{k: tuple(map(tuple, v)) for k, v in p.items()} for p in record.profiles])
        runners["tensorrt"] = (engine.run, feeds, f"{engine.description} {record.precision}")
    else:
        out["tensorrt"] = record.reason if record is not None else "no engine in the manifest"
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    ort_runner = parity.OrtRunner(manifest.artifact_path(graph), ["CUDAExecutionProvider"] if cuda else None)
    runners["onnxruntime"] = (ort_runner.run, feeds, ort_runner.description)
    eager = _Torch(spec.module, "cuda" if torch.cuda.is_available() else "cpu")
    runners["pytorch"] = (eager, eager.prepare(feeds), eager.description)
    for call, arg, _ in runners.values():
        for _ in range(warmup):
            call(arg)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(runs):  # interleaved: drift and clocks affect every runtime alike
        for name, (call, arg, _) in runners.items():
            times[name].append(_timed(call, arg))
    for name, samples in times.items():
        out[name] = {"runtime": runners[name][2], "median_ms": statistics.median(samples),
                     "min_ms": min(samples), "max_ms": max(samples), "runs": len(samples)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts-gpu"))
    ap.add_argument("--out", type=Path, default=Path("out/bench_gpu.json"))
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="only check for the GPU and TensorRT")
    args = ap.parse_args(argv)
    problems = missing()
    if problems:
        print(f"benchmarks/gpu.py: cannot run here. {problems[0]}", file=sys.stderr)
        return 2
    if args.check:
        return 0
    if args.runs < 5:
        ap.error("--runs must be at least 5")
    from segserve.engines.build import require_tensorrt
    from segserve.export.manifest import Manifest

    trt, gpu = require_tensorrt()
    manifest = Manifest(args.artifacts)
    graphs = {}
    for graph in sorted(manifest.records):
        print(f"[gpu bench] {graph}", file=sys.stderr, flush=True)
        graphs[graph] = bench_graph(manifest, graph, trt, args.runs, args.warmup)
    video = {}
    for runtime in ("tensorrt", "onnxruntime", "pytorch"):
        steps = [graphs.get(g, {}).get(runtime) for g in VIDEO_STEP]
        if all(isinstance(s, dict) for s in steps):
            video[runtime] = 1000.0 / sum(s["median_ms"] for s in steps)
    families = {
        "sam2": {"encoder": graphs.get("sam2_image_encoder"), "decoder": graphs.get("sam2_prompt_decoder")},
        "sam2_video": {"frames_per_s": video or None, "graphs": {g: graphs.get(g) for g in VIDEO_STEP}},
        "grounding_dino": graphs.get("grounding_dino"),
        "mask2former": graphs.get("mask2former"),
    }
    result = {"gpu": str(gpu), "tensorrt": trt.__version__, "families": families,
              "random_weights": any(r.random_weights for r in manifest.records.values())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
