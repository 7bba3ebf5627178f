"""The operations of the `sam2_video_tracker` Triton model, named once for both sides: the
orchestrator sends them (OP input) and the tracker dispatches on them."""
from __future__ import annotations

from enum import IntEnum


class TrackerOp(IntEnum):
    FRAMES = 0  # FRAMES [1, F, H, W, 3] uint8: append frames (START carries the first ones)
    PROMPT = 1  # FRAME_INDEX, OBJ_IDS [1, O], POINT_COORDS [1, O, N, 2], POINT_LABELS [1, O, N], MASKS
    STEP = 2  # FRAME_INDEX, REVERSE: one propagation step
    REMOVE = 3  # OBJ_IDS [1, 1]
    INFO = 4  # nothing: the session's frame count, size and objects (with END: close it)
    START_FRAME = 5  # the default first frame of a propagation (earliest prompted frame)
    GET_FRAME = 6  # FRAME_INDEX -> FRAME [1, H, W, 3]


# POINT_LABELS value that pads an object's clicks to the request's longest prompt; an object whose
# labels are all padding is a mask prompt.
PAD_LABEL = -10
