from segserve.v1 import segmentation_pb2 as _segmentation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AutoMaskParameters(_message.Message):
    __slots__ = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh", "stability_score_offset", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh", "crop_overlap_ratio", "crop_n_points_downscale_factor", "min_mask_region_area", "mask_threshold")
    POINTS_PER_SIDE_FIELD_NUMBER: _ClassVar[int]
    POINTS_PER_BATCH_FIELD_NUMBER: _ClassVar[int]
    PRED_IOU_THRESH_FIELD_NUMBER: _ClassVar[int]
    STABILITY_SCORE_THRESH_FIELD_NUMBER: _ClassVar[int]
    STABILITY_SCORE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    BOX_NMS_THRESH_FIELD_NUMBER: _ClassVar[int]
    CROP_N_LAYERS_FIELD_NUMBER: _ClassVar[int]
    CROP_NMS_THRESH_FIELD_NUMBER: _ClassVar[int]
    CROP_OVERLAP_RATIO_FIELD_NUMBER: _ClassVar[int]
    CROP_N_POINTS_DOWNSCALE_FACTOR_FIELD_NUMBER: _ClassVar[int]
    MIN_MASK_REGION_AREA_FIELD_NUMBER: _ClassVar[int]
    MASK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    points_per_side: int
    points_per_batch: int
    pred_iou_thresh: float
    stability_score_thresh: float
    stability_score_offset: float
    box_nms_thresh: float
    crop_n_layers: int
    crop_nms_thresh: float
    crop_overlap_ratio: float
    crop_n_points_downscale_factor: int
    min_mask_region_area: int
    mask_threshold: float
    def __init__(self, points_per_side: _Optional[int] = ..., points_per_batch: _Optional[int] = ..., pred_iou_thresh: _Optional[float] = ..., stability_score_thresh: _Optional[float] = ..., stability_score_offset: _Optional[float] = ..., box_nms_thresh: _Optional[float] = ..., crop_n_layers: _Optional[int] = ..., crop_nms_thresh: _Optional[float] = ..., crop_overlap_ratio: _Optional[float] = ..., crop_n_points_downscale_factor: _Optional[int] = ..., min_mask_region_area: _Optional[int] = ..., mask_threshold: _Optional[float] = ...) -> None: ...

class GenerateMasksRequest(_message.Message):
    __slots__ = ("image_id", "image", "parameters", "max_masks", "stream")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MAX_MASKS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    image: bytes
    parameters: AutoMaskParameters
    max_masks: int
    stream: bool
    def __init__(self, image_id: _Optional[str] = ..., image: _Optional[bytes] = ..., parameters: _Optional[_Union[AutoMaskParameters, _Mapping]] = ..., max_masks: _Optional[int] = ..., stream: bool = ...) -> None: ...

class GeneratedMask(_message.Message):
    __slots__ = ("segmentation", "area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box")
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_IOU_FIELD_NUMBER: _ClassVar[int]
    STABILITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    POINT_COORDS_FIELD_NUMBER: _ClassVar[int]
    CROP_BOX_FIELD_NUMBER: _ClassVar[int]
    segmentation: _segmentation_pb2.Rle
    area: int
    bbox: _containers.RepeatedScalarFieldContainer[float]
    predicted_iou: float
    stability_score: float
    point_coords: _containers.RepeatedScalarFieldContainer[float]
    crop_box: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, segmentation: _Optional[_Union[_segmentation_pb2.Rle, _Mapping]] = ..., area: _Optional[int] = ..., bbox: _Optional[_Iterable[float]] = ..., predicted_iou: _Optional[float] = ..., stability_score: _Optional[float] = ..., point_coords: _Optional[_Iterable[float]] = ..., crop_box: _Optional[_Iterable[float]] = ...) -> None: ...

class AutoMaskProgress(_message.Message):
    __slots__ = ("points_done", "points_total", "crops_done", "crops_total", "candidates")
    POINTS_DONE_FIELD_NUMBER: _ClassVar[int]
    POINTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CROPS_DONE_FIELD_NUMBER: _ClassVar[int]
    CROPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    points_done: int
    points_total: int
    crops_done: int
    crops_total: int
    candidates: int
    def __init__(self, points_done: _Optional[int] = ..., points_total: _Optional[int] = ..., crops_done: _Optional[int] = ..., crops_total: _Optional[int] = ..., candidates: _Optional[int] = ...) -> None: ...

class GenerateMasksResponse(_message.Message):
    __slots__ = ("width", "height", "masks", "progress", "done", "decoder_calls", "truncated", "model", "image_id")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    DECODER_CALLS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    masks: _containers.RepeatedCompositeFieldContainer[GeneratedMask]
    progress: AutoMaskProgress
    done: bool
    decoder_calls: int
    truncated: bool
    model: _segmentation_pb2.ModelInfo
    image_id: str
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., masks: _Optional[_Iterable[_Union[GeneratedMask, _Mapping]]] = ..., progress: _Optional[_Union[AutoMaskProgress, _Mapping]] = ..., done: bool = ..., decoder_calls: _Optional[int] = ..., truncated: bool = ..., model: _Optional[_Union[_segmentation_pb2.ModelInfo, _Mapping]] = ..., image_id: _Optional[str] = ...) -> None: ...
