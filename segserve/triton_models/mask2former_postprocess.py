"""Mask2Former post-processing, the last step of the `mask2former_segment` ensemble.

Inputs per image: the graph's CLASS_LOGITS [Q, C+1] and MASK_LOGITS [Q, S/4, S/4], ORIGINAL_SIZE,
and the request's TASK (panoptic | semantic | instance), THRESHOLD, MASK_THRESHOLD,
OVERLAP_MASK_AREA_THRESHOLD, LABEL_IDS_TO_FUSE (negative entries are padding) and LABEL_MAP_FORMAT
(0 PNG, 1 runs, 2 none). Outputs: LABEL_MAP (encoded map of segment ids at the original size) and
SEGMENTS (JSON: id, label_id, label_name, score, area, bbox, COCO RLE mask). Only these small
encodings leave Triton. The work is `segserve.common.segments` / `mask2former_post`; label names
come from the checkpoint's id2label in this model's parameters.
"""
from __future__ import annotations

import json
import math

import numpy as np
import triton_python_backend_utils as pb_utils

from segserve.common import segments as seg
from segserve.common.status import INVALID_ARGUMENT, ModelRefusal
from segserve.triton_models.common import parameters, required_input, respond_each


def _fraction(value, name: str) -> float:
    # Thresholds travel as float32 (the API's float); take the decimal the caller meant (0.8, not
    # 0.800000011920929), as the reference post-processing compares with Python floats.
    value = float(str(np.float32(value)))
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ModelRefusal(INVALID_ARGUMENT, f"{name} must lie in [0, 1], got {value}")
    return value


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]
        params = parameters(args)
        self.id2label = {int(k): v for k, v in json.loads(params.get("id2label", "{}")).items()}
        self.num_labels = int(params["num_labels"])
        self.mask_size = int(params.get("mask_size", "384")) or None

    def execute(self, requests):
        return respond_each(requests, self._handle, self.name)

    def _handle(self, request):
        classes, masks = required_input(request, "CLASS_LOGITS"), required_input(request, "MASK_LOGITS")
        sizes, tasks = required_input(request, "ORIGINAL_SIZE"), required_input(request, "TASK")
        thresholds = [required_input(request, n) for n in ("THRESHOLD", "MASK_THRESHOLD", "OVERLAP_MASK_AREA_THRESHOLD")]
        fuse, formats = required_input(request, "LABEL_IDS_TO_FUSE"), required_input(request, "LABEL_MAP_FORMAT")
        label_maps, documents = [], []
        for b in range(classes.shape[0]):
            task = tasks[b].reshape(-1)[0]
            task = task.decode() if isinstance(task, bytes) else str(task)
            if task not in seg.TASKS:
                raise ModelRefusal(INVALID_ARGUMENT, f"TASK must be one of {seg.TASKS}, got {task!r}")
            threshold, mask_threshold, overlap = (_fraction(t[b].reshape(-1)[0], n) for t, n in zip(
                thresholds, ("THRESHOLD", "MASK_THRESHOLD", "OVERLAP_MASK_AREA_THRESHOLD")))
            labels = [int(v) for v in fuse[b].reshape(-1) if v >= 0]
            if any(v >= self.num_labels for v in labels):
                raise ModelRefusal(INVALID_ARGUMENT, f"LABEL_IDS_TO_FUSE must be label ids below {self.num_labels}")
            height, width = (int(v) for v in sizes[b].reshape(-1)[:2])
            result = seg.segment_image(task, classes[b], masks[b], (height, width), self.id2label, threshold,
                                       mask_threshold, overlap, labels, mask_size=self.mask_size)
            label_maps.append([seg.encode_label_map(result.segment_map, int(formats[b].reshape(-1)[0]))])
            documents.append([json.dumps({"task": task, "segments": result.segments}).encode()])
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("LABEL_MAP", np.array(label_maps, dtype=object)),
            pb_utils.Tensor("SEGMENTS", np.array(documents, dtype=object)),
        ])
