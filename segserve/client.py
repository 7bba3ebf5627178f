"""Python client for the segserve gRPC API."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from segserve.api import pb, pb_grpc
from segserve.common import rle as rle_codec

ImageLike = bytes | str | Path | np.ndarray
_FORMATS = {"rle": pb.MASK_FORMAT_RLE, "png": pb.MASK_FORMAT_PNG, "both": pb.MASK_FORMAT_RLE_AND_PNG}


def image_bytes(image: ImageLike) -> bytes:
    if isinstance(image, bytes):
        return image
    if isinstance(image, np.ndarray):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()
    return Path(image).read_bytes()


@dataclass
class MaskResult:
    mask: np.ndarray  # bool [H, W]
    score: float
    area: int
    bbox: list[float]
    rle: dict | None


@dataclass
class ObjectResult:
    masks: list[MaskResult]
    object_score: float
    low_res_logits: list[np.ndarray] = field(default_factory=list)

    @property
    def best(self) -> MaskResult:
        return max(self.masks, key=lambda m: m.score)


@dataclass
class PromptResult:
    image_id: str
    width: int
    height: int
    objects: list[ObjectResult]
    cached: bool
    model: pb.ModelInfo


def _mask_result(message: pb.Mask, height: int, width: int) -> MaskResult:
    if message.rle.counts:
        rle = {"size": list(message.rle.size), "counts": message.rle.counts}
        mask = rle_codec.decode(rle)
    else:
        rle = None
        mask = np.asarray(Image.open(io.BytesIO(message.png))) > 0
    return MaskResult(mask, message.score, message.area, list(message.bbox), rle)


class SegservClient:
    def __init__(self, address: str = "127.0.0.1:50051", timeout_s: float = 300.0):
        limit = 65 << 20
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)])
        self.stub = pb_grpc.SegmentationStub(self.channel)
        self.timeout_s = timeout_s

    def open_image(self, image: ImageLike) -> pb.OpenImageResponse:
        return self.stub.OpenImage(pb.OpenImageRequest(image=image_bytes(image)), timeout=self.timeout_s)

    def mask_from_prompt(
        self,
        image_id: str | None = None,
        image: ImageLike | None = None,
        points: Iterable[Sequence[float]] = (),
        boxes: Iterable[Sequence[float]] = (),
        mask_input: np.ndarray | None = None,
        multimask: bool = False,
        mask_format: str = "rle",
        return_low_res_logits: bool = False,
    ) -> PromptResult:
        """points: (x, y) or (x, y, label) with label 1 = foreground (default), 0 = background."""
        request = pb.MaskFromPromptRequest(multimask_output=multimask, mask_format=_FORMATS[mask_format],
                                           return_low_res_logits=return_low_res_logits)
        if image_id is not None:
            request.image_id = image_id
        elif image is not None:
            request.image = image_bytes(image)
        for p in points:
            request.points.add(x=p[0], y=p[1], label=int(p[2]) if len(p) > 2 else 1)
        for b in boxes:
            request.boxes.add(x0=b[0], y0=b[1], x1=b[2], y1=b[3])
        if mask_input is not None:
            logits = np.asarray(mask_input, dtype="<f4")
            request.mask_input.height, request.mask_input.width = logits.shape[-2:]
            request.mask_input.float32_data = logits.tobytes()
        response = self.stub.MaskFromPrompt(request, timeout=self.timeout_s)
        return self.parse(response)

    @staticmethod
    def parse(response: pb.MaskFromPromptResponse) -> PromptResult:
        objects = []
        for obj in response.objects:
            masks = [_mask_result(m, response.height, response.width) for m in obj.masks]
            logits = [np.frombuffer(l.float32_data, "<f4").reshape(l.height, l.width) for l in obj.low_res_logits]
            objects.append(ObjectResult(masks, obj.object_score, logits))
        return PromptResult(response.image_id, response.width, response.height, objects, response.cached, response.model)

    def close_image(self, image_id: str) -> None:
        self.stub.CloseImage(pb.CloseImageRequest(image_id=image_id), timeout=self.timeout_s)

    def model_info(self) -> pb.GetModelInfoResponse:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout_s)

    def healthy(self) -> bool:
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service="segserve.v1.Segmentation"), timeout=5)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "SegservClient":
        return self

    def __exit__(self, *_):
        self.close()
