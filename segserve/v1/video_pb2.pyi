from segserve.v1 import segmentation_pb2 as _segmentation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RawFrame(_message.Message):
    __slots__ = ("width", "height", "rgb")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RGB_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    rgb: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., rgb: _Optional[bytes] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("image", "raw")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    raw: RawFrame
    def __init__(self, image: _Optional[bytes] = ..., raw: _Optional[_Union[RawFrame, _Mapping]] = ...) -> None: ...

class VideoFrames(_message.Message):
    __slots__ = ("session_id", "frames")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    def __init__(self, session_id: _Optional[str] = ..., frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ...) -> None: ...

class VideoSessionInfo(_message.Message):
    __slots__ = ("session_id", "num_frames", "width", "height", "object_ids", "idle_seconds", "model")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    num_frames: int
    width: int
    height: int
    object_ids: _containers.RepeatedScalarFieldContainer[int]
    idle_seconds: float
    model: _segmentation_pb2.ModelInfo
    def __init__(self, session_id: _Optional[str] = ..., num_frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., object_ids: _Optional[_Iterable[int]] = ..., idle_seconds: _Optional[float] = ..., model: _Optional[_Union[_segmentation_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class ObjectPrompt(_message.Message):
    __slots__ = ("object_id", "points", "box", "mask")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    object_id: int
    points: _containers.RepeatedCompositeFieldContainer[_segmentation_pb2.Point]
    box: _segmentation_pb2.Box
    mask: _segmentation_pb2.Mask
    def __init__(self, object_id: _Optional[int] = ..., points: _Optional[_Iterable[_Union[_segmentation_pb2.Point, _Mapping]]] = ..., box: _Optional[_Union[_segmentation_pb2.Box, _Mapping]] = ..., mask: _Optional[_Union[_segmentation_pb2.Mask, _Mapping]] = ...) -> None: ...

class TextPrompt(_message.Message):
    __slots__ = ("text", "box_threshold", "text_threshold", "max_objects", "nms_iou_threshold", "first_object_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BOX_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TEXT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    NMS_IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FIRST_OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    box_threshold: float
    text_threshold: float
    max_objects: int
    nms_iou_threshold: float
    first_object_id: int
    def __init__(self, text: _Optional[str] = ..., box_threshold: _Optional[float] = ..., text_threshold: _Optional[float] = ..., max_objects: _Optional[int] = ..., nms_iou_threshold: _Optional[float] = ..., first_object_id: _Optional[int] = ...) -> None: ...

class AddPromptsRequest(_message.Message):
    __slots__ = ("session_id", "frame_index", "objects", "mask_format", "text")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    MASK_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    frame_index: int
    objects: _containers.RepeatedCompositeFieldContainer[ObjectPrompt]
    mask_format: _segmentation_pb2.MaskFormat
    text: TextPrompt
    def __init__(self, session_id: _Optional[str] = ..., frame_index: _Optional[int] = ..., objects: _Optional[_Iterable[_Union[ObjectPrompt, _Mapping]]] = ..., mask_format: _Optional[_Union[_segmentation_pb2.MaskFormat, str]] = ..., text: _Optional[_Union[TextPrompt, _Mapping]] = ...) -> None: ...

class ObjectMask(_message.Message):
    __slots__ = ("object_id", "object_score", "mask", "phrase", "detection_score", "box")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_SCORE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    PHRASE_FIELD_NUMBER: _ClassVar[int]
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    object_id: int
    object_score: float
    mask: _segmentation_pb2.Mask
    phrase: str
    detection_score: float
    box: _segmentation_pb2.Box
    def __init__(self, object_id: _Optional[int] = ..., object_score: _Optional[float] = ..., mask: _Optional[_Union[_segmentation_pb2.Mask, _Mapping]] = ..., phrase: _Optional[str] = ..., detection_score: _Optional[float] = ..., box: _Optional[_Union[_segmentation_pb2.Box, _Mapping]] = ...) -> None: ...

class FrameMasks(_message.Message):
    __slots__ = ("frame_index", "objects")
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    frame_index: int
    objects: _containers.RepeatedCompositeFieldContainer[ObjectMask]
    def __init__(self, frame_index: _Optional[int] = ..., objects: _Optional[_Iterable[_Union[ObjectMask, _Mapping]]] = ...) -> None: ...

class PropagateRequest(_message.Message):
    __slots__ = ("session_id", "start_frame_index", "reverse", "max_frames", "mask_format")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    REVERSE_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MASK_FORMAT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    start_frame_index: int
    reverse: bool
    max_frames: int
    mask_format: _segmentation_pb2.MaskFormat
    def __init__(self, session_id: _Optional[str] = ..., start_frame_index: _Optional[int] = ..., reverse: bool = ..., max_frames: _Optional[int] = ..., mask_format: _Optional[_Union[_segmentation_pb2.MaskFormat, str]] = ...) -> None: ...

class RemoveObjectRequest(_message.Message):
    __slots__ = ("session_id", "object_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    object_id: int
    def __init__(self, session_id: _Optional[str] = ..., object_id: _Optional[int] = ...) -> None: ...

class EndSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class EndSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[VideoSessionInfo]
    def __init__(self, sessions: _Optional[_Iterable[_Union[VideoSessionInfo, _Mapping]]] = ...) -> None: ...
