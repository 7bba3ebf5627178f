"""The `segserve.v1.Segmentation` servicer."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import grpc
import numpy as np
from pycocotools import mask as coco_mask

from segserve.api import pb, pb_grpc
from segserve.common import rle as rle_codec
from segserve.common.image import ImageError, decode_image, encode_png
from segserve.common.sam2_transforms import build_prompts

from . import validation
from .errors import ServiceError, invalid
from .ids import IdSigner
from .metrics import STAGE_LATENCY
from .model_info import add_graphs, checkpoint_name
from .rpc import CallScope, unary
from .segment import Segmenter
from .sessions import ImageSession, ImageSessions
from .settings import Settings
from .text import TextPrompts
from .triton_pool import SESSION_MODEL, TritonPool, tensor

log = logging.getLogger("segserve.orchestrator")
MASK_FORMATS = (pb.MASK_FORMAT_RLE, pb.MASK_FORMAT_PNG, pb.MASK_FORMAT_RLE_AND_PNG)


class stage:
    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *_):
        STAGE_LATENCY.labels(stage=self.name).observe(time.perf_counter() - self.start)


def check_mask_format(value: int, field: str = "mask_format") -> int:
    if value not in MASK_FORMATS:
        raise invalid(field, f"unknown format {value}; use MASK_FORMAT_RLE, _PNG or _RLE_AND_PNG")
    return value


def _mask_message(counts: str, height: int, width: int, score: float, mask_format: int) -> pb.Mask:
    encoded = {"size": [height, width], "counts": counts.encode()}
    message = pb.Mask(score=float(score), area=int(coco_mask.area(encoded)),
                      bbox=[float(v) for v in coco_mask.toBbox(encoded)])
    if mask_format in (pb.MASK_FORMAT_RLE, pb.MASK_FORMAT_RLE_AND_PNG):
        message.rle.size.extend([height, width])
        message.rle.counts = counts
    if mask_format in (pb.MASK_FORMAT_PNG, pb.MASK_FORMAT_RLE_AND_PNG):
        message.png = encode_png(rle_codec.decode({"size": [height, width], "counts": counts}).astype(np.uint8) * 255)
    return message


def _model_info_messages(info: dict) -> list[pb.ModelInfo]:
    families: dict[str, pb.ModelInfo] = {}
    for artifact, entry in sorted(info.items()):
        family = entry.get("family") or artifact.split("_")[0]
        message = families.setdefault(family, pb.ModelInfo(
            family=family, checkpoint=checkpoint_name(entry["checkpoint"]),
            checkpoint_sha256=entry["checkpoint_sha256"], random_weights=entry["random_weights"]))
        message.artifact_sha256[artifact] = entry["sha256"]
        add_graphs(message, info, [artifact])
    return list(families.values())


@dataclass
class PromptResult:
    scores: np.ndarray  # [P, K]
    object_scores: np.ndarray  # [P]
    rle_counts: list[list[str]]  # [P][K]
    low_res_logits: np.ndarray | None  # [P, K, 256, 256]


def decode_prompts(session: ImageSession, coords: np.ndarray, labels: np.ndarray, mask: np.ndarray | None,
                   multimask: bool, want_logits: bool, scope: CallScope) -> PromptResult:
    """One decoder call on a session: prompts [P, M, 2] in the model frame -> RLE masks at the image size."""
    inputs = [tensor("POINT_COORDS", coords[None], "FP32"), tensor("POINT_LABELS", labels[None], "INT32"),
              tensor("MULTIMASK", np.array([[multimask]]), "BOOL")]
    if mask is not None:
        inputs.append(tensor("MASK_INPUT", mask, "FP32"))
    names = ["SCORES", "OBJECT_SCORE", "MASKS_RLE"] + (["LOW_RES_LOGITS"] if want_logits else [])
    result = session.infer(inputs, names, scope)
    counts = [[c.decode() for c in row] for row in result.as_numpy("MASKS_RLE")[0]]
    return PromptResult(result.as_numpy("SCORES")[0], result.as_numpy("OBJECT_SCORE")[0], counts,
                        result.as_numpy("LOW_RES_LOGITS")[0] if want_logits else None)


class SegmentationService(pb_grpc.SegmentationServicer):
    def __init__(self, settings: Settings, pool: TritonPool | None = None):
        self.settings = settings
        self.pool = pool or TritonPool(settings)
        self.images = ImageSessions(self.pool, settings.max_image_sessions, settings.embedding_cache_size,
                                    settings.session_ttl_s, IdSigner.from_settings(settings))
        self._model_info: list[pb.ModelInfo] | None = None
        self.segmenter = Segmenter(self.pool)
        self.text = TextPrompts(self.pool, _mask_message)

    def model_info(self) -> list[pb.ModelInfo]:
        if self._model_info is None:
            params = self.pool.any().model_parameters(SESSION_MODEL)
            # Expire sessions exactly when the session model drops them.
            self.images.ttl_s = float(params.get("session_ttl_s", self.settings.session_ttl_s))
            self._model_info = _model_info_messages(json.loads(params.get("model_info") or "{}"))
        return self._model_info

    def _sam2_info(self) -> pb.ModelInfo:
        return next((m for m in self.model_info() if m.family == "sam2"), pb.ModelInfo(family="sam2"))

    def _decode(self, data: bytes):
        with stage("decode_image"):
            try:
                return decode_image(data, "image", self.settings.max_image_pixels, self.settings.max_image_bytes)
            except ImageError as exc:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED if exc.too_large else grpc.StatusCode.INVALID_ARGUMENT
                raise ServiceError(code, str(exc)) from exc

    @unary
    def OpenImage(self, request, context):
        self.model_info()
        image = self._decode(request.image)
        session = self.images.open(image, CallScope(context))
        return pb.OpenImageResponse(image_id=session.image_id, width=session.width, height=session.height,
                                    cached=False, model=self._sam2_info())

    @unary
    def MaskFromPrompt(self, request, context):
        scope = CallScope(context)
        mask_format = check_mask_format(request.mask_format)
        if request.HasField("text"):  # Grounding DINO + SAM 2 in one Triton ensemble (text.py)
            with stage("text_to_mask"):
                return self.text.mask_from_prompt(request, self._decode, scope)
        self.model_info()
        source = request.WhichOneof("source")
        if source is None:
            raise invalid("image_id", "set image_id (from OpenImage) or image (bytes)")
        mask = validation.mask_input(request)
        if source == "image_id":
            leased = self.images.lease(request.image_id)
        else:
            leased = self.images.cached(request.image, lambda: self._decode(request.image), scope)
        with leased as held:
            session, cached = (held, True) if source == "image_id" else held
            width, height = session.width, session.height
            xy, labels = validation.points(request, width, height, self.settings.max_points)
            boxes = validation.boxes(request, width, height, self.settings.max_boxes)
            if xy is None and boxes is None and mask is None:
                raise invalid("points", "give at least one prompt: points, boxes or mask_input")
            coords, point_labels = build_prompts(xy, labels, boxes, (height, width))
            with stage("decode_prompt"):
                result = decode_prompts(session, coords, point_labels, mask, request.multimask_output,
                                        request.return_low_res_logits, scope)
        with stage("encode_masks"):
            objects = []
            for p, counts in enumerate(result.rle_counts):
                obj = pb.ObjectMasks(object_score=float(result.object_scores[p]))
                obj.masks.extend(_mask_message(c, height, width, result.scores[p, k], mask_format)
                                 for k, c in enumerate(counts))
                if result.low_res_logits is not None:
                    obj.low_res_logits.extend(
                        pb.LowResLogits(height=m.shape[0], width=m.shape[1], float32_data=m.astype("<f4").tobytes())
                        for m in result.low_res_logits[p])
                objects.append(obj)
        return pb.MaskFromPromptResponse(image_id=session.image_id if not session.implicit else "",
                                         width=width, height=height, objects=objects,
                                         model=self._sam2_info(), cached=cached)

    @unary
    def CloseImage(self, request, context):
        if not request.image_id:
            raise invalid("image_id", "is required")
        self.images.close(request.image_id)
        return pb.CloseImageResponse()

    @unary
    def Detect(self, request, context):
        with stage("detect"):
            return self.text.detect(request, self._decode, CallScope(context))

    @unary
    def Segment(self, request, context):
        with stage("segment"):
            return self.segmenter.segment(request, self._decode, CallScope(context))

    @unary
    def GetModelInfo(self, request, context):
        replica = self.pool.any()
        version = replica.server_version()
        return pb.GetModelInfoResponse(models=self.model_info(), triton_version=version)

    def shutdown(self) -> None:
        self.images.close_all()
        self.pool.close()
