"""The `Segment` RPC: whole-image panoptic / semantic / instance segmentation with Mask2Former.

The orchestrator validates the request, decodes the image once and makes one call to Triton's
`mask2former_segment` ensemble (preprocess -> batched graph -> postprocess). Only RGB pixels go in
and encoded results (label-map PNG or runs, segments with RLE masks) come back; the logits stay in
Triton. Label names, default thresholds and model info come from the postprocess model's config,
read once per orchestrator.
"""
from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass
from typing import Callable

import grpc
import numpy as np

from segserve.api import pb
from segserve.common import segments as seg

from .errors import ServiceError, invalid
from .model_info import add_graphs, checkpoint_name
from .rpc import NO_SCOPE, CallScope
from .triton_pool import TritonPool, tensor

ENSEMBLE = "mask2former_segment"
POSTPROCESS = "mask2former_postprocess"
TASKS = {pb.SEGMENT_TASK_UNSPECIFIED: "panoptic", pb.SEGMENT_TASK_PANOPTIC: "panoptic",
         pb.SEGMENT_TASK_SEMANTIC: "semantic", pb.SEGMENT_TASK_INSTANCE: "instance"}
TASK_ENUM = {"panoptic": pb.SEGMENT_TASK_PANOPTIC, "semantic": pb.SEGMENT_TASK_SEMANTIC,
             "instance": pb.SEGMENT_TASK_INSTANCE}
THRESHOLDS = ("threshold", "mask_threshold", "overlap_mask_area_threshold")
NO_MODEL = ("Segment needs a Mask2Former model and this server's model repository has none: export it "
            "(`segserve export --families mask2former`) and rebuild the repository")


@dataclass(frozen=True)
class SegmentModel:
    num_labels: int
    defaults: dict[str, float]
    info: pb.ModelInfo


def _model_info(info: dict) -> pb.ModelInfo:
    message = pb.ModelInfo(family="mask2former")
    entry = info.get("mask2former")
    if entry:
        message.checkpoint = checkpoint_name(entry["checkpoint"])
        message.checkpoint_sha256 = entry["checkpoint_sha256"] or ""
        message.random_weights = bool(entry["random_weights"])
        message.artifact_sha256["mask2former"] = entry["sha256"]
        add_graphs(message, info, ["mask2former"])
    return message


_ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")


def ensemble_message(error: ServiceError) -> ServiceError:
    """A step's refusal reads "in ensemble 'x', <message>": the client sees the step's message."""
    field, sep, message = error.message.partition(": ")
    return ServiceError(error.code, f"{field}{sep}{_ENSEMBLE_PREFIX.sub('', message)}")


class Segmenter:
    def __init__(self, pool: TritonPool):
        self.pool = pool
        self._model: SegmentModel | None = None
        self._lock = threading.Lock()

    def model(self) -> SegmentModel:
        """The served Mask2Former's facts; UNIMPLEMENTED when the repository has none (not cached,
        so a repository that gains one later is picked up)."""
        with self._lock:
            if self._model is not None:
                return self._model
        try:
            params = self.pool.any().model_parameters(POSTPROCESS)
        except ServiceError as exc:
            if exc.code == grpc.StatusCode.UNIMPLEMENTED:
                raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, NO_MODEL) from exc
            raise
        model = SegmentModel(
            num_labels=int(params["num_labels"]),
            defaults={name: float(params.get(name, default)) for name, default in
                      zip(THRESHOLDS, (0.5, 0.5, 0.8))},
            info=_model_info(json.loads(params.get("model_info") or "{}")),
        )
        with self._lock:
            self._model = model
        return model

    def segment(self, request: pb.SegmentRequest, decode: Callable[[bytes], np.ndarray],
                scope: CallScope = NO_SCOPE) -> pb.SegmentResponse:
        model = self.model()
        if request.task not in TASKS:
            raise invalid("task", f"unknown task {request.task}; use SEGMENT_TASK_PANOPTIC, _SEMANTIC or _INSTANCE")
        task = TASKS[request.task]
        thresholds = {}
        for name in THRESHOLDS:
            value = getattr(request, name) if request.HasField(name) else model.defaults[name]
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise invalid(name, f"must lie in [0, 1], got {value}")
            thresholds[name] = value
        for i, label in enumerate(request.label_ids_to_fuse):
            if not 0 <= label < model.num_labels:
                raise invalid(f"label_ids_to_fuse[{i}]", f"{label} is not a label id (0 to {model.num_labels - 1})")
        if request.label_map_format not in (pb.LABEL_MAP_FORMAT_PNG, pb.LABEL_MAP_FORMAT_RLE, pb.LABEL_MAP_FORMAT_NONE):
            raise invalid("label_map_format", f"unknown format {request.label_map_format}")
        image = decode(request.image)
        height, width = image.shape[:2]
        fuse = np.array([list(request.label_ids_to_fuse) or [-1]], dtype=np.int32)  # -1: padding, never empty
        inputs = [
            tensor("IMAGE", image[None], "UINT8"),
            tensor("TASK", np.array([[task.encode()]], dtype=object), "BYTES"),
            *(tensor(name.upper(), np.array([[thresholds[name]]], dtype=np.float32), "FP32") for name in THRESHOLDS),
            tensor("LABEL_IDS_TO_FUSE", fuse, "INT32"),
            tensor("LABEL_MAP_FORMAT", np.array([[request.label_map_format]], dtype=np.int32), "INT32"),
        ]
        try:
            with self.pool.call() as replica:
                result = replica.infer(ENSEMBLE, inputs, ["LABEL_MAP", "SEGMENTS"], "image", scope)
        except ServiceError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:  # the ensemble's steps never refuse with NOT_FOUND
                raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, NO_MODEL) from exc
            raise ensemble_message(exc) from exc
        document = json.loads(result.as_numpy("SEGMENTS").reshape(-1)[0])
        encoded = result.as_numpy("LABEL_MAP").reshape(-1)[0]
        response = pb.SegmentResponse(width=width, height=height, task=TASK_ENUM[task], model=model.info)
        response.label_map.height, response.label_map.width = height, width
        if request.label_map_format == pb.LABEL_MAP_FORMAT_PNG:
            response.label_map.png = encoded
        elif request.label_map_format == pb.LABEL_MAP_FORMAT_RLE:
            values, lengths = seg.runs_from_bytes(encoded)
            response.label_map.run_values.extend(values.tolist())
            response.label_map.run_lengths.extend(lengths.tolist())
        for item in document["segments"]:
            segment = response.segments.add(
                id=item["id"], label_id=item["label_id"], label_name=item["label_name"], score=item["score"],
                area=item["area"], bbox=item["bbox"], was_fused=item["was_fused"])
            segment.mask.size.extend(item["rle"]["size"])
            segment.mask.counts = item["rle"]["counts"]
        return response
