"""Mask2Former preprocessing, the first step of the `mask2former_segment` ensemble.

IMAGE (RGB uint8 [H, W, 3], one per request) -> PIXEL_VALUES (float32 [3, S, S]: resized to the
graph's fixed size and normalised as the checkpoint's image processor does) and ORIGINAL_SIZE
([height, width], for the postprocess step). The work is `segserve.common.mask2former_post`.
"""
from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from segserve.common.mask2former_post import PreprocessConfig, preprocess_image
from segserve.common.status import INVALID_ARGUMENT, ModelRefusal
from segserve.triton_models.common import parameters, respond_each


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]
        settings = json.loads(parameters(args)["preprocess"])
        for key in ("image_mean", "image_std"):
            settings[key] = tuple(float(v) for v in settings[key])
        self.config = PreprocessConfig(**settings)

    def execute(self, requests):
        return respond_each(requests, self._handle, self.name)

    def _handle(self, request):
        images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
        if images.ndim != 4 or images.shape[3] != 3 or min(images.shape[1:3]) == 0:
            raise ModelRefusal(INVALID_ARGUMENT, f"IMAGE must be RGB [B, H, W, 3], got {list(images.shape)}")
        pixels, sizes = [], []
        for image in images:
            values, size = preprocess_image(image, self.config)
            pixels.append(values)
            sizes.append(size)
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("PIXEL_VALUES", np.stack(pixels)),
            pb_utils.Tensor("ORIGINAL_SIZE", np.asarray(sizes, dtype=np.int32)),
        ])
