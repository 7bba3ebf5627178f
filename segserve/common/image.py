"""Image decoding with the guards a public endpoint needs.

Decoding happens once, in the orchestrator; Triton receives the RGB pixels. Every failure raises
`ImageError` with the request field it concerns, which the gRPC layer maps to a status code.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# 64 MPix holds any camera photo (8K is 33 MPix); beyond it a decompression bomb is likelier.
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_BYTES = 64 << 20


class ImageError(ValueError):
    """A bad image. `too_large` separates RESOURCE_EXHAUSTED from INVALID_ARGUMENT."""

    def __init__(self, field: str, message: str, too_large: bool = False):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.too_large = too_large


def decode_image(data: bytes, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Encoded bytes (PNG, JPEG, WebP, ...) -> RGB uint8 array [H, W, 3]."""
    if not data:
        raise ImageError(field, "is empty")
    if len(data) > max_bytes:
        raise ImageError(field, f"is {len(data)} bytes, over the {max_bytes}-byte limit", too_large=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size  # read from the header, before any pixel is decoded
                if width <= 0 or height <= 0:
                    raise ImageError(field, f"has zero size ({width}x{height})")
                if width * height > max_pixels:
                    raise ImageError(field, f"is {width}x{height} pixels, over the {max_pixels}-pixel limit",
                                     too_large=True)
                rgb = np.asarray(image.convert("RGB"))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(field, f"rejected as a decompression bomb ({exc})", too_large=True) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(field, f"could not be decoded as an image ({type(exc).__name__}: {exc})") from exc
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(field, f"decoded to an empty array of shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


def encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
