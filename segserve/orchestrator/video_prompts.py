"""Prompts of `VideoTracking.AddPrompts` beyond points and boxes: mask prompts (decoded and checked
here, at the frames' size) and text prompts (Grounding DINO on one frame of the session, through the
same `grounding_detect` ensemble as `Detect`, so the boxes are the ones `Detect` gives for that
frame's image).

Where the frame's pixels come from: the tracker model already holds every frame of the session
(within its byte cap), so the orchestrator asks it for the one frame a text prompt needs
(`TrackerOp.GET_FRAME`) instead of keeping a second copy of every session's video in its own memory: a
text prompt costs one frame over gRPC, every other request costs nothing, and the byte caps stay
in one place.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import grpc
import numpy as np
from PIL import Image

from segserve.common import rle as rle_codec

from .errors import ServiceError, invalid

MAX_MASK_PIXELS = 64_000_000  # far beyond any frame the tracker accepts; refused before decoding


@dataclass(frozen=True)
class Detection:
    object_id: int
    phrase: str
    score: float
    box: tuple[float, float, float, float]


def decode_mask(message, where: str, height: int, width: int) -> np.ndarray:
    """`ObjectPrompt.mask` (rle or png) -> uint8 [H, W] (1 = object) at the frames' size."""
    has_rle, has_png = message.HasField("rle"), bool(message.png)
    if has_rle == has_png:
        raise invalid(where, "set exactly one of rle or png")
    if has_png:
        try:
            image = Image.open(io.BytesIO(message.png))
            if image.width * image.height > MAX_MASK_PIXELS:
                raise invalid(f"{where}.png", f"{image.width}x{image.height} is far larger than the frames")
            image.load()
        except ServiceError:
            raise
        except Exception as exc:
            raise invalid(f"{where}.png", f"cannot be decoded as an image ({type(exc).__name__})") from None
        if (image.height, image.width) != (height, width):
            raise invalid(f"{where}.png", f"is {image.width}x{image.height}, the frames are {width}x{height}")
        array = np.asarray(image.convert("L") if image.mode not in ("L", "1", "P") else image)
        return (array != 0).astype(np.uint8)
    size = list(message.rle.size)
    if size != [height, width]:
        raise invalid(f"{where}.rle.size", f"is {size}, the frames are [{height}, {width}] (height, width)")
    try:
        runs = rle_codec.runs(message.rle.counts)
    except ValueError as exc:
        raise invalid(f"{where}.rle.counts", str(exc)) from None
    if sum(runs) != height * width:
        raise invalid(f"{where}.rle.counts", f"the runs cover {sum(runs)} pixels, the frame has {height * width}")
    return rle_codec.decode({"size": size, "counts": message.rle.counts}).astype(np.uint8)


def text_object_ids(prompt, count: int, tracked: list[int], requested: list[int]) -> list[int]:
    """Ids of `count` new objects from a text prompt: from `first_object_id`, or one past the largest
    id tracked or named in the request (so ids never collide and are the same on every replay)."""
    if prompt.HasField("first_object_id"):
        first = prompt.first_object_id
        ids = [first + i for i in range(count)]
        taken = sorted(set(ids) & (set(tracked) | set(requested)))
        if taken:
            raise invalid("text.first_object_id", f"ids {taken} are already used in this session or request")
        return ids
    first = max([*tracked, *requested], default=0) + 1
    return [first + i for i in range(count)]


def text_error(exc: ServiceError) -> ServiceError:
    """Errors of the shared text path, renamed for the video API: fields under `text.`, and a
    missing Grounding DINO is a precondition of this request (the video API itself is served)."""
    if exc.code == grpc.StatusCode.UNIMPLEMENTED:
        return ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                            "text: text prompts need Grounding DINO, and this server's model repository has none: "
                            "export it (`segserve export --families sam2_video,grounding_dino`) and rebuild the "
                            "repository")
    if exc.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return ServiceError(exc.code, "text." + exc.message)
    return exc
