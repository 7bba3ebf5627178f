from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MaskFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_FORMAT_RLE: _ClassVar[MaskFormat]
    MASK_FORMAT_PNG: _ClassVar[MaskFormat]
    MASK_FORMAT_RLE_AND_PNG: _ClassVar[MaskFormat]

class SegmentTask(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEGMENT_TASK_UNSPECIFIED: _ClassVar[SegmentTask]
    SEGMENT_TASK_PANOPTIC: _ClassVar[SegmentTask]
    SEGMENT_TASK_SEMANTIC: _ClassVar[SegmentTask]
    SEGMENT_TASK_INSTANCE: _ClassVar[SegmentTask]

class LabelMapFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_MAP_FORMAT_PNG: _ClassVar[LabelMapFormat]
    LABEL_MAP_FORMAT_RLE: _ClassVar[LabelMapFormat]
    LABEL_MAP_FORMAT_NONE: _ClassVar[LabelMapFormat]
MASK_FORMAT_RLE: MaskFormat
MASK_FORMAT_PNG: MaskFormat
MASK_FORMAT_RLE_AND_PNG: MaskFormat
SEGMENT_TASK_UNSPECIFIED: SegmentTask
SEGMENT_TASK_PANOPTIC: SegmentTask
SEGMENT_TASK_SEMANTIC: SegmentTask
SEGMENT_TASK_INSTANCE: SegmentTask
LABEL_MAP_FORMAT_PNG: LabelMapFormat
LABEL_MAP_FORMAT_RLE: LabelMapFormat
LABEL_MAP_FORMAT_NONE: LabelMapFormat

class Point(_message.Message):
    __slots__ = ("x", "y", "label")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    label: int
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., label: _Optional[int] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: float
    y0: float
    x1: float
    y1: float
    def __init__(self, x0: _Optional[float] = ..., y0: _Optional[float] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ...) -> None: ...

class LowResLogits(_message.Message):
    __slots__ = ("height", "width", "float32_data")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    FLOAT32_DATA_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    float32_data: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., float32_data: _Optional[bytes] = ...) -> None: ...

class Rle(_message.Message):
    __slots__ = ("size", "counts")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    size: _containers.RepeatedScalarFieldContainer[int]
    counts: str
    def __init__(self, size: _Optional[_Iterable[int]] = ..., counts: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("family", "checkpoint", "checkpoint_sha256", "random_weights", "artifact_sha256", "graphs")
    class ArtifactSha256Entry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class GraphsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: GraphRuntime
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[GraphRuntime, _Mapping]] = ...) -> None: ...
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    GRAPHS_FIELD_NUMBER: _ClassVar[int]
    family: str
    checkpoint: str
    checkpoint_sha256: str
    random_weights: bool
    artifact_sha256: _containers.ScalarMap[str, str]
    graphs: _containers.MessageMap[str, GraphRuntime]
    def __init__(self, family: _Optional[str] = ..., checkpoint: _Optional[str] = ..., checkpoint_sha256: _Optional[str] = ..., random_weights: bool = ..., artifact_sha256: _Optional[_Mapping[str, str]] = ..., graphs: _Optional[_Mapping[str, GraphRuntime]] = ...) -> None: ...

class GraphRuntime(_message.Message):
    __slots__ = ("runtime", "precision", "bf16_gate", "bf16_gate_detail")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BF16_GATE_FIELD_NUMBER: _ClassVar[int]
    BF16_GATE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    runtime: str
    precision: str
    bf16_gate: str
    bf16_gate_detail: str
    def __init__(self, runtime: _Optional[str] = ..., precision: _Optional[str] = ..., bf16_gate: _Optional[str] = ..., bf16_gate_detail: _Optional[str] = ...) -> None: ...

class OpenImageRequest(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    def __init__(self, image: _Optional[bytes] = ...) -> None: ...

class OpenImageResponse(_message.Message):
    __slots__ = ("image_id", "width", "height", "cached", "model")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    width: int
    height: int
    cached: bool
    model: ModelInfo
    def __init__(self, image_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., cached: bool = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class MaskFromPromptRequest(_message.Message):
    __slots__ = ("image_id", "image", "points", "boxes", "mask_input", "multimask_output", "mask_format", "return_low_res_logits", "text", "box_threshold", "text_threshold", "max_objects", "nms_iou_threshold")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    MASK_INPUT_FIELD_NUMBER: _ClassVar[int]
    MULTIMASK_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MASK_FORMAT_FIELD_NUMBER: _ClassVar[int]
    RETURN_LOW_RES_LOGITS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BOX_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TEXT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    NMS_IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    image: bytes
    points: _containers.RepeatedCompositeFieldContainer[Point]
    boxes: _containers.RepeatedCompositeFieldContainer[Box]
    mask_input: LowResLogits
    multimask_output: bool
    mask_format: MaskFormat
    return_low_res_logits: bool
    text: str
    box_threshold: float
    text_threshold: float
    max_objects: int
    nms_iou_threshold: float
    def __init__(self, image_id: _Optional[str] = ..., image: _Optional[bytes] = ..., points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ..., mask_input: _Optional[_Union[LowResLogits, _Mapping]] = ..., multimask_output: bool = ..., mask_format: _Optional[_Union[MaskFormat, str]] = ..., return_low_res_logits: bool = ..., text: _Optional[str] = ..., box_threshold: _Optional[float] = ..., text_threshold: _Optional[float] = ..., max_objects: _Optional[int] = ..., nms_iou_threshold: _Optional[float] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("rle", "png", "score", "area", "bbox")
    RLE_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    rle: Rle
    png: bytes
    score: float
    area: int
    bbox: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, rle: _Optional[_Union[Rle, _Mapping]] = ..., png: _Optional[bytes] = ..., score: _Optional[float] = ..., area: _Optional[int] = ..., bbox: _Optional[_Iterable[float]] = ...) -> None: ...

class ObjectMasks(_message.Message):
    __slots__ = ("masks", "object_score", "low_res_logits", "phrase", "detection_score", "box")
    MASKS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_SCORE_FIELD_NUMBER: _ClassVar[int]
    LOW_RES_LOGITS_FIELD_NUMBER: _ClassVar[int]
    PHRASE_FIELD_NUMBER: _ClassVar[int]
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    masks: _containers.RepeatedCompositeFieldContainer[Mask]
    object_score: float
    low_res_logits: _containers.RepeatedCompositeFieldContainer[LowResLogits]
    phrase: str
    detection_score: float
    box: Box
    def __init__(self, masks: _Optional[_Iterable[_Union[Mask, _Mapping]]] = ..., object_score: _Optional[float] = ..., low_res_logits: _Optional[_Iterable[_Union[LowResLogits, _Mapping]]] = ..., phrase: _Optional[str] = ..., detection_score: _Optional[float] = ..., box: _Optional[_Union[Box, _Mapping]] = ...) -> None: ...

class MaskFromPromptResponse(_message.Message):
    __slots__ = ("image_id", "width", "height", "objects", "model", "cached")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    width: int
    height: int
    objects: _containers.RepeatedCompositeFieldContainer[ObjectMasks]
    model: ModelInfo
    cached: bool
    def __init__(self, image_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., objects: _Optional[_Iterable[_Union[ObjectMasks, _Mapping]]] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., cached: bool = ...) -> None: ...

class CloseImageRequest(_message.Message):
    __slots__ = ("image_id",)
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    def __init__(self, image_id: _Optional[str] = ...) -> None: ...

class CloseImageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("models", "triton_version")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    TRITON_VERSION_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    triton_version: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., triton_version: _Optional[str] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("image", "task", "threshold", "mask_threshold", "overlap_mask_area_threshold", "label_ids_to_fuse", "label_map_format")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MASK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_MASK_AREA_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LABEL_IDS_TO_FUSE_FIELD_NUMBER: _ClassVar[int]
    LABEL_MAP_FORMAT_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    task: SegmentTask
    threshold: float
    mask_threshold: float
    overlap_mask_area_threshold: float
    label_ids_to_fuse: _containers.RepeatedScalarFieldContainer[int]
    label_map_format: LabelMapFormat
    def __init__(self, image: _Optional[bytes] = ..., task: _Optional[_Union[SegmentTask, str]] = ..., threshold: _Optional[float] = ..., mask_threshold: _Optional[float] = ..., overlap_mask_area_threshold: _Optional[float] = ..., label_ids_to_fuse: _Optional[_Iterable[int]] = ..., label_map_format: _Optional[_Union[LabelMapFormat, str]] = ...) -> None: ...

class LabelMap(_message.Message):
    __slots__ = ("height", "width", "png", "run_values", "run_lengths")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    RUN_VALUES_FIELD_NUMBER: _ClassVar[int]
    RUN_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    png: bytes
    run_values: _containers.RepeatedScalarFieldContainer[int]
    run_lengths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., png: _Optional[bytes] = ..., run_values: _Optional[_Iterable[int]] = ..., run_lengths: _Optional[_Iterable[int]] = ...) -> None: ...

class ImageSegment(_message.Message):
    __slots__ = ("id", "label_id", "label_name", "score", "area", "bbox", "mask", "was_fused")
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    WAS_FUSED_FIELD_NUMBER: _ClassVar[int]
    id: int
    label_id: int
    label_name: str
    score: float
    area: int
    bbox: _containers.RepeatedScalarFieldContainer[float]
    mask: Rle
    was_fused: bool
    def __init__(self, id: _Optional[int] = ..., label_id: _Optional[int] = ..., label_name: _Optional[str] = ..., score: _Optional[float] = ..., area: _Optional[int] = ..., bbox: _Optional[_Iterable[float]] = ..., mask: _Optional[_Union[Rle, _Mapping]] = ..., was_fused: bool = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("width", "height", "task", "label_map", "segments", "model")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    LABEL_MAP_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    task: SegmentTask
    label_map: LabelMap
    segments: _containers.RepeatedCompositeFieldContainer[ImageSegment]
    model: ModelInfo
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., task: _Optional[_Union[SegmentTask, str]] = ..., label_map: _Optional[_Union[LabelMap, _Mapping]] = ..., segments: _Optional[_Iterable[_Union[ImageSegment, _Mapping]]] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("image", "text", "box_threshold", "text_threshold", "max_objects", "nms_iou_threshold")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BOX_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TEXT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    NMS_IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    text: str
    box_threshold: float
    text_threshold: float
    max_objects: int
    nms_iou_threshold: float
    def __init__(self, image: _Optional[bytes] = ..., text: _Optional[str] = ..., box_threshold: _Optional[float] = ..., text_threshold: _Optional[float] = ..., max_objects: _Optional[int] = ..., nms_iou_threshold: _Optional[float] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("phrase", "score", "box")
    PHRASE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    phrase: str
    score: float
    box: Box
    def __init__(self, phrase: _Optional[str] = ..., score: _Optional[float] = ..., box: _Optional[_Union[Box, _Mapping]] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("width", "height", "detections", "model")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    model: ModelInfo
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...
