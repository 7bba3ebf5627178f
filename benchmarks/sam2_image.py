"""SAM 2 image benchmark at real size: segserve (orchestrator + embedded Triton) vs the reference.

One run, side by side, on this machine: sam2.1-hiera-tiny shapes with random weights, a 1024x1024
photo. Prints JSON (and writes it to --out):
- encoder: OpenImage through segserve (decode, transfer, preprocess, ONNX Runtime encoder) vs
  PyTorch eager `Sam2Model.get_image_embeddings` with SAM 2's preprocessing; ratio = eager / segserve.
- cached prompt: MaskFromPrompt on an open image_id (decoder only, masks back as RLE) vs the same
  ONNX decoder run in-process with ONNX Runtime; ratio = segserve / in-process (target <= 2).
- bytes per prompt: client <-> orchestrator and orchestrator <-> Triton, both directions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=ROOT / "build" / "bench" / "sam2_real")
    parser.add_argument("--encoder-runs", type=int, default=5)
    parser.add_argument("--prompt-runs", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from skimage import data
    from transformers import Sam2Model

    from segserve.api import pb
    from segserve.client import SegservClient, image_bytes
    from segserve.common import sam2_transforms
    from segserve.export.onnx_export import ort_session
    from segserve.export.sam2 import export_sam2
    from segserve.repository.builder import build_repository
    from segserve.runtime.stack import start_stack
    from tests.sam2_reference import pixel_values

    records = export_sam2(None, args.artifacts, random_size="hiera-tiny")
    repository = args.artifacts.parent / "sam2_real_repository"
    build_repository(args.artifacts, repository, "embedded")
    photo = np.asarray(torch.nn.functional.interpolate(
        torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float(), (1024, 1024), mode="bilinear",
        antialias=True)[0].permute(1, 2, 0).round().clamp(0, 255).byte())
    encoded = image_bytes(photo)
    point = (512.0, 300.0, 1)

    # --- PyTorch eager reference ---------------------------------------------------------------
    torch.set_num_threads(os.cpu_count() or 1)
    model = Sam2Model.from_pretrained(args.artifacts / "checkpoints" / "sam2-random-hiera-tiny").eval()

    def eager_encode():
        with torch.no_grad():
            return model.get_image_embeddings(pixel_values(photo))

    eager_encode()  # warm-up
    eager_encoder = timed(eager_encode, args.encoder_runs)

    # --- in-process ONNX Runtime decoder ---------------------------------------------------------
    encoder = ort_session(args.artifacts / records["sam2_image_encoder"].file)
    decoder = ort_session(args.artifacts / records["sam2_prompt_decoder"].file)
    feats = dict(zip(("high_res_feats_0", "high_res_feats_1", "image_embeddings"),
                     encoder.run(None, {"pixel_values": sam2_transforms.preprocess(photo)})))
    coords, labels = sam2_transforms.build_prompts(np.array([point[:2]]), np.array([1]), None, photo.shape[:2])
    feeds = {**feats, "point_coords": coords, "point_labels": labels,
             "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)}
    decode = lambda: decoder.run(["single_mask", "single_iou"], feeds)  # noqa: E731
    decode()
    inprocess_decoder = timed(decode, args.prompt_runs)

    # --- segserve ----------------------------------------------------------------------------------
    with start_stack(repository, ROOT / "build" / "bench" / "triton") as stack, SegservClient(stack.address) as client:
        client.close_image(client.open_image(encoded).image_id)  # warm-up
        opened_ids = []
        serve_encoder = timed(lambda: opened_ids.append(client.open_image(encoded).image_id), args.encoder_runs)
        for image_id in opened_ids[1:]:
            client.close_image(image_id)
        image_id = opened_ids[0]
        request = pb.MaskFromPromptRequest(image_id=image_id, points=[pb.Point(x=point[0], y=point[1], label=1)])
        response = client.stub.MaskFromPrompt(request)
        serve_prompt = timed(lambda: client.stub.MaskFromPrompt(request), args.prompt_runs)
        client.close_image(image_id)
        bytes_client = {"request": request.ByteSize(), "response": response.ByteSize()}
        mask_rle = response.objects[0].masks[0].rle.counts
        bytes_triton = {
            # POINT_COORDS, POINT_LABELS, MULTIMASK in; SCORES, OBJECT_SCORE, MASKS_RLE out (payload bytes)
            "request": coords.nbytes + labels.nbytes + 1,
            "response": 4 + 4 + len(mask_rle),
        }

    result = {
        "benchmark": "sam2_image",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads()},
        "model": {"config": "sam2.1-hiera-tiny shapes", "weights": "random",
                  "parameters": records["sam2_image_encoder"].model_config["parameters"], "image": "1024x1024"},
        "encoder": {
            "segserve_open_image_s": {"median": statistics.median(serve_encoder), "runs": serve_encoder},
            "pytorch_eager_s": {"median": statistics.median(eager_encoder), "runs": eager_encoder},
            "speedup_vs_eager": statistics.median(eager_encoder) / statistics.median(serve_encoder),
            "target_speedup": 1.2,
        },
        "cached_prompt": {
            "segserve_ms": {"p50": percentile(serve_prompt, 50) * 1e3, "p99": percentile(serve_prompt, 99) * 1e3},
            "inprocess_ort_decoder_ms": {"p50": percentile(inprocess_decoder, 50) * 1e3,
                                         "p99": percentile(inprocess_decoder, 99) * 1e3},
            "ratio_p50": percentile(serve_prompt, 50) / percentile(inprocess_decoder, 50),
            "target_ratio_p50": 2.0,
        },
        "bytes_per_prompt": {"client_orchestrator": bytes_client, "orchestrator_triton_payload": bytes_triton,
                             "image_embeddings_kept_in_triton_bytes": int(sum(v.nbytes for v in feats.values()))},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
