"""Step of the `text_to_mask` / `grounding_detect` ensembles: Grounding DINO's logits and boxes ->
detections and SAM 2 box prompts (`segserve.common.grounding.select_boxes`, then
`segserve.common.text_to_mask.detection_prompts`).

DETECTIONS is a JSON document (count, phrases, scores, xyxy boxes in original pixels, best first).
POINT_COORDS / POINT_LABELS [P, 3, ...] are the boxes as SAM 2 prompts in the 1024 frame; with no
detection P = 1 (a dummy prompt whose masks the postprocess drops: the decoder cannot take P = 0).
MASK_INPUT / HAS_MASK_INPUT are the decoder's "no previous mask" inputs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from segserve.common.grounding import CaptionTokenizer, GroundingInputError, select_boxes
from segserve.common.text_to_mask import detection_prompts, detections_document
from segserve.common.status import INVALID_ARGUMENT, ModelRefusal
from segserve.triton_models.common import parameters, respond_each, scalar


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]
        params = parameters(args)
        folder = Path(args["model_repository"]) / args["model_version"] / params["tokenizer_dir"]
        self.tokenizer = CaptionTokenizer(folder)
        self.sam2_size = int(params.get("sam2_image_size", "1024"))
        self.low_res = int(params.get("low_res_mask_size", "256"))
        self.defaults = {k: float(params[k]) for k in ("box_threshold", "text_threshold", "iou_threshold")}
        self.max_objects = int(params["max_objects"])

    def execute(self, requests):
        return respond_each(requests, self._handle, self.name)

    def _handle(self, request):
        logits = pb_utils.get_input_tensor_by_name(request, "LOGITS").as_numpy()
        boxes = pb_utils.get_input_tensor_by_name(request, "PRED_BOXES").as_numpy()
        input_ids = pb_utils.get_input_tensor_by_name(request, "INPUT_IDS").as_numpy()
        height, width = (int(v) for v in pb_utils.get_input_tensor_by_name(request, "ORIGINAL_SIZE").as_numpy().reshape(-1))
        options = {k: float(scalar(request, k.upper(), self.defaults[k])) for k in self.defaults}
        max_objects = int(scalar(request, "MAX_OBJECTS", self.max_objects)) or self.max_objects
        try:
            detections = select_boxes(logits[0], boxes[0], input_ids[0], (height, width), self.tokenizer.decode,
                                      max_objects=max_objects, **options)
        except GroundingInputError as exc:
            raise ModelRefusal(INVALID_ARGUMENT, str(exc)) from None
        coords, labels = detection_prompts(detections.boxes, (height, width), self.sam2_size)
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("DETECTIONS", np.array([detections_document(detections).encode()], dtype=object)),
            pb_utils.Tensor("POINT_COORDS", coords),
            pb_utils.Tensor("POINT_LABELS", labels),
            pb_utils.Tensor("MASK_INPUT", np.zeros((1, 1, self.low_res, self.low_res), np.float32)),
            pb_utils.Tensor("HAS_MASK_INPUT", np.zeros((1,), np.float32)),
        ])
