"""The `segserve.v1.Segmentation` servicer."""
from __future__ import annotations

import functools
import json
import logging
import time

import grpc
import numpy as np
from pycocotools import mask as coco_mask

from segserve.api import pb, pb_grpc
from segserve.common import rle as rle_codec
from segserve.common.image import ImageError, decode_image, encode_png
from segserve.common.sam2_transforms import build_prompts

from . import validation
from .errors import ServiceError, invalid
from .metrics import REQUEST_LATENCY, REQUESTS, STAGE_LATENCY
from .segment import Segmenter
from .text import TextPrompts
from .sessions import ImageSessions
from .settings import Settings
from .triton_pool import TritonPool

log = logging.getLogger("segserve.orchestrator")


def rpc(method):
    """Status-code mapping, latency and error metrics for one RPC; a bug becomes INTERNAL."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        name = method.__name__
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return method(self, request, context)
        except ServiceError as exc:
            code = exc.code
            context.abort(exc.code, exc.message)
        except Exception as exc:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", name)
            context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            REQUEST_LATENCY.labels(method=name).observe(time.perf_counter() - start)
            REQUESTS.labels(method=name, code=code.name).inc()

    return wrapper


class stage:
    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *_):
        STAGE_LATENCY.labels(stage=self.name).observe(time.perf_counter() - self.start)


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
            family=family, checkpoint=entry["checkpoint"], checkpoint_sha256=entry["checkpoint_sha256"],
            random_weights=entry["random_weights"]))
        message.artifact_sha256[artifact] = entry["sha256"]
    return list(families.values())


class SegmentationService(pb_grpc.SegmentationServicer):
    def __init__(self, settings: Settings, pool: TritonPool | None = None):
        self.settings = settings
        self.pool = pool or TritonPool(settings)
        self.images = ImageSessions(self.pool, settings.max_image_sessions, settings.embedding_cache_size,
                                    settings.session_ttl_s)
        self._model_info: list[pb.ModelInfo] | None = None
        self.segmenter = Segmenter(self.pool)
        self.text = TextPrompts(self.pool, _mask_message)

    def model_info(self) -> list[pb.ModelInfo]:
        if self._model_info is None:
            params = self.pool.any().session_parameters()
            # Expire sessions exactly when Triton drops the idle sequence.
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

    @rpc
    def OpenImage(self, request, context):
        self.model_info()
        image = self._decode(request.image)
        with stage("encode"):
            session = self.images.open(image)
        return pb.OpenImageResponse(image_id=session.image_id, width=session.width, height=session.height,
                                    cached=False, model=self._sam2_info())

    @rpc
    def MaskFromPrompt(self, request, context):
        if request.HasField("text"):  # Grounding DINO + SAM 2 in one Triton ensemble (text.py)
            with stage("text_to_mask"):
                return self.text.mask_from_prompt(request, self._decode)
        self.model_info()
        source = request.WhichOneof("source")
        if source is None:
            raise invalid("image_id", "set image_id (from OpenImage) or image (bytes)")
        if source == "image_id":
            session, cached = self.images.get(request.image_id), True
        else:
            with stage("encode"):
                session, cached = self.images.cached(request.image, lambda: self._decode(request.image))
        width, height = session.width, session.height
        xy, labels = validation.points(request, width, height, self.settings.max_points)
        boxes = validation.boxes(request, width, height, self.settings.max_boxes)
        mask = validation.mask_input(request)
        if xy is None and boxes is None and mask is None:
            raise invalid("points", "give at least one prompt: points, boxes or mask_input")
        coords, point_labels = build_prompts(xy, labels, boxes, (height, width))
        with stage("decode_prompt"):
            try:
                result = session.replica.prompt(session.sequence_id, coords, point_labels, mask,
                                                request.multimask_output, request.return_low_res_logits)
            except ServiceError as exc:
                if exc.code == grpc.StatusCode.NOT_FOUND:
                    self.images.discard(session.image_id)
                raise
        with stage("encode_masks"):
            objects = []
            for p, counts in enumerate(result.rle_counts):
                obj = pb.ObjectMasks(object_score=float(result.object_scores[p]))
                obj.masks.extend(_mask_message(c, height, width, result.scores[p, k], request.mask_format)
                                 for k, c in enumerate(counts))
                if result.low_res_logits is not None:
                    obj.low_res_logits.extend(
                        pb.LowResLogits(height=m.shape[0], width=m.shape[1], float32_data=m.astype("<f4").tobytes())
                        for m in result.low_res_logits[p])
                objects.append(obj)
        return pb.MaskFromPromptResponse(image_id=session.image_id if not session.implicit else "",
                                         width=width, height=height, objects=objects,
                                         model=self._sam2_info(), cached=cached)

    @rpc
    def CloseImage(self, request, context):
        if not request.image_id:
            raise invalid("image_id", "is required")
        self.images.close(request.image_id)
        return pb.CloseImageResponse()

    @rpc
    def Detect(self, request, context):
        with stage("detect"):
            return self.text.detect(request, self._decode)

    @rpc
    def Segment(self, request, context):
        with stage("segment"):
            return self.segmenter.segment(request, self._decode)

    @rpc
    def GetModelInfo(self, request, context):
        metadata = self.pool.any().client.get_server_metadata()
        return pb.GetModelInfoResponse(models=self.model_info(), triton_version=metadata.version)

    def shutdown(self) -> None:
        self.images.close_all()
        self.pool.close()
