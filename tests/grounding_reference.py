"""Grounding DINO in PyTorch, post-processed by transformers' GroundingDinoProcessor: the
reference the served detections are compared with. Imports nothing from segserve."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def grounding_detector(artifacts: Path, image: np.ndarray, caption: str):
    """Run the exported random checkpoint on `image` (the processor's own letterbox at the export
    size) and return (detect, scores): `detect(box_threshold, text_threshold)` gives boxes, scores
    and phrases best first, as segserve orders them; `scores` are every query's best score, sorted
    descending (to choose thresholds with a clear cut)."""
    from transformers import (AutoTokenizer, GroundingDinoForObjectDetection, GroundingDinoImageProcessorPil,
                              GroundingDinoProcessor)

    checkpoint = artifacts / "checkpoints" / "grounding-dino-random-tiny"
    # the export size, read from the artifacts' manifest file (data; no segserve code runs here)
    records = {r["name"]: r for r in json.loads((artifacts / "manifest.json").read_text())["artifacts"]}
    size = int(records["grounding_dino"]["model_config"]["image_size"])
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(),
                                       tokenizer=AutoTokenizer.from_pretrained(checkpoint))
    model = GroundingDinoForObjectDetection.from_pretrained(checkpoint).eval()
    pixels = processor.image_processor(images=image, size={"max_height": size, "max_width": size},
                                       pad_size={"height": size, "width": size}, return_tensors="pt")
    text = processor.tokenizer([caption], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**pixels, **text)
    scores = torch.sigmoid(outputs.logits[0]).max(-1).values.sort(descending=True).values.numpy()

    def detect(box_threshold: float, text_threshold: float):
        result = processor.post_process_grounded_object_detection(
            outputs, input_ids=text["input_ids"], threshold=box_threshold, text_threshold=text_threshold,
            target_sizes=[image.shape[:2]])[0]
        order = torch.argsort(-result["scores"], stable=True)
        return (result["boxes"][order].numpy(), result["scores"][order].numpy(),
                [result["text_labels"][i] for i in order])

    return detect, scores
