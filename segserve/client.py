"""Python client for the segserve gRPC API."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import grpc
import numpy as np
from PIL import Image

from segserve.api import pb, pb_grpc
from segserve.api import load as load_api
from segserve.common import rle as rle_codec
from segserve.common import segments as segments_codec

ImageLike = bytes | str | Path | np.ndarray
_FORMATS = {"rle": pb.MASK_FORMAT_RLE, "png": pb.MASK_FORMAT_PNG, "both": pb.MASK_FORMAT_RLE_AND_PNG}
SEGMENT_TASKS = {"panoptic": pb.SEGMENT_TASK_PANOPTIC, "semantic": pb.SEGMENT_TASK_SEMANTIC,
                 "instance": pb.SEGMENT_TASK_INSTANCE}
_LABEL_MAP_FORMATS = {"png": pb.LABEL_MAP_FORMAT_PNG, "rle": pb.LABEL_MAP_FORMAT_RLE, "none": pb.LABEL_MAP_FORMAT_NONE}

# grpc.health.v1 Check, spoken in its two one-field messages so that the bare client needs no
# grpcio-health-checking: HealthCheckRequest {string service = 1}; HealthCheckResponse
# {ServingStatus status = 1}, SERVING = 1, encoded as field 1 varint 1.
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_HEALTH_SERVING = b"\x08\x01"


def _health_request(service: str) -> bytes:
    data = service.encode()
    if len(data) > 127:  # one length byte (a varint below 128)
        raise ValueError(f"health service name too long: {service!r}")
    return b"\x0a" + bytes([len(data)]) + data if data else b""  # proto3 leaves out an empty string


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
    # text prompts: the detection behind the object
    phrase: str = ""
    detection_score: float = 0.0
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in original pixels

    @property
    def best(self) -> MaskResult:
        return max(self.masks, key=lambda m: m.score)


@dataclass
class Detection:
    phrase: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in original pixels


@dataclass
class PromptResult:
    image_id: str
    width: int
    height: int
    objects: list[ObjectResult]
    cached: bool
    model: pb.ModelInfo


@dataclass
class SegmentInfo:
    id: int  # its value in SegmentationResult.segment_map
    label_id: int
    label_name: str
    score: float
    area: int
    bbox: list[float]  # [x, y, width, height]
    rle: dict  # COCO RLE {"size": [H, W], "counts": str}
    was_fused: bool

    @property
    def mask(self) -> np.ndarray:
        """bool [H, W]; for instances the whole mask, also where a better instance overlaps it."""
        return rle_codec.decode(self.rle)


@dataclass
class SegmentationResult:
    task: str
    width: int
    height: int
    segment_map: np.ndarray | None  # int32 [H, W] segment ids, 0 = none (None with label_map_format="none")
    segments: list[SegmentInfo]
    model: pb.ModelInfo

    def label_map(self) -> np.ndarray:
        """int32 [H, W] label id per pixel, -1 where no segment is."""
        if self.segment_map is None:
            raise ValueError("no segment map in this result (asked with label_map_format='none')")
        lookup = np.full(max([s.id for s in self.segments], default=0) + 1, -1, dtype=np.int32)
        for s in self.segments:
            lookup[s.id] = s.label_id
        return lookup[self.segment_map]


@dataclass
class AutoMaskResult:
    """Masks as SAM's automatic mask generator writes them: dicts with segmentation (COCO RLE),
    area, bbox (XYWH), predicted_iou, point_coords, stability_score, crop_box."""
    width: int = 0
    height: int = 0
    masks: list[dict] = field(default_factory=list)
    decoder_calls: int = 0
    truncated: bool = False
    progress: object = None
    model: object = None
    image_id: str = ""

    def mask(self, i: int) -> np.ndarray:
        return rle_codec.decode(self.masks[i]["segmentation"])

    def coco_json(self) -> dict:
        """COCO-style annotations (image_id 0, category 1) plus SAM's extra fields."""
        annotations = [{"id": i + 1, "image_id": 0, "category_id": 1, "iscrowd": 0, **m} for i, m in enumerate(self.masks)]
        return {"images": [{"id": 0, "width": self.width, "height": self.height}],
                "categories": [{"id": 1, "name": "object"}], "annotations": annotations}


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
    def _text_fields(request, text: str, box_threshold: float | None, text_threshold: float | None,
                     max_objects: int, nms_iou_threshold: float | None) -> None:
        request.text = text
        request.max_objects = max_objects
        for name, value in (("box_threshold", box_threshold), ("text_threshold", text_threshold),
                            ("nms_iou_threshold", nms_iou_threshold)):
            if value is not None:
                setattr(request, name, value)

    def mask_from_text(self, image: ImageLike, text: str, box_threshold: float | None = None,
                       text_threshold: float | None = None, max_objects: int = 0,
                       nms_iou_threshold: float | None = None, mask_format: str = "rle") -> PromptResult:
        """Grounding DINO boxes for `text` ("a cat. a remote control."), each with a SAM 2 mask:
        objects carry .phrase, .detection_score, .box and one mask. None = the server's default."""
        request = pb.MaskFromPromptRequest(image=image_bytes(image), mask_format=_FORMATS[mask_format])
        self._text_fields(request, text, box_threshold, text_threshold, max_objects, nms_iou_threshold)
        return self.parse(self.stub.MaskFromPrompt(request, timeout=self.timeout_s))

    def detect(self, image: ImageLike, text: str, box_threshold: float | None = None,
               text_threshold: float | None = None, max_objects: int = 0,
               nms_iou_threshold: float | None = None) -> list[Detection]:
        """Grounding DINO boxes only, best first."""
        request = pb.DetectRequest(image=image_bytes(image))
        self._text_fields(request, text, box_threshold, text_threshold, max_objects, nms_iou_threshold)
        response = self.stub.Detect(request, timeout=self.timeout_s)
        return [Detection(d.phrase, d.score, (d.box.x0, d.box.y0, d.box.x1, d.box.y1)) for d in response.detections]

    @staticmethod
    def parse(response: pb.MaskFromPromptResponse) -> PromptResult:
        objects = []
        for obj in response.objects:
            masks = [_mask_result(m, response.height, response.width) for m in obj.masks]
            logits = [np.frombuffer(m.float32_data, "<f4").reshape(m.height, m.width) for m in obj.low_res_logits]
            box = (obj.box.x0, obj.box.y0, obj.box.x1, obj.box.y1) if obj.HasField("box") else None
            objects.append(ObjectResult(masks, obj.object_score, logits, obj.phrase, obj.detection_score, box))
        return PromptResult(response.image_id, response.width, response.height, objects, response.cached, response.model)

    def segment(
        self,
        image: ImageLike,
        task: str = "panoptic",
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_mask_area_threshold: float | None = None,
        label_ids_to_fuse: Iterable[int] = (),
        label_map_format: str = "png",
    ) -> SegmentationResult:
        """Whole-image segmentation (Mask2Former): task panoptic | semantic | instance; thresholds
        left None take the model's defaults; label_map_format png | rle | none."""
        if task not in SEGMENT_TASKS:
            raise ValueError(f"task must be one of {sorted(SEGMENT_TASKS)}, got {task!r}")
        request = pb.SegmentRequest(image=image_bytes(image), task=SEGMENT_TASKS[task],
                                    label_ids_to_fuse=[int(v) for v in label_ids_to_fuse],
                                    label_map_format=_LABEL_MAP_FORMATS[label_map_format])
        for name, value in (("threshold", threshold), ("mask_threshold", mask_threshold),
                            ("overlap_mask_area_threshold", overlap_mask_area_threshold)):
            if value is not None:
                setattr(request, name, value)
        return self.parse_segmentation(self.stub.Segment(request, timeout=self.timeout_s))

    @staticmethod
    def parse_segmentation(response: pb.SegmentResponse) -> SegmentationResult:
        label_map = response.label_map
        if label_map.png:
            segment_map = segments_codec.decode_png(label_map.png)
        elif label_map.run_lengths:
            segment_map = segments_codec.decode_runs(label_map.run_values, label_map.run_lengths,
                                                     label_map.height, label_map.width)
        else:
            segment_map = None
        segments = [SegmentInfo(s.id, s.label_id, s.label_name, s.score, s.area, list(s.bbox),
                                {"size": list(s.mask.size), "counts": s.mask.counts}, s.was_fused)
                    for s in response.segments]
        task = {v: k for k, v in SEGMENT_TASKS.items()}.get(response.task, "panoptic")
        return SegmentationResult(task, response.width, response.height, segment_map, segments, response.model)

    def generate_masks(
        self,
        image: ImageLike | None = None,
        image_id: str | None = None,
        max_masks: int = 0,
        stream: bool = False,
        on_progress=None,
        **parameters,
    ) -> "AutoMaskResult":
        """Segment everything (SAM's automatic mask generator on SAM 2). `parameters`:
        points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh,
        stability_score_offset, box_nms_thresh, crop_n_layers, crop_nms_thresh, crop_overlap_ratio,
        crop_n_points_downscale_factor, min_mask_region_area, mask_threshold (unset: server defaults).
        With `stream`, `on_progress(AutoMaskProgress)` is called per decoded batch."""
        apb, apb_grpc = load_api("automask")
        request = apb.GenerateMasksRequest(max_masks=max_masks, stream=stream)
        if image_id is not None:
            request.image_id = image_id
        elif image is not None:
            request.image = image_bytes(image)
        for name, value in parameters.items():
            if value is not None:
                setattr(request.parameters, name, value)
        result = AutoMaskResult()
        for message in apb_grpc.AutoMaskStub(self.channel).GenerateMasks(request, timeout=self.timeout_s):
            result.width, result.height = message.width, message.height
            result.progress = message.progress
            if on_progress is not None and not message.masks and not message.done:
                on_progress(message.progress)
            for m in message.masks:
                result.masks.append({
                    "segmentation": {"size": list(m.segmentation.size), "counts": m.segmentation.counts},
                    "area": int(m.area), "bbox": list(m.bbox), "predicted_iou": m.predicted_iou,
                    "point_coords": [list(m.point_coords)], "stability_score": m.stability_score,
                    "crop_box": list(m.crop_box)})
            if message.done:
                result.decoder_calls, result.truncated = message.decoder_calls, message.truncated
                result.model, result.image_id = message.model, message.image_id
        return result

    @property
    def video(self):
        """SAM 2 video tracking sessions (`segserve.video_client.VideoTrackingClient`)."""
        if getattr(self, "_video", None) is None:
            from segserve.video_client import VideoTrackingClient

            self._video = VideoTrackingClient(self.channel, self.timeout_s)
        return self._video

    def close_image(self, image_id: str) -> None:
        self.stub.CloseImage(pb.CloseImageRequest(image_id=image_id), timeout=self.timeout_s)

    def model_info(self) -> pb.GetModelInfoResponse:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout_s)

    def healthy(self) -> bool:
        check = self.channel.unary_unary(_HEALTH_CHECK, request_serializer=None, response_deserializer=None)
        try:
            reply = check(_health_request("segserve.v1.Segmentation"), timeout=5)
        except grpc.RpcError:
            return False
        return reply == _HEALTH_SERVING

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "SegservClient":
        return self

    def __exit__(self, *_):
        self.close()
