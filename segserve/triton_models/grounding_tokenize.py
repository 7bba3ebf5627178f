"""Step of the `text_to_mask` / `grounding_detect` ensembles: TEXT (one UTF-8 caption) ->
Grounding DINO's input_ids / attention_mask / token_type_ids [1, T], with the checkpoint's own
tokenizer (shipped in this model's version folder by the builder). A caption that is empty,
whitespace only, not UTF-8 or over 256 tokens is refused INVALID_ARGUMENT (a typed TritonError) with
a message that names the field `text`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from segserve.common.grounding import CaptionTokenizer, GroundingInputError
from segserve.common.status import INVALID_ARGUMENT, ModelRefusal
from segserve.triton_models.common import parameters, respond_each


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]
        params = parameters(args)
        folder = Path(args["model_repository"]) / args["model_version"] / params["tokenizer_dir"]
        self.tokenizer = CaptionTokenizer(folder, int(params.get("max_text_len", "256")))

    def execute(self, requests):
        return respond_each(requests, self._handle, self.name)

    def _handle(self, request):
        text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
        if text.size != 1:
            raise ModelRefusal(INVALID_ARGUMENT, f"text: expected one caption, got {text.size}")
        value = text[0]
        try:
            encoded = self.tokenizer.encode(value if isinstance(value, (bytes, np.bytes_)) else str(value), "text")
        except GroundingInputError as exc:
            raise ModelRefusal(INVALID_ARGUMENT, str(exc)) from None
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("INPUT_IDS", encoded.input_ids[None]),
            pb_utils.Tensor("ATTENTION_MASK", encoded.attention_mask[None]),
            pb_utils.Tensor("TOKEN_TYPE_IDS", encoded.token_type_ids[None]),
        ])
