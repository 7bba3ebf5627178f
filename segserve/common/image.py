"""Image decoding with the guards a public endpoint needs.

Decoding happens once, in the orchestrator; Triton receives the RGB pixels. Every failure raises
`ImageError` with the request field it concerns, which the gRPC layer maps to a status code.

What comes out is what a viewer displays:
- EXIF orientation (tag 274, all 8 values; JPEG APP1, PNG eXIf, WebP EXIF, TIFF IFD0) is applied, so
  the array, the reported width/height, prompt coordinates and masks are in displayed orientation.
  Unreadable EXIF (corrupt, truncated, hostile) is ignored: the image is used as stored.
- 16-bit grayscale (Pillow modes I;16, I;16L, I;16B, I;16N, and mode I when the decoder read unsigned
  16-bit samples: 16-bit TIFF, PGM with maxval > 255) is reduced to 8 bits by keeping the high byte,
  `v >> 8` (= floor(v / 256); 257*k -> k exactly). That is the reduction Pillow itself applies to
  16-bit RGB(A) and gray+alpha PNG/TIFF (rawmodes RGB;16B, RGBA;16L, LA;16B, ...), so a 16-bit gray
  image and its 16-bit RGB twin decode to the same pixels. Pillow's `convert("RGB")` would clip
  those modes at 255 instead.
- Every other mode goes through Pillow's `convert("RGB")`, exactly as before (8-bit RGB, RGBA, L, LA,
  P, 1, CMYK, YCbCr; mode I with 32-bit data and mode F are clipped as before).
"""
from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# 64 MPix holds any camera photo (8K is 33 MPix); beyond it a decompression bomb is likelier.
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_BYTES = 64 << 20

EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transposition that shows the stored pixels upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Unsigned 16-bit sample layouts of Pillow's decoders (tile rawmode), for mode I.
_RAW_UINT16 = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_MODES_UINT16 = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

log = logging.getLogger(__name__)


class ImageError(ValueError):
    """A bad image. `too_large` separates RESOURCE_EXHAUSTED from INVALID_ARGUMENT."""

    def __init__(self, field: str, message: str, too_large: bool = False):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.too_large = too_large


def decode_image(data: bytes, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Encoded bytes (PNG, JPEG, WebP, TIFF, ...) -> RGB uint8 array [H, W, 3], displayed orientation."""
    if not data:
        raise ImageError(field, "is empty")
    if len(data) > max_bytes:
        raise ImageError(field, f"is {len(data)} bytes, over the {max_bytes}-byte limit", too_large=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on corrupt EXIF entries
            with Image.open(io.BytesIO(data)) as image:
                # Read from the header, before any pixel is decoded. The orientation may swap width
                # and height later, never the count.
                width, height = image.size
                if width <= 0 or height <= 0:
                    raise ImageError(field, f"has zero size ({width}x{height})")
                if width * height > max_pixels:
                    raise ImageError(field, f"is {width}x{height} pixels, over the {max_pixels}-pixel limit",
                                     too_large=True)
                rawmode = _tile_rawmode(image)  # the tile list is gone once the pixels are loaded
                image.load()
                rgb = _to_rgb(image, rawmode)
                transpose = _UPRIGHT.get(exif_orientation(image))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(field, f"rejected as a decompression bomb ({exc})", too_large=True) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(field, f"could not be decoded as an image ({type(exc).__name__}: {exc})") from exc
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(field, f"decoded to an empty array of shape {rgb.shape}")
    if transpose is not None:
        rgb = np.asarray(Image.fromarray(rgb).transpose(transpose))
    return np.ascontiguousarray(rgb)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened image; 1 when absent, invalid or unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow warns on each corrupt IFD entry
            value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception as exc:  # noqa: BLE001 - hostile EXIF may break the parser in any way
        log.info("ignoring unreadable EXIF (%s: %s)", type(exc).__name__, exc)
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _tile_rawmode(image: Image.Image) -> str | None:
    try:
        args = image.tile[0].args if len(image.tile) else None
    except (AttributeError, IndexError, TypeError):
        return None
    if isinstance(args, tuple) and args:
        args = args[0]
    return args if isinstance(args, str) else None


def _is_uint16_gray(image: Image.Image, rawmode: str | None) -> bool:
    if image.mode in _MODES_UINT16:
        return True
    # Pillow's PPM plugin scales PGM samples with maxval > 255 to 0..65535 in mode I.
    return image.mode == "I" and (rawmode in _RAW_UINT16 or image.format == "PPM")


def _to_rgb(image: Image.Image, rawmode: str | None) -> np.ndarray:
    if _is_uint16_gray(image, rawmode):
        samples = np.asarray(image)  # uint16 (either byte order) or int32 for mode I
        if samples.dtype.kind != "u":
            samples = np.clip(samples, 0, 65535)
        gray = (samples >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
