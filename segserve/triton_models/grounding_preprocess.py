"""First step of the `text_to_mask` and `grounding_detect` ensembles: one decoded RGB image ->

- PIXEL_VALUES [1, 3, S, S] and PIXEL_MASK [1, S, S]: Grounding DINO's letterbox at the graph's
  fixed size S (`segserve.common.grounding.letterbox`);
- SAM2_PIXEL_VALUES [1, 3, 1024, 1024]: SAM 2's resize + normalisation (`sam2_transforms.preprocess`),
  computed only when the ensemble asks for it (`grounding_detect` does not);
- ORIGINAL_SIZE [2]: (height, width), for the box and mask postprocessing.
"""
from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from segserve.common import sam2_transforms
from segserve.common.grounding import GroundingInputError, letterbox
from segserve.common.status import INVALID_ARGUMENT, ModelRefusal
from segserve.triton_models.common import parameters, respond_each


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]
        params = parameters(args)
        self.size = int(params["image_size"])
        self.mean = tuple(json.loads(params["image_mean"]))
        self.std = tuple(json.loads(params["image_std"]))
        self.sam2_size = int(params.get("sam2_image_size", "1024"))

    def execute(self, requests):
        return respond_each(requests, self._handle, self.name)

    def _handle(self, request):
        image = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) == 0:
            raise ModelRefusal(INVALID_ARGUMENT, f"image: must be RGB [H, W, 3], got {list(image.shape)}")
        try:
            boxed = letterbox(np.ascontiguousarray(image), self.size, self.mean, self.std)
        except GroundingInputError as exc:
            raise ModelRefusal(INVALID_ARGUMENT, str(exc)) from None
        outputs = {
            "PIXEL_VALUES": boxed.pixel_values[None],
            "PIXEL_MASK": boxed.pixel_mask[None],
            "ORIGINAL_SIZE": np.asarray(boxed.original_size, dtype=np.int32),
        }
        wanted = set(request.requested_output_names())
        if not wanted or "SAM2_PIXEL_VALUES" in wanted:
            outputs["SAM2_PIXEL_VALUES"] = sam2_transforms.preprocess(image, self.sam2_size)
        return pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()
                                           if not wanted or k in wanted])
