"""Text-to-mask benchmark at real size: segserve (orchestrator + the `text_to_mask` Triton ensemble)
vs the PyTorch eager pipeline, and the ensemble vs the sum of its parts run in-process.

One run, side by side, on this machine: grounding-dino-tiny shapes (Swin-T, 800x800 letterbox) and
sam2.1-hiera-tiny shapes, both with random weights, a 640x480 photo, one caption. The box threshold is
set from the eager model's scores so that exactly `--objects` boxes are kept (NMS off) and every
pipeline does the same work. Prints JSON (and writes it to --out):
- end_to_end: MaskFromPrompt(text) through the orchestrator (decode, one ensemble call, RLE masks)
  vs eager PyTorch (GroundingDinoImageProcessorPil + GroundingDinoForObjectDetection +
  post_process_grounded_object_detection, then Sam2Model on the boxes, upscale, threshold, RLE);
  speedup = eager / segserve.
- ensemble_overhead: the `text_to_mask` ensemble called directly on Triton vs the same steps run one
  after another in this process with ONNX Runtime and the same numpy pre/post-processing;
  ratio = ensemble / in-process (target <= 1.1). The ensemble runs Grounding DINO and the SAM 2
  encoder concurrently, so on a machine with spare cores the ratio can drop below 1.
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
os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")

CAPTION = "a person. a flag. a helmet. a rocket."


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times):
    return {"median": statistics.median(times), "runs": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=ROOT / "build" / "bench" / "text_real")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import tritonclient.grpc as grpcclient
    from skimage import data
    from transformers import (AutoTokenizer, GroundingDinoForObjectDetection, GroundingDinoImageProcessorPil,
                              GroundingDinoProcessor, Sam2Model)

    from segserve.client import SegservClient, image_bytes
    from segserve.common import rle, sam2_transforms
    from segserve.common.grounding import CaptionTokenizer, letterbox, select_boxes
    from segserve.common.text_to_mask import detection_prompts, detections_document, objects_document
    from segserve.export.grounding_dino import export_grounding_dino
    from segserve.export.onnx_export import ort_session
    from segserve.export.sam2 import export_sam2
    from segserve.repository.builder import build_repository
    from segserve.runtime.stack import start_stack
    from tests import sam2_reference

    start = time.perf_counter()
    sam2 = export_sam2(None, args.artifacts, random_size="hiera-tiny")
    gd_record = export_grounding_dino(None, args.artifacts, random_size="swin-tiny")
    export_s = time.perf_counter() - start
    repository = args.artifacts.parent / "text_real_repository"
    build_repository(args.artifacts, repository, "embedded")
    photo = np.ascontiguousarray(data.astronaut()[16:496, :])  # 480 x 512
    height, width = photo.shape[:2]
    size = int(gd_record.model_config["image_size"])
    torch.set_num_threads(os.cpu_count() or 1)

    # --- PyTorch eager ------------------------------------------------------------------------
    gd_checkpoint = args.artifacts / "checkpoints" / "grounding-dino-random-swin-tiny"
    image_processor = GroundingDinoImageProcessorPil()
    tokenizer = AutoTokenizer.from_pretrained(gd_checkpoint)
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    gd_model = GroundingDinoForObjectDetection.from_pretrained(gd_checkpoint).eval()
    sam_model = Sam2Model.from_pretrained(args.artifacts / "checkpoints" / "sam2-random-hiera-tiny").eval()

    def eager_detect(box_threshold):
        pixels = image_processor(images=photo, size={"max_height": size, "max_width": size},
                                 pad_size={"height": size, "width": size}, return_tensors="pt")
        text = tokenizer([CAPTION], return_tensors="pt")
        with torch.no_grad():
            outputs = gd_model(**pixels, **text)
        result = processor.post_process_grounded_object_detection(
            outputs, input_ids=text["input_ids"], threshold=box_threshold, text_threshold=0.25,
            target_sizes=[(height, width)])[0]
        order = torch.argsort(-result["scores"], stable=True)[:args.objects]
        return outputs, result["boxes"][order].numpy()

    outputs, _ = eager_detect(0.0)
    scores = torch.sigmoid(outputs.logits[0]).max(-1).values.sort(descending=True).values.numpy()
    box_threshold = float((scores[args.objects - 1] + scores[args.objects]) / 2)

    def eager():
        _, boxes = eager_detect(box_threshold)
        _, _, masks = sam2_reference.predict(sam_model, photo, boxes=boxes, multimask=False)
        return [rle.encode(m[0]) for m in masks]

    eager_objects = len(eager())  # warm-up

    # --- in-process ONNX Runtime, step by step -------------------------------------------------------
    gd = ort_session(args.artifacts / gd_record.file)
    encoder = ort_session(args.artifacts / sam2["sam2_image_encoder"].file)
    decoder = ort_session(args.artifacts / sam2["sam2_prompt_decoder"].file)
    caption_tokenizer = CaptionTokenizer(args.artifacts / gd_record.model_config["tokenizer_dir"])

    def inprocess():
        boxed = letterbox(photo, size)
        sam_pixels = sam2_transforms.preprocess(photo)
        tokens = caption_tokenizer.encode(CAPTION)
        logits, pred_boxes = gd.run(["logits", "pred_boxes"], {
            "pixel_values": boxed.pixel_values[None], "pixel_mask": boxed.pixel_mask[None],
            "input_ids": tokens.input_ids[None], "attention_mask": tokens.attention_mask[None],
            "token_type_ids": tokens.token_type_ids[None]})
        detections = select_boxes(logits[0], pred_boxes[0], tokens.input_ids, (height, width), caption_tokenizer.decode,
                                  box_threshold=box_threshold, text_threshold=0.25, iou_threshold=1.0,
                                  max_objects=args.objects)
        coords, labels = detection_prompts(detections.boxes, (height, width))
        feats = dict(zip(("high_res_feats_0", "high_res_feats_1", "image_embeddings"),
                         encoder.run(None, {"pixel_values": sam_pixels})))
        masks, ious, objects = decoder.run(["single_mask", "single_iou", "object_score_logits"], {
            **feats, "point_coords": coords, "point_labels": labels,
            "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)})
        return json.loads(objects_document(detections_document(detections), masks, ious, objects, (height, width)))

    inprocess_objects = len(inprocess()["objects"])

    # --- segserve: the ensemble alone, then through the orchestrator -------------------------------
    encoded = image_bytes(photo)
    with start_stack(repository, ROOT / "build" / "bench" / "triton_text") as stack, \
            SegservClient(stack.address) as client:
        triton = grpcclient.InferenceServerClient(stack.triton.grpc_url)

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

        def served():
            return client.mask_from_text(encoded, CAPTION, box_threshold=box_threshold, text_threshold=0.25,
                                         max_objects=args.objects, nms_iou_threshold=1.0)

        ensemble_objects = len(ensemble()["objects"])  # warm-up
        served_objects = len(served().objects)
        # Interleaved, one run of each pipeline per round, so that load from elsewhere on the
        # machine falls on all four alike.
        eager_times, inprocess_times, ensemble_times, served_times = [], [], [], []
        for _ in range(args.runs):
            eager_times += timed(eager, 1)
            inprocess_times += timed(inprocess, 1)
            ensemble_times += timed(ensemble, 1)
            served_times += timed(served, 1)
        triton.close()

    result = {
        "benchmark": "text_to_mask",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()},
        "model": {"grounding_dino": f"grounding-dino-tiny shapes ({gd_record.model_config['parameters']} params), "
                                    f"{size}x{size} letterbox", "sam2": "sam2.1-hiera-tiny shapes",
                  "weights": "random", "image": f"{width}x{height}", "caption": CAPTION,
                  "box_threshold": box_threshold, "objects": {"eager": eager_objects, "inprocess": inprocess_objects,
                                                              "ensemble": ensemble_objects, "segserve": served_objects}},
        "export_s": export_s,
        "end_to_end": {
            "segserve_s": summary(served_times),
            "pytorch_eager_s": summary(eager_times),
            "speedup_vs_eager": statistics.median(eager_times) / statistics.median(served_times),
        },
        "ensemble_overhead": {
            "ensemble_s": summary(ensemble_times),
            "inprocess_ort_sum_s": summary(inprocess_times),
            "ratio": statistics.median(ensemble_times) / statistics.median(inprocess_times),
            "target_ratio": 1.1,
            "orchestrator_over_ensemble_s": statistics.median(served_times) - statistics.median(ensemble_times),
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
