"""Last step of the `text_to_mask` ensemble: the detections and SAM 2's single-mask outputs for
their boxes -> OBJECTS, a JSON document with per object phrase, detection score, box, mask score,
object score and the mask as COCO RLE at the original size (`text_to_mask.objects_document`:
bilinear upscale of the 256x256 logits, threshold). Decoder rows beyond the detection count (the
zero-detection dummy prompt) are dropped here.
"""
from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from segserve.common.text_to_mask import objects_document
from segserve.triton_models.common import parameters, respond_each


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]
        self.threshold = float(parameters(args).get("mask_threshold", "0.0"))

    def execute(self, requests):
        return respond_each(requests, self._handle, self.name)

    def _handle(self, request):
        get = lambda name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()  # noqa: E731
        height, width = (int(v) for v in get("ORIGINAL_SIZE").reshape(-1))
        document = objects_document(get("DETECTIONS").reshape(-1)[0], get("MASKS"), get("MASK_SCORES"),
                                    get("OBJECT_SCORES"), (height, width), self.threshold)
        return pb_utils.InferenceResponse([pb_utils.Tensor("OBJECTS", np.array([document.encode()], dtype=object))])
