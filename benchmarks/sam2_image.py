"""SAM 2 image benchmark at real size: segserve (orchestrator + embedded Triton) vs the PyTorch
references, side by side in one run.

sam2.1-hiera-tiny shapes with random weights (`--size tiny`: the few-layer test config, for smoke
runs), a 1024x1024 photo sent as PNG bytes. Two segserve stacks run together: the default CPU runtime
choice (`cpu_runtime="auto"`: OpenVINO bf16 where the CPU has native bf16, else ONNX Runtime fp32; the
JSON records what it resolved to) and ONNX Runtime fp32. Every side does the same work from the same
input with the same compute threads (--threads); each is warmed up, then the sides run in
interleaved rounds; medians and spreads (quartiles, min/max). Prints JSON (and writes it to --out):
- encoder: OpenImage on the PNG bytes through segserve (decode, transfer, preprocess, encoder) vs
  PyTorch decoding the same bytes, SAM 2's preprocessing and `Sam2Model.get_image_embeddings`, fp32
  eager and bf16 autocast; speedup = PyTorch / segserve.
- click on a cached image: MaskFromPrompt on an open image_id through segserve (client -> orchestrator
  -> Triton and back: prompt transform, decoder, upscale to 1024x1024, threshold, RLE) vs the same
  click in this process, with the image's embeddings already computed: prompt transform, decoder,
  upscale to the image size, threshold, RLE. In-process decoders: the served decoder graph with the
  runtime and precision `auto` serves it with, and with ONNX Runtime fp32; PyTorch `Sam2Model`
  fp32 eager and bf16 autocast. ratio = segserve / in-process (the cost of serving).
- agreement: masks of --agreement-prompts random single-point prompts, segserve(auto) vs segserve
  ONNX Runtime fp32 on the same image (IoU median / min).
- bytes per click, measured on the real messages (serialized protobuf size): client <-> orchestrator
  (the MaskFromPrompt request and response) and orchestrator <-> Triton (every ModelInfer request and
  response the click caused, counted by an interceptor on the orchestrator's Triton channel); also
  the OpenImage upload, for comparison.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIDES = {"auto": "segserve_auto", "onnxruntime-fp32": "segserve_ort_fp32"}
DECODERS = {"auto": "inprocess_auto_decoder", "onnxruntime-fp32": "inprocess_ort_fp32_decoder"}
PYTORCH = {"fp32": "pytorch_fp32_eager", "bf16": "pytorch_bf16_autocast"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("hiera-tiny", "tiny"), default="hiera-tiny",
                        help="random-weight config (tiny: smoke runs only)")
    parser.add_argument("--artifacts", type=Path)
    parser.add_argument("--encoder-runs", type=int, default=5, help="interleaved encoder rounds (>= 5)")
    parser.add_argument("--prompt-runs", type=int, default=60, help="interleaved click rounds (>= 5)")
    parser.add_argument("--agreement-prompts", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="compute threads per side: PyTorch's, and each served or in-process graph's")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from benchmarks import measure

    measure.check_rounds(parser, args.encoder_runs, "--encoder-runs")
    measure.check_rounds(parser, args.prompt_runs, "--prompt-runs")

    from PIL import Image
    from skimage import data
    from transformers import Sam2Model

    from segserve.api import pb
    from segserve.client import SegservClient, image_bytes
    from segserve.common import sam2_transforms
    from segserve.export.sam2 import export_sam2
    from segserve.runtime.stack import start_stack
    from segserve.triton_models.graph_runner import open_graph
    from tests.sam2_reference import pixel_values

    artifacts = measure.sam2_artifacts(args.artifacts, args.size)
    threads = measure.pin_threads(args.threads)
    machine = measure.machine(args.threads)
    records = export_sam2(None, artifacts, random_size=args.size)
    served = {choice: measure.build_served(artifacts, artifacts.parent / f"{artifacts.name}_repository_{choice}", choice,
                                         intra_op_threads=args.threads)
              for choice in SIDES}
    photo = np.asarray(torch.nn.functional.interpolate(
        torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float(), (1024, 1024), mode="bilinear",
        antialias=True)[0].permute(1, 2, 0).round().clamp(0, 255).byte())
    encoded = image_bytes(photo)
    hw = photo.shape[:2]
    point = (512.0, 300.0, 1)
    model = Sam2Model.from_pretrained(artifacts / "checkpoints" / f"sam2-random-{args.size}").eval()

    def decoded() -> np.ndarray:  # the served side decodes the same bytes in the orchestrator
        with Image.open(io.BytesIO(encoded)) as image:
            return np.array(image.convert("RGB"))  # a writable copy (torch warns on read-only arrays)

    def eager_fp32():
        with torch.no_grad():
            return model.get_image_embeddings(pixel_values(decoded()))

    def eager_bf16():
        with measure.bf16_autocast():
            return model.get_image_embeddings(pixel_values(decoded()))

    # --- in-process clicks on a cached image: the same steps as the served click ----------------
    encoder = open_graph(artifacts / records["sam2_image_encoder"].file, threads=args.threads)
    decoders = {"auto": open_graph(artifacts / records["sam2_prompt_decoder"].file,
                                   *measure.served_choice(served["auto"], "sam2_prompt_decoder"), args.threads),
                "onnxruntime-fp32": open_graph(artifacts / records["sam2_prompt_decoder"].file, threads=args.threads)}
    feats = encoder.run({"pixel_values": sam2_transforms.preprocess(photo)},
                        ["high_res_feats_0", "high_res_feats_1", "image_embeddings"])
    empty_mask = {"mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)}

    def inprocess_click(choice):
        # sam2_image_session's decode step: prompt transform, decoder, upscale, threshold, RLE
        coords, labels = sam2_transforms.build_prompts(np.array([point[:2]]), np.array([point[2]]), None, hw)
        out = decoders[choice].run({**feats, "point_coords": coords, "point_labels": labels, **empty_mask},
                                   ["single_mask", "single_iou", "object_score_logits"])
        return measure.rle_masks(sam2_transforms.masks_from_logits(out["single_mask"], hw, 0.0))

    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixel_values(photo))  # cached, as segserve's open image

    def pytorch_click(precision):
        scale = torch.tensor([1024.0 / hw[1], 1024.0 / hw[0]])
        with measure.bf16_autocast() if precision == "bf16" else torch.no_grad():
            out = model(image_embeddings=embeddings, input_points=(torch.tensor([point[:2]]) * scale)[None, None],
                        input_labels=torch.tensor([[[point[2]]]]), multimask_output=False)
        logits = torch.nn.functional.interpolate(out.pred_masks[0].float(), hw, mode="bilinear", align_corners=False)
        return measure.rle_masks((logits > 0).numpy())

    with contextlib.ExitStack() as stack:
        clients, wires = {}, {}
        for choice in SIDES:
            running = stack.enter_context(start_stack(Path(served[choice]["repository"]),
                                                      ROOT / "build" / "bench" / f"triton_sam2_{args.size}_{choice}"))
            clients[choice] = stack.enter_context(SegservClient(running.address))
            wires[choice] = measure.TritonWire(running)

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

        # --- click on a cached image: segserve vs the same work in-process ----------------------
        with wires["auto"].record():
            open_request = pb.OpenImageRequest(image=encoded)
            opened = clients["auto"].stub.OpenImage(open_request)
        open_bytes = {"client_orchestrator": {"request": len(open_request.SerializeToString()),
                                              "response": len(opened.SerializeToString())},
                      "orchestrator_triton": wires["auto"].summary()}
        image_ids = {"auto": opened.image_id,
                     **{c: clients[c].open_image(encoded).image_id for c in SIDES if c != "auto"}}
        requests = {c: pb.MaskFromPromptRequest(image_id=image_ids[c], points=[pb.Point(x=point[0], y=point[1], label=1)])
                    for c in SIDES}
        prompt_cases = {**{SIDES[c]: (lambda c=c: clients[c].stub.MaskFromPrompt(requests[c])) for c in SIDES},
                        **{DECODERS[c]: (lambda c=c: inprocess_click(c)) for c in SIDES},
                        **{PYTORCH[p]: (lambda p=p: pytorch_click(p)) for p in PYTORCH}}
        last: dict = {}
        prompt_times = measure.interleaved(prompt_cases, args.prompt_runs, warmup=3, after=last.__setitem__)
        with wires["auto"].record():
            response = clients["auto"].stub.MaskFromPrompt(requests["auto"])
        click_triton = wires["auto"].summary()

        # --- agreement: the same prompts on both stacks ------------------------------------------
        rng = np.random.default_rng(0)
        ious = []
        for x, y in rng.uniform(0, 1024, size=(args.agreement_prompts, 2)):
            masks = [clients[c].mask_from_prompt(image_id=image_ids[c], points=[(float(x), float(y), 1)])
                     .objects[0].masks[0].mask for c in SIDES]
            ious.append(measure.mask_iou(*masks))
        for c in SIDES:
            clients[c].close_image(image_ids[c])

    served_mask = response.objects[0].masks[0]
    work = {name: {"masks": len(last[name]), "rle_counts_chars": sum(len(m["counts"]) for m in last[name])}
            for name in (*DECODERS.values(), *PYTORCH.values())}
    work.update({SIDES[c]: {"masks": sum(len(o.masks) for o in last[SIDES[c]].objects),
                            "rle_counts_chars": sum(len(m.rle.counts) for o in last[SIDES[c]].objects for m in o.masks)}
                 for c in SIDES})
    enc = {name: measure.spread(t) for name, t in encoder_times.items()}
    auto_s = enc["segserve_auto"]["median"]
    prompt = {name: measure.percentiles(t, 1e3) for name, t in prompt_times.items()}
    result = {
        "benchmark": "sam2_image",
        "machine": machine,
        "threads": threads,
        "model": {"config": "sam2.1-hiera-tiny shapes" if args.size == "hiera-tiny" else f"{args.size} (smoke)",
                  "weights": "random", "parameters": records["sam2_image_encoder"].model_config.get("parameters"),
                  "image": "1024x1024 PNG", "image_bytes": len(encoded)},
        "segserve": {SIDES[c]: served[c] for c in SIDES},
        "encoder": {
            "segserve_open_image_s": enc["segserve_auto"],
            "segserve_ort_fp32_open_image_s": enc["segserve_ort_fp32"],
            "pytorch_eager_s": enc["pytorch_fp32_eager"],
            "pytorch_bf16_autocast_s": enc["pytorch_bf16_autocast"],
            "speedup_vs_eager": measure.ratio(enc["pytorch_fp32_eager"]["median"], auto_s),
            "speedup_vs_bf16_autocast": measure.ratio(enc["pytorch_bf16_autocast"]["median"], auto_s),
            "speedup_ort_fp32_vs_eager": measure.ratio(enc["pytorch_fp32_eager"]["median"],
                                                       enc["segserve_ort_fp32"]["median"]),
        },
        "cached_click": {
            "work_per_click": "prompt transform, decoder (single mask), upscale to 1024x1024, threshold, RLE",
            "segserve_ms": prompt["segserve_auto"],
            "segserve_ort_fp32_ms": prompt["segserve_ort_fp32"],
            "inprocess_decoder_ms": prompt["inprocess_auto_decoder"],
            "inprocess_ort_decoder_ms": prompt["inprocess_ort_fp32_decoder"],
            "pytorch_eager_ms": prompt["pytorch_fp32_eager"],
            "pytorch_bf16_autocast_ms": prompt["pytorch_bf16_autocast"],
            "ratio_p50": measure.ratio(prompt["segserve_auto"]["p50"], prompt["inprocess_auto_decoder"]["p50"]),
            "ratio_ort_fp32_p50": measure.ratio(prompt["segserve_ort_fp32"]["p50"],
                                                prompt["inprocess_ort_fp32_decoder"]["p50"]),
            "ratio_vs_pytorch_eager_p50": measure.ratio(prompt["segserve_auto"]["p50"],
                                                        prompt["pytorch_fp32_eager"]["p50"]),
            "work_done": work,
        },
        "agreement_auto_vs_ort_fp32": {"prompts": args.agreement_prompts, "mask_iou": measure.iou_summary(ious)},
        "bytes_measured": {
            "click": {"client_orchestrator": {"request": len(requests["auto"].SerializeToString()),
                                              "response": len(response.SerializeToString())},
                      "orchestrator_triton": click_triton,
                      "mask_rle_counts_bytes": len(served_mask.rle.counts)},
            "open_image": open_bytes,
            "image_embeddings_kept_in_triton_bytes": int(sum(v.nbytes for v in feats.values())),
        },
    }
    machine["torch_threads"] = torch.get_num_threads()
    measure.publish(result, machine, args.out)


if __name__ == "__main__":
    main()
