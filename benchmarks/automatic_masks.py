"""Automatic mask generation benchmark at real size: segserve GenerateMasks vs the PyTorch reference.

One run, side by side, on this machine: sam2.1-hiera-tiny shapes with random weights, a 512x512
photo, a points_per_side x points_per_side grid (default 32: 1024 prompts, multimask), SAM's
default thresholds unless given (random weights predict IoU ~0.5, so the defaults keep no mask). Prints JSON (and writes it to --out):
- per image, cold: GenerateMasks on new image bytes (decode, encoder, all decoder batches, filters,
  NMS, RLE) vs `tests/automask_reference.generate` with transformers' Sam2Model in eager PyTorch;
  ratio = segserve / eager (below 1: segserve is faster).
- per image, embeddings cached: the same request again (the orchestrator's embedding cache skips
  the encoder) vs the eager reference minus one eager encoder run.
- points decoded per second, decoder calls, masks kept by each side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=ROOT / "build" / "bench" / "sam2_real")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.8)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from skimage import data
    from transformers import Sam2Model

    from segserve.client import SegservClient, image_bytes
    from segserve.export.sam2 import export_sam2
    from segserve.repository.builder import build_repository
    from segserve.runtime.stack import start_stack
    from tests import automask_reference
    from tests.sam2_reference import pixel_values

    records = export_sam2(None, args.artifacts, random_size="hiera-tiny")
    repository = args.artifacts.parent / "sam2_real_repository_automask"
    build_repository(args.artifacts, repository, "embedded")
    photo = np.ascontiguousarray(data.astronaut())
    params = dict(points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                  pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh)

    # --- segserve ----------------------------------------------------------------------------------
    with start_stack(repository, ROOT / "build" / "bench" / "triton_automask") as stack, \
            SegservClient(stack.address, timeout_s=1800) as client:
        warm = photo.copy()
        warm[0, 0] = 0
        client.generate_masks(image=warm, points_per_side=2)  # warm-up (sessions, ORT, gRPC)
        encoded = image_bytes(photo)
        start = time.perf_counter()
        cold = client.generate_masks(image=encoded, **params)
        serve_cold = time.perf_counter() - start
        start = time.perf_counter()
        cached = client.generate_masks(image=encoded, **params)
        serve_cached = time.perf_counter() - start
    points = cold.progress.points_total

    # --- PyTorch eager reference -------------------------------------------------------------------
    torch.set_num_threads(os.cpu_count() or 1)
    model = Sam2Model.from_pretrained(args.artifacts / "checkpoints" / "sam2-random-hiera-tiny").eval()
    with torch.no_grad():
        model.get_image_embeddings(pixel_values(photo[:64, :64]))  # warm-up
        start = time.perf_counter()
        model.get_image_embeddings(pixel_values(photo))
        eager_encoder = time.perf_counter() - start
    start = time.perf_counter()
    expected = automask_reference.generate(model, photo, **params)
    eager = time.perf_counter() - start

    result = {
        "benchmark": "automatic_masks",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads()},
        "model": {"config": "sam2.1-hiera-tiny shapes", "weights": "random",
                  "parameters": records["sam2_image_encoder"].model_config.get("parameters"),
                  "image": f"{photo.shape[1]}x{photo.shape[0]}"},
        "settings": {**params, "points": points, "other_parameters": "SAM defaults (stability offset 1.0, "
                                                                     "box_nms 0.7, no crops)"},
        "per_image_cold": {"segserve_s": serve_cold, "pytorch_eager_s": eager, "ratio_segserve_over_eager": serve_cold / eager},
        "per_image_embeddings_cached": {"segserve_s": serve_cached, "pytorch_eager_s": eager - eager_encoder,
                                        "ratio_segserve_over_eager": serve_cached / (eager - eager_encoder)},
        "points_per_second": {"segserve_cold": points / serve_cold, "segserve_cached": points / serve_cached,
                              "pytorch_eager": points / eager,
                              "pytorch_eager_decoder_only": points / (eager - eager_encoder)},
        "decoder_calls": cold.decoder_calls,
        "masks": {"segserve": len(cold.masks), "segserve_cached": len(cached.masks), "pytorch_eager": len(expected)},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
