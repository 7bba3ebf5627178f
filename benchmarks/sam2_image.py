"""SAM 2 image benchmark at real size: segserve (orchestrator + embedded Triton) vs the PyTorch
references, side by side in one run.

sam2.1-hiera-tiny shapes with random weights (`--size tiny`: the few-layer test config, for smoke
runs), a 1024x1024 photo. Two segserve stacks run together: the default CPU runtime choice
(`cpu_runtime="auto"`: OpenVINO bf16 where the CPU has native bf16, else ONNX Runtime fp32; the JSON
records what it resolved to) and ONNX Runtime fp32. Every side is warmed up, then the sides run in
interleaved rounds; medians and spreads (quartiles, min/max). Prints JSON (and writes it to --out):
- encoder: OpenImage through segserve (decode, transfer, preprocess, encoder) vs PyTorch
  `Sam2Model.get_image_embeddings` with SAM 2's preprocessing, fp32 eager and bf16 autocast;
  speedup = PyTorch / segserve(auto). Targets: >= 2.5x fp32 eager, >= 1.3x bf16 autocast.
- cached prompt: MaskFromPrompt on an open image_id (decoder only, masks back as RLE) vs the same
  decoder graph run in-process with the runtime and precision `auto` serves it with (and with ONNX Runtime
  fp32); ratio = segserve(auto) p50 / in-process p50, target <= 1.5.
- agreement: masks of --agreement-prompts random single-point prompts, segserve(auto) vs segserve
  ONNX Runtime fp32 on the same image (IoU median / min).
- bytes per prompt: client <-> orchestrator and orchestrator <-> Triton, both directions.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIDES = {"auto": "segserve_auto", "onnxruntime-fp32": "segserve_ort_fp32"}
DECODERS = {"auto": "inprocess_auto_decoder", "onnxruntime-fp32": "inprocess_ort_fp32_decoder"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("hiera-tiny", "tiny"), default="hiera-tiny",
                        help="random-weight config (tiny: smoke runs only)")
    parser.add_argument("--artifacts", type=Path)
    parser.add_argument("--encoder-runs", type=int, default=5, help="interleaved encoder rounds (>= 5)")
    parser.add_argument("--prompt-runs", type=int, default=60, help="interleaved cached-prompt rounds (>= 5)")
    parser.add_argument("--agreement-prompts", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="compute threads per side: PyTorch's, and each served or in-process graph's")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from benchmarks import measure

    measure.check_rounds(parser, args.encoder_runs, "--encoder-runs")
    measure.check_rounds(parser, args.prompt_runs, "--prompt-runs")

    from skimage import data
    from transformers import Sam2Model

    from segserve.api import pb
    from segserve.client import SegservClient, image_bytes
    from segserve.common import sam2_transforms
    from segserve.export.sam2 import export_sam2
    from segserve.runtime.stack import start_stack
    from segserve.triton_models.graph_runner import open_graph
    from tests.sam2_reference import pixel_values

    artifacts = args.artifacts or ROOT / "build" / "bench" / ("sam2_real" if args.size == "hiera-tiny" else
                                                            f"sam2_{args.size}")
    torch.set_num_threads(args.threads)
    machine = measure.machine(args.threads)
    records = export_sam2(None, artifacts, random_size=args.size)
    served = {choice: measure.build_served(artifacts, artifacts.parent / f"{artifacts.name}_repository_{choice}", choice,
                                         intra_op_threads=args.threads)
              for choice in SIDES}
    photo = np.asarray(torch.nn.functional.interpolate(
        torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float(), (1024, 1024), mode="bilinear",
        antialias=True)[0].permute(1, 2, 0).round().clamp(0, 255).byte())
    encoded = image_bytes(photo)
    point = (512.0, 300.0, 1)
    model = Sam2Model.from_pretrained(artifacts / "checkpoints" / f"sam2-random-{args.size}").eval()

    def eager_fp32():
        with torch.no_grad():
            return model.get_image_embeddings(pixel_values(photo))

    def eager_bf16():
        with measure.bf16_autocast():
            return model.get_image_embeddings(pixel_values(photo))

    # --- in-process decoder: the runtime `auto` serves, and ONNX Runtime fp32 ----------------------
    encoder = open_graph(artifacts / records["sam2_image_encoder"].file, threads=args.threads)
    decoders = {"auto": open_graph(artifacts / records["sam2_prompt_decoder"].file,
                                   *measure.served_choice(served["auto"], "sam2_prompt_decoder"), args.threads),
                "onnxruntime-fp32": open_graph(artifacts / records["sam2_prompt_decoder"].file, threads=args.threads)}
    feats = encoder.run({"pixel_values": sam2_transforms.preprocess(photo)},
                        ["high_res_feats_0", "high_res_feats_1", "image_embeddings"])
    coords, labels = sam2_transforms.build_prompts(np.array([point[:2]]), np.array([1]), None, photo.shape[:2])
    feeds = {**feats, "point_coords": coords, "point_labels": labels,
             "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)}

    with contextlib.ExitStack() as stack:
        clients = {}
        for choice in SIDES:
            running = stack.enter_context(start_stack(Path(served[choice]["repository"]),
                                                      ROOT / "build" / "bench" / f"triton_sam2_{choice}"))
            clients[choice] = stack.enter_context(SegservClient(running.address))

        # --- encoder: four sides, interleaved ---------------------------------------------------
        def open_with(choice):
            return lambda: clients[choice].open_image(encoded).image_id

        encoder_cases = {"pytorch_fp32_eager": eager_fp32, "pytorch_bf16_autocast": eager_bf16,
                         **{SIDES[c]: open_with(c) for c in SIDES}}
        client_of = {SIDES[c]: clients[c] for c in SIDES}

        def close_opened(name, result):
            if name in client_of:
                client_of[name].close_image(result)

        encoder_times = measure.interleaved(encoder_cases, args.encoder_runs, after=close_opened)

        # --- cached prompt: segserve on an open image vs the in-process decoder -----------------
        image_ids = {c: clients[c].open_image(encoded).image_id for c in SIDES}
        requests = {c: pb.MaskFromPromptRequest(image_id=image_ids[c], points=[pb.Point(x=point[0], y=point[1], label=1)])
                    for c in SIDES}
        response = clients["auto"].stub.MaskFromPrompt(requests["auto"])
        prompt_cases = {**{SIDES[c]: (lambda c=c: clients[c].stub.MaskFromPrompt(requests[c])) for c in SIDES},
                        **{DECODERS[c]: (lambda c=c: decoders[c].run(
                            feeds, ["single_mask", "single_iou"])) for c in SIDES}}
        prompt_times = measure.interleaved(prompt_cases, args.prompt_runs, warmup=3)

        # --- agreement: the same prompts on both stacks ------------------------------------------
        rng = np.random.default_rng(0)
        ious = []
        for x, y in rng.uniform(0, 1024, size=(args.agreement_prompts, 2)):
            masks = [clients[c].mask_from_prompt(image_id=image_ids[c], points=[(float(x), float(y), 1)])
                     .objects[0].masks[0].mask for c in SIDES]
            ious.append(measure.mask_iou(*masks))
        for c in SIDES:
            clients[c].close_image(image_ids[c])

    bytes_client = {"request": requests["auto"].ByteSize(), "response": response.ByteSize()}
    bytes_triton = {
        # POINT_COORDS, POINT_LABELS, MULTIMASK in; SCORES, OBJECT_SCORE, MASKS_RLE out (payload bytes)
        "request": coords.nbytes + labels.nbytes + 1,
        "response": 4 + 4 + len(response.objects[0].masks[0].rle.counts),
    }
    enc = {name: measure.spread(t) for name, t in encoder_times.items()}
    auto_s = enc["segserve_auto"]["median"]
    vs_fp32 = enc["pytorch_fp32_eager"]["median"] / auto_s
    vs_bf16 = enc["pytorch_bf16_autocast"]["median"] / auto_s
    prompt = {name: measure.percentiles(t, 1e3) for name, t in prompt_times.items()}
    prompt_ratio = prompt["segserve_auto"]["p50"] / prompt["inprocess_auto_decoder"]["p50"]
    result = {
        "benchmark": "sam2_image",
        "machine": machine,
        "model": {"config": "sam2.1-hiera-tiny shapes" if args.size == "hiera-tiny" else f"{args.size} (smoke)",
                  "weights": "random", "parameters": records["sam2_image_encoder"].model_config.get("parameters"),
                  "image": "1024x1024"},
        "segserve": {SIDES[c]: served[c] for c in SIDES},
        "encoder": {
            "segserve_open_image_s": enc["segserve_auto"],
            "segserve_ort_fp32_open_image_s": enc["segserve_ort_fp32"],
            "pytorch_eager_s": enc["pytorch_fp32_eager"],
            "pytorch_bf16_autocast_s": enc["pytorch_bf16_autocast"],
            "speedup_vs_eager": round(vs_fp32, 3),
            "speedup_vs_bf16_autocast": round(vs_bf16, 3),
            "speedup_ort_fp32_vs_eager": measure.ratio(enc["pytorch_fp32_eager"]["median"],
                                                       enc["segserve_ort_fp32"]["median"]),
            "targets": {"vs_fp32_eager": measure.target(vs_fp32, 2.5),
                        "vs_bf16_autocast": measure.target(vs_bf16, 1.3)},
        },
        "cached_prompt": {
            "segserve_ms": prompt["segserve_auto"],
            "segserve_ort_fp32_ms": prompt["segserve_ort_fp32"],
            "inprocess_decoder_ms": prompt["inprocess_auto_decoder"],
            "inprocess_ort_decoder_ms": prompt["inprocess_ort_fp32_decoder"],
            "ratio_p50": round(prompt_ratio, 3),
            "ratio_ort_fp32_p50": measure.ratio(prompt["segserve_ort_fp32"]["p50"],
                                                prompt["inprocess_ort_fp32_decoder"]["p50"]),
            "targets": {"ratio_p50": measure.target(prompt_ratio, 1.5, at_least=False)},
        },
        "agreement_auto_vs_ort_fp32": {"prompts": args.agreement_prompts, "mask_iou": measure.iou_summary(ious)},
        "bytes_per_prompt": {"client_orchestrator": bytes_client, "orchestrator_triton_payload": bytes_triton,
                             "image_embeddings_kept_in_triton_bytes": int(sum(v.nbytes for v in feats.values()))},
    }
    machine["torch_threads"] = torch.get_num_threads()
    machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
