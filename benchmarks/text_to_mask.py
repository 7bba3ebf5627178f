"""Text-to-mask benchmark at real size: segserve (orchestrator + the `text_to_mask` Triton ensemble)
vs the PyTorch pipeline in fp32 eager and bf16 autocast, and the ensemble vs the sum of its parts
run in-process.

One run, side by side, on this machine: grounding-dino-tiny shapes (Swin-T, 800x800 letterbox) and
sam2.1-hiera-tiny shapes, both with random weights (`--size tiny`: the test configs, for smoke runs),
a 512x480 photo sent as PNG bytes, one caption. The box threshold is set from the fp32 eager model's scores so that
exactly `--objects` boxes are kept (NMS off) and every pipeline does the same work (the JSON lists the
objects each side kept). Two segserve stacks run together: the default CPU runtime choice
(`cpu_runtime="auto"`: OpenVINO bf16 where the CPU has native bf16; the JSON records what it resolved
to) and ONNX Runtime fp32. Every side is warmed up, then --runs interleaved rounds; medians and
spreads. Prints JSON (and writes it to --out):
- end_to_end: MaskFromPrompt(text) through the orchestrator (decode, one ensemble call, RLE masks)
  vs PyTorch (GroundingDinoImageProcessorPil + GroundingDinoForObjectDetection +
  post_process_grounded_object_detection, then Sam2Model on the boxes, upscale, threshold, RLE) on
  the same PNG bytes (decoded in the timing, as the orchestrator does), fp32 eager and with both
  models under bf16 autocast (post-processing in fp32); speedup = PyTorch / segserve(auto).
- ensemble_overhead: the `text_to_mask` ensemble of the auto stack called directly on Triton vs the
  same steps run one after another in this process with each graph's served runtime and precision and the same
  numpy pre/post-processing; ratio = ensemble / in-process. The ensemble runs
  Grounding DINO and the SAM 2 encoder concurrently, so with spare cores the ratio can drop below 1.
- agreement: segserve(auto) vs segserve ONNX Runtime fp32 detections of the same request, matched as
  sets by box IoU: box IoU, score delta, phrase equality, mask IoU.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")

CAPTION = "a person. a flag. a helmet. a rocket."
SIZES = {"real": ("hiera-tiny", "swin-tiny"), "tiny": ("tiny", "tiny")}  # SAM 2, Grounding DINO
SIDES = {"auto": "segserve_auto", "onnxruntime-fp32": "segserve_ort_fp32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(SIZES), default="real", help="random-weight configs (tiny: smoke runs)")
    parser.add_argument("--artifacts", type=Path)
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (>= 5)")
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="compute threads per side: PyTorch's, and each served or in-process graph's")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from benchmarks import measure

    measure.check_rounds(parser, args.runs, "--runs")

    import tritonclient.grpc as grpcclient
    from PIL import Image
    from skimage import data
    from transformers import (AutoTokenizer, GroundingDinoForObjectDetection, GroundingDinoImageProcessorPil,
                              GroundingDinoProcessor, Sam2Model)

    from segserve.client import SegservClient, image_bytes
    from segserve.common import rle, sam2_transforms
    from segserve.common.grounding import CaptionTokenizer, letterbox, select_boxes
    from segserve.common.text_to_mask import detection_prompts, detections_document, objects_document
    from segserve.export.grounding_dino import export_grounding_dino
    from segserve.export.sam2 import export_sam2
    from segserve.runtime.stack import start_stack
    from segserve.triton_models.graph_runner import open_graph
    from tests import sam2_reference

    sam_size, gd_size = SIZES[args.size]
    artifacts = args.artifacts or ROOT / "build" / "bench" / f"text_{args.size}"
    threads = measure.pin_threads(args.threads)
    machine = measure.machine(args.threads)
    start = time.perf_counter()
    sam2 = export_sam2(None, artifacts, random_size=sam_size)
    gd_record = export_grounding_dino(None, artifacts, random_size=gd_size)
    export_s = round(time.perf_counter() - start, 1)
    served = {c: measure.build_served(artifacts, artifacts.parent / f"{artifacts.name}_repository_{c}", c,
                                     intra_op_threads=args.threads) for c in SIDES}
    photo = np.ascontiguousarray(data.astronaut()[16:496, :])  # 480 x 512
    height, width = photo.shape[:2]
    size = int(gd_record.model_config["image_size"])

    # --- PyTorch: fp32 eager and bf16 autocast ---------------------------------------------------
    gd_checkpoint = artifacts / "checkpoints" / f"grounding-dino-random-{gd_size}"
    image_processor = GroundingDinoImageProcessorPil()
    tokenizer = AutoTokenizer.from_pretrained(gd_checkpoint)
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    gd_model = GroundingDinoForObjectDetection.from_pretrained(gd_checkpoint).eval()
    sam_model = Sam2Model.from_pretrained(artifacts / "checkpoints" / f"sam2-random-{sam_size}").eval()
    models = {"fp32": (gd_model, sam_model),
              "bf16": (measure.AutocastBf16(gd_model), measure.AutocastBf16(sam_model))}

    encoded = image_bytes(photo)

    def decoded() -> np.ndarray:  # the orchestrator decodes the same bytes
        with Image.open(io.BytesIO(encoded)) as image:
            return np.array(image.convert("RGB"))  # a writable copy (torch warns on read-only arrays)

    def eager_detect(box_threshold, precision="fp32", rgb=photo):
        pixels = image_processor(images=rgb, size={"max_height": size, "max_width": size},
                                 pad_size={"height": size, "width": size}, return_tensors="pt")
        text = tokenizer([CAPTION], return_tensors="pt")
        with torch.no_grad():
            outputs = models[precision][0](**pixels, **text)
        result = processor.post_process_grounded_object_detection(
            outputs, input_ids=text["input_ids"], threshold=box_threshold, text_threshold=0.25,
            target_sizes=[(height, width)])[0]
        order = torch.argsort(-result["scores"], stable=True)[:args.objects]
        return outputs, result["boxes"][order].numpy()

    outputs, _ = eager_detect(0.0)
    scores = torch.sigmoid(outputs.logits[0]).max(-1).values.sort(descending=True).values.numpy()
    box_threshold = float((scores[args.objects - 1] + scores[args.objects]) / 2)

    def eager(precision="fp32"):
        rgb = decoded()
        _, boxes = eager_detect(box_threshold, precision, rgb)
        if not len(boxes):
            return []
        _, _, masks = sam2_reference.predict(models[precision][1], rgb, boxes=boxes, multimask=False)
        return [rle.encode(m[0]) for m in masks]

    # --- in-process, step by step, with the runtime and precision `auto` serves ---------------------
    runtime = {name: measure.served_choice(served["auto"], name)
               for name in ("grounding_dino", "sam2_image_encoder", "sam2_prompt_decoder")}
    gd = open_graph(artifacts / gd_record.file, *runtime["grounding_dino"], args.threads)
    encoder = open_graph(artifacts / sam2["sam2_image_encoder"].file, *runtime["sam2_image_encoder"], args.threads)
    decoder = open_graph(artifacts / sam2["sam2_prompt_decoder"].file, *runtime["sam2_prompt_decoder"], args.threads)
    caption_tokenizer = CaptionTokenizer(artifacts / gd_record.model_config["tokenizer_dir"])

    def inprocess():
        boxed = letterbox(photo, size)
        sam_pixels = sam2_transforms.preprocess(photo)
        tokens = caption_tokenizer.encode(CAPTION)
        found = gd.run({"pixel_values": boxed.pixel_values[None], "pixel_mask": boxed.pixel_mask[None],
                        "input_ids": tokens.input_ids[None], "attention_mask": tokens.attention_mask[None],
                        "token_type_ids": tokens.token_type_ids[None]}, ["logits", "pred_boxes"])
        detections = select_boxes(found["logits"][0], found["pred_boxes"][0], tokens.input_ids, (height, width),
                                  caption_tokenizer.decode, box_threshold=box_threshold, text_threshold=0.25,
                                  iou_threshold=1.0, max_objects=args.objects)
        coords, labels = detection_prompts(detections.boxes, (height, width))
        feats = encoder.run({"pixel_values": sam_pixels}, ["high_res_feats_0", "high_res_feats_1", "image_embeddings"])
        decoded = decoder.run({
            **feats, "point_coords": coords, "point_labels": labels,
            "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)},
            ["single_mask", "single_iou", "object_score_logits"])
        return json.loads(objects_document(detections_document(detections), decoded["single_mask"],
                                          decoded["single_iou"], decoded["object_score_logits"], (height, width)))

    # --- segserve: both stacks through the orchestrator, the auto ensemble alone ---------------------
    last: dict[str, object] = {}
    with contextlib.ExitStack() as stack:
        running = {c: stack.enter_context(start_stack(Path(served[c]["repository"]),
                                                      ROOT / "build" / "bench" / f"triton_text_{c}")) for c in SIDES}
        clients = {c: stack.enter_context(SegservClient(running[c].address)) for c in SIDES}
        triton = grpcclient.InferenceServerClient(running["auto"].triton.grpc_url)
        stack.callback(triton.close)

        def tensor(name, array, dtype):
            t = grpcclient.InferInput(name, list(array.shape), dtype)
            t.set_data_from_numpy(array)
            return t

        def ensemble():
            inputs = [tensor("IMAGE", photo, "UINT8"), tensor("TEXT", np.array([CAPTION.encode()], dtype=object), "BYTES"),
                      tensor("BOX_THRESHOLD", np.array([box_threshold], np.float32), "FP32"),
                      tensor("TEXT_THRESHOLD", np.array([0.25], np.float32), "FP32"),
                      tensor("IOU_THRESHOLD", np.array([1.0], np.float32), "FP32"),
                      tensor("MAX_OBJECTS", np.array([args.objects], np.int32), "INT32")]
            return json.loads(triton.infer("text_to_mask", inputs).as_numpy("OBJECTS")[0])

        def served_by(choice):
            return lambda: clients[choice].mask_from_text(encoded, CAPTION, box_threshold=box_threshold,
                                                          text_threshold=0.25, max_objects=args.objects,
                                                          nms_iou_threshold=1.0)

        cases = {"pytorch_fp32_eager": eager, "pytorch_bf16_autocast": lambda: eager("bf16"),
                 **{SIDES[c]: served_by(c) for c in SIDES}, "ensemble_auto": ensemble, "inprocess_auto": inprocess}
        times = measure.interleaved(cases, args.runs, after=last.__setitem__)

    t = {name: measure.spread(v) for name, v in times.items()}
    speedup = t["pytorch_fp32_eager"]["median"] / t["segserve_auto"]["median"]
    objects = {"pytorch_fp32_eager": len(last["pytorch_fp32_eager"]), "pytorch_bf16_autocast": len(last["pytorch_bf16_autocast"]),
               **{SIDES[c]: len(last[SIDES[c]].objects) for c in SIDES},
               "ensemble_auto": len(last["ensemble_auto"]["objects"]), "inprocess_auto": len(last["inprocess_auto"]["objects"])}
    result = {
        "benchmark": "text_to_mask",
        "machine": machine,
        "threads": threads,
        "model": {"grounding_dino": f"{gd_size} shapes ({gd_record.model_config.get('parameters')} params), "
                                    f"{size}x{size} letterbox", "sam2": f"{sam_size} shapes",
                  "weights": "random", "image": f"{width}x{height}", "caption": CAPTION,
                  "box_threshold": box_threshold, "objects": objects},
        "segserve": {SIDES[c]: served[c] for c in SIDES},
        "export_s": export_s,
        "end_to_end": {
            "segserve_s": t["segserve_auto"],
            "segserve_ort_fp32_s": t["segserve_ort_fp32"],
            "pytorch_eager_s": t["pytorch_fp32_eager"],
            "pytorch_bf16_autocast_s": t["pytorch_bf16_autocast"],
            "speedup_vs_eager": round(speedup, 3),
            "speedup_vs_bf16_autocast": measure.ratio(t["pytorch_bf16_autocast"]["median"], t["segserve_auto"]["median"]),
            "speedup_ort_fp32_vs_eager": measure.ratio(t["pytorch_fp32_eager"]["median"], t["segserve_ort_fp32"]["median"]),
        },
        "ensemble_overhead": {
            "runtime": {name: " ".join(choice) for name, choice in runtime.items()},
            "ensemble_s": t["ensemble_auto"],
            "inprocess_sum_s": t["inprocess_auto"],
            "ratio": measure.ratio(t["ensemble_auto"]["median"], t["inprocess_auto"]["median"]),
            "orchestrator_over_ensemble_s": round(t["segserve_auto"]["median"] - t["ensemble_auto"]["median"], 4),
        },
        "agreement_auto_vs_ort_fp32": measure.match_detections(last["segserve_auto"].objects,
                                                               last["segserve_ort_fp32"].objects),
    }
    machine["torch_threads"] = torch.get_num_threads()
    measure.publish(result, machine, args.out)


if __name__ == "__main__":
    main()
