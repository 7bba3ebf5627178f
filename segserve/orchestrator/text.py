"""Text prompts: `MaskFromPrompt` with `text`, and `Detect`.

The orchestrator validates the request, decodes the image once and makes ONE call to a Triton
ensemble: `text_to_mask` (letterbox + tokenize -> Grounding DINO -> box selection -> SAM 2 encoder
-> SAM 2 decoder on the boxes -> masks as RLE at the original size) or `grounding_detect` (boxes
only). Only the RGB pixels and the caption go in; a small JSON document comes back.

Rules (documented in the .proto):
- `text` needs `image` bytes: an `image_id` session keeps only SAM 2 embeddings in Triton, and
  Grounding DINO needs the pixels.
- `text` is exclusive with points / boxes / mask_input / multimask_output / return_low_res_logits.
- Empty or whitespace-only text, text over 256 tokens (counted by the checkpoint's tokenizer inside
  Triton) and thresholds outside [0, 1] are INVALID_ARGUMENT naming the field; nothing detected is
  an empty result. The caption is tokenised by a direct call to `grounding_tokenize` before the
  ensemble runs (see `_infer`), so no ensemble step fails on user input. Text that is not UTF-8
  never reaches this code: the request deserializer (`wire.py`) marks it and the RPC answers
  INVALID_ARGUMENT naming the field.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from typing import Callable

import grpc
import numpy as np
import tritonclient.grpc as grpcclient

from segserve.api import pb
from segserve.common.grounding import GroundingInputError, normalize_caption
from segserve.common.text_to_mask import parse_detections

from .errors import ServiceError, exhausted, invalid
from .model_info import add_graphs, checkpoint_name
from .rpc import NO_SCOPE, CallScope
from .segment import ensemble_message
from .triton_pool import TritonPool, tensor

TEXT_TO_MASK = "text_to_mask"
DETECT = "grounding_detect"
SELECT = "grounding_select"
TOKENIZE = "grounding_tokenize"
MAX_OBJECTS = 100
MAX_TEXT_CHARS = 8192  # far beyond 256 tokens; longer text is refused before it reaches Triton
THRESHOLDS = {"box_threshold": "box_threshold", "text_threshold": "text_threshold",
              "nms_iou_threshold": "iou_threshold"}
NO_MODEL = ("text prompts need Grounding DINO (and SAM 2 for masks), and this server's model repository "
            "has no {model}: export them (`segserve export --families sam2,grounding_dino`) and rebuild it")


@dataclass(frozen=True)
class TextModel:
    defaults: dict[str, float]
    max_objects: int
    info: pb.ModelInfo


def _model_info(info: dict) -> pb.ModelInfo:
    message = pb.ModelInfo(family="grounding_dino")
    entry = info.get("grounding_dino")
    if entry:
        message.checkpoint = checkpoint_name(entry["checkpoint"])
        message.checkpoint_sha256 = entry["checkpoint_sha256"] or ""
    message.random_weights = any(bool(info[n]["random_weights"]) for n in
                                 ("grounding_dino", "sam2_image_encoder", "sam2_prompt_decoder") if n in info)
    for name in ("grounding_dino", "sam2_image_encoder", "sam2_prompt_decoder"):
        if name in info:
            message.artifact_sha256[name] = info[name]["sha256"]
            add_graphs(message, info, [name])
    return message


def _box(values) -> pb.Box:
    x0, y0, x1, y1 = (float(v) for v in values)
    return pb.Box(x0=x0, y0=y0, x1=x1, y1=y1)


class TextPrompts:
    def __init__(self, pool: TritonPool, mask_message: Callable[..., pb.Mask]):
        self.pool = pool
        self.mask_message = mask_message
        self._model: TextModel | None = None
        self._lock = threading.Lock()

    def model(self) -> TextModel:
        """Defaults and model info from `grounding_select`'s config (read once); UNIMPLEMENTED when the
        repository has no Grounding DINO (not cached, so a repository that gains one is picked up)."""
        with self._lock:
            if self._model is not None:
                return self._model
        try:
            params = self.pool.any().model_parameters(SELECT)
        except ServiceError as exc:
            if exc.code == grpc.StatusCode.UNIMPLEMENTED:
                raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, NO_MODEL.format(model="Grounding DINO")) from exc
            raise
        model = TextModel(defaults={field: float(params[key]) for field, key in THRESHOLDS.items()},
                          max_objects=int(params["max_objects"]),
                          info=_model_info(json.loads(params.get("model_info") or "{}")))
        with self._lock:
            self._model = model
        return model

    # ------------------------------------------------------------------ validation

    def _controls(self, request, model: TextModel) -> list[grpcclient.InferInput]:
        if isinstance(request, pb.MaskFromPromptRequest) and not request.HasField("text"):
            raise invalid("text", "is required")
        if len(request.text) > MAX_TEXT_CHARS:
            raise invalid("text", f"is {len(request.text)} characters long; at most {MAX_TEXT_CHARS} "
                                  "(and 256 tokens) are allowed")
        try:
            normalize_caption(request.text, "text")  # empty / whitespace / only separators
        except GroundingInputError as exc:
            raise invalid(exc.field, str(exc).split(": ", 1)[1]) from None
        values = {}
        for field, default in model.defaults.items():
            value = getattr(request, field) if request.HasField(field) else default
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise invalid(field, f"must lie in [0, 1], got {value}")
            values[field] = value
        if request.max_objects < 0:
            raise invalid("max_objects", f"must be 0 (the default, {model.max_objects}) or more, got {request.max_objects}")
        if request.max_objects > MAX_OBJECTS:
            raise exhausted("max_objects", f"{request.max_objects} exceeds the limit of {MAX_OBJECTS}")
        max_objects = request.max_objects or model.max_objects
        return [
            tensor("TEXT", np.array([request.text.encode("utf-8")], dtype=object), "BYTES"),
            tensor("BOX_THRESHOLD", np.array([values["box_threshold"]], np.float32), "FP32"),
            tensor("TEXT_THRESHOLD", np.array([values["text_threshold"]], np.float32), "FP32"),
            tensor("IOU_THRESHOLD", np.array([values["nms_iou_threshold"]], np.float32), "FP32"),
            tensor("MAX_OBJECTS", np.array([max_objects], np.int32), "INT32"),
        ]

    @staticmethod
    def _check_mask_request(request) -> None:
        if request.WhichOneof("source") != "image":
            raise invalid("image_id", "text prompts need the image bytes (`image`): an image_id session keeps only "
                                      "SAM 2 embeddings, and Grounding DINO needs the pixels")
        for field, present in (("points", len(request.points)), ("boxes", len(request.boxes)),
                               ("mask_input", request.HasField("mask_input")),
                               ("multimask_output", request.multimask_output),
                               ("return_low_res_logits", request.return_low_res_logits)):
            if present:
                raise invalid(field, "cannot be combined with text (a text prompt gives one mask per detected box)")

    # ------------------------------------------------------------------ calls

    def _infer(self, model_name: str, image: np.ndarray, controls: list, output: str, scope: CallScope) -> str:
        inputs = [tensor("IMAGE", np.ascontiguousarray(image), "UINT8"), *controls]
        try:
            with self.pool.call() as replica:
                # The caption is tokenised on its own first, so that a caption the ensemble would refuse
                # (over 256 tokens) fails here: Triton 2.51 leaks an in-flight count (and then waits
                # out its exit timeout) when an ensemble step fails while a parallel branch still runs.
                replica.infer(TOKENIZE, [controls[0]], ["INPUT_IDS"], "request", scope)
                result = replica.infer(model_name, inputs, [output], "request", scope)
        except ServiceError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:  # no step refuses with NOT_FOUND: the model is missing
                what = "SAM 2 and Grounding DINO" if model_name == TEXT_TO_MASK else "Grounding DINO"
                raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, NO_MODEL.format(model=what)) from exc
            error = ensemble_message(exc)
            if error.code == grpc.StatusCode.INVALID_ARGUMENT:  # the step's message names the field
                error = ServiceError(error.code, error.message.removeprefix("request: "))
            raise error from exc
        return result.as_numpy(output).reshape(-1)[0]

    def mask_from_prompt(self, request: pb.MaskFromPromptRequest, decode: Callable[[bytes], np.ndarray],
                         scope: CallScope = NO_SCOPE) -> pb.MaskFromPromptResponse:
        self._check_mask_request(request)
        model = self.model()
        controls = self._controls(request, model)
        image = decode(request.image)
        height, width = image.shape[:2]
        document = json.loads(self._infer(TEXT_TO_MASK, image, controls, "OBJECTS", scope))
        response = pb.MaskFromPromptResponse(width=width, height=height, model=model.info)
        for item in document["objects"]:
            obj = response.objects.add(object_score=item["object_score"], phrase=item["phrase"],
                                       detection_score=item["score"], box=_box(item["box"]))
            obj.masks.append(self.mask_message(item["rle"], height, width, item["mask_score"], request.mask_format))
        return response

    def controls(self, prompt) -> list[grpcclient.InferInput]:
        """Validated Triton inputs of any message with Detect's fields (text, thresholds,
        max_objects): the video API's TextPrompt."""
        return self._controls(prompt, self.model())

    def detections(self, image: np.ndarray, controls: list[grpcclient.InferInput],
                   scope: CallScope = NO_SCOPE) -> list[dict]:
        """`grounding_detect` on RGB pixels: phrase, score, xyxy box (original pixels), best first."""
        return parse_detections(self._infer(DETECT, image, controls, "DETECTIONS", scope))

    def detect(self, request: pb.DetectRequest, decode: Callable[[bytes], np.ndarray],
               scope: CallScope = NO_SCOPE) -> pb.DetectResponse:
        model = self.model()
        controls = self._controls(request, model)
        image = decode(request.image)
        height, width = image.shape[:2]
        document = json.loads(self._infer(DETECT, image, controls, "DETECTIONS", scope))
        response = pb.DetectResponse(width=width, height=height, model=model.info)
        for phrase, score, box in zip(document["phrases"], document["scores"], document["boxes"]):
            response.detections.add(phrase=phrase, score=score, box=_box(box))
        return response
