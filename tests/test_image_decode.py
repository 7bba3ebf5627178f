"""decode_image: EXIF orientation, 16-bit samples, hostile EXIF, and every other format unchanged.

References are computed here from the pixels the test wrote (or from Pillow), never by our decoder.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from segserve.common.image import ImageError, decode_image

ORIENTATION = 0x0112


def upright(height: int = 20, width: int = 30) -> np.ndarray:
    """An asymmetric RGB test card: every pixel differs, so any flip or rotation shows."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 8 % 256, y * 12 % 256, (x * 3 + y * 5) % 256], axis=-1).astype(np.uint8)


# What a camera stores for each orientation, given the upright scene: the inverse of the display
# transform that the EXIF 2.3 spec defines for the tag (row 0 / column 0 of the stored image).
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                 # mirrored horizontally
    3: lambda a: a[::-1, ::-1],              # rotated 180
    4: lambda a: a[::-1],                    # mirrored vertically
    5: lambda a: np.transpose(a, (1, 0, 2)),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, 1),             # display rotates it 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, -1),            # display rotates it 90 degrees counter-clockwise
}


def encode(array: np.ndarray | Image.Image, fmt: str, orientation: int | None = None, **options) -> bytes:
    image = array if isinstance(array, Image.Image) else Image.fromarray(np.ascontiguousarray(array))
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        options["exif"] = exif
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pillow_before(data: bytes) -> np.ndarray:
    """The decoder as it was: Pillow's convert("RGB") on the stored pixels."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour PNGs)."""
    height, width = samples.shape[:2]
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = samples.reshape(height, width * channels).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


def with_jpeg_app1(jpeg: bytes, payload: bytes) -> bytes:
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def tiff_ifd(entries: list[tuple[int, int, int, bytes]], ifd_offset: int = 8, count: int | None = None) -> bytes:
    """A little-endian TIFF header + one IFD: (tag, type, count, 4-byte value field)."""
    body = struct.pack("<H", len(entries) if count is None else count)
    for tag, kind, n, value in entries:
        body += struct.pack("<HHI", tag, kind, n) + value.ljust(4, b"\x00")
    return b"II*\x00" + struct.pack("<I", ifd_offset) + body + b"\x00\x00\x00\x00"


# ------------------------------------------------------------------------------------------------
# EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_orientation_gives_the_displayed_pixels(orientation):
    scene = upright()
    stored = STORED[orientation](scene)
    data = encode(stored, "PNG", orientation)
    with Image.open(io.BytesIO(data)) as check:  # the tag really is in the file
        assert check.getexif()[ORIENTATION] == orientation
    decoded = decode_image(data)
    assert decoded.shape == scene.shape
    np.testing.assert_array_equal(decoded, scene)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_orientation_matches_pillow_exif_transpose(orientation):
    scene = upright(48, 64)
    data = encode(STORED[orientation](scene), "JPEG", orientation, quality=95, subsampling=0)
    with Image.open(io.BytesIO(data)) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    decoded = decode_image(data)
    assert decoded.shape == (48, 64, 3)
    np.testing.assert_array_equal(decoded, expected)
    # and it is the scene, up to JPEG's loss
    assert np.abs(decoded.astype(int) - scene).mean() < 4


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_webp_and_tiff_orientation(orientation):
    scene = upright()
    for fmt, options in (("WEBP", {"lossless": True}), ("TIFF", {})):
        data = encode(STORED[orientation](scene), fmt, orientation, **options)
        np.testing.assert_array_equal(decode_image(data), scene, err_msg=fmt)


def test_pixel_limit_uses_the_header_count_before_rotation():
    data = encode(STORED[6](upright(20, 30)), "PNG", 6)
    assert decode_image(data, max_pixels=600).shape == (20, 30, 3)
    with pytest.raises(ImageError) as caught:
        decode_image(data, max_pixels=599)
    assert caught.value.too_large


def test_pixel_limit_is_checked_before_any_pixel_is_decoded():
    # 81 MPix: over our 64 MPix limit, under Pillow's own bomb limits (89 MPix warning, 179 error)
    header = struct.pack(">IIBBBBB", 9_000, 9_000, 8, 2, 0, 0, 0)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    bomb = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"eXIf", exif.tobytes())
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b""))
    with pytest.raises(ImageError) as caught:
        decode_image(bomb)
    assert caught.value.too_large
    assert "9000x9000 pixels, over the 64000000-pixel limit" in str(caught.value)


# ------------------------------------------------------------------------------------------------
# hostile EXIF: ignored, the image is used as stored

SHORT, ASCII, LONG = 3, 2, 4
CORRUPT_EXIF = {
    "not_tiff": b"Exif\x00\x00garbage, not a TIFF header",
    "truncated_header": b"Exif\x00\x00II*\x00",
    "ifd_offset_past_the_end": b"Exif\x00\x00" + tiff_ifd([], ifd_offset=0x7FFFFFF0),
    "entry_count_past_the_end": b"Exif\x00\x00" + tiff_ifd([(0x010F, ASCII, 4, b"abc\x00")], count=0xFFFF),
    "orientation_as_text": b"Exif\x00\x00" + tiff_ifd([(ORIENTATION, ASCII, 4, b"six\x00")]),
    "orientation_out_of_range": b"Exif\x00\x00" + tiff_ifd([(ORIENTATION, SHORT, 1, struct.pack("<H", 9))]),
    "orientation_zero": b"Exif\x00\x00" + tiff_ifd([(ORIENTATION, SHORT, 1, struct.pack("<H", 0))]),
    "orientation_value_outside_the_file": b"Exif\x00\x00" + tiff_ifd(
        [(ORIENTATION, SHORT, 1000, struct.pack("<I", 0x7FFFFF00))]),
    "orientation_huge_long": b"Exif\x00\x00" + tiff_ifd([(ORIENTATION, LONG, 1, struct.pack("<I", 0xFFFFFFFF))]),
    "exif_sub_ifd_loop": b"Exif\x00\x00" + tiff_ifd([(0x8769, LONG, 1, struct.pack("<I", 8))]),
}


@pytest.mark.parametrize("name", list(CORRUPT_EXIF))
def test_corrupt_exif_in_jpeg_is_ignored(name):
    scene = upright(32, 48)
    jpeg = encode(scene, "JPEG", quality=95)
    data = with_jpeg_app1(jpeg, CORRUPT_EXIF[name])
    decoded = decode_image(data)
    np.testing.assert_array_equal(decoded, pillow_before(jpeg))


@pytest.mark.parametrize("name", list(CORRUPT_EXIF))
def test_corrupt_exif_in_png_is_ignored(name):
    scene = upright()
    png = encode(scene, "PNG")
    assert png[33:37] == b"IDAT" or b"IDAT" in png
    at = png.index(b"IDAT") - 4
    data = png[:at] + png_chunk(b"eXIf", CORRUPT_EXIF[name][6:]) + png[at:]
    np.testing.assert_array_equal(decode_image(data), scene)


@pytest.mark.parametrize("error", [SyntaxError("not a TIFF file"), struct.error("unpack"), RecursionError(),
                                   KeyError(0), ValueError("bad IFD")])
def test_exif_parser_failure_is_ignored(monkeypatch, error):
    """Whatever Pillow's EXIF parser raises on a hostile block, the image is used as stored."""
    scene = upright()
    data = encode(STORED[6](scene), "PNG", 6)

    def broken(self):
        raise error

    monkeypatch.setattr(Image.Image, "getexif", broken)
    np.testing.assert_array_equal(decode_image(data), STORED[6](scene))


# ------------------------------------------------------------------------------------------------
# 16-bit samples: v >> 8 (the high byte), as Pillow reduces 16-bit RGB PNG/TIFF itself


def gradient16(height: int = 16, width: int = 300) -> np.ndarray:
    ramp = np.linspace(0, 65535, width).round().astype(np.uint16)
    samples = np.tile(ramp, (height, 1))
    samples[1] = np.arange(width, dtype=np.uint16) % 256 * 257  # exact 8-bit values scaled up
    samples[2] = 255  # dark: under one 8-bit step
    samples[3] = 65535
    return samples


def reference8(samples: np.ndarray) -> np.ndarray:
    return (samples.astype(np.uint32) // 256).astype(np.uint8)


def test_16_bit_grayscale_png_is_scaled_not_clipped():
    samples = gradient16()
    data = encode(samples, "PNG")
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "I;16"
    assert (pillow_before(data) == 255).mean() > 0.9  # the defect: convert("RGB") clips
    decoded = decode_image(data)
    assert decoded.shape == samples.shape + (3,)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], reference8(samples))
    np.testing.assert_array_equal(decoded[1, :, 0], np.arange(300) % 256)  # 257*k -> k exactly
    assert decoded[2].max() == 0 and decoded[3].min() == 255
    assert (decoded == 255).mean() < 0.1


def test_16_bit_grayscale_png_written_by_hand_big_endian():
    samples = gradient16(5, 70)
    np.testing.assert_array_equal(decode_image(png16(samples))[..., 0], reference8(samples))


@pytest.mark.parametrize("layout", ["I;16", "I;16B", "deflate"])
def test_16_bit_grayscale_tiff(layout):
    samples = gradient16(12, 257)
    if layout == "I;16B":
        image = Image.frombuffer("I;16B", samples.shape[::-1], samples.astype(">u2").tobytes(), "raw", "I;16B", 0, 1)
    else:
        image = Image.fromarray(samples)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF", **({"compression": "tiff_deflate"} if layout == "deflate" else {}))
    decoded = decode_image(buffer.getvalue())
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], reference8(samples))


def test_16_bit_pgm_mode_i():
    samples = gradient16(4, 40)
    data = b"P5 40 4 65535\n" + samples.astype(">u2").tobytes()
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "I"
    np.testing.assert_array_equal(decode_image(data)[..., 2], reference8(samples))


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16_bit_colour_png_and_tiff_agree_with_their_grayscale_twin(channels):
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(channels)
    gray = rng.integers(0, 65536, (9, 13), dtype=np.uint16)
    colour = rng.integers(0, 65536, (9, 13, channels), dtype=np.uint16)
    colour[..., 0] = gray
    if channels == 2:
        expected = np.repeat(reference8(gray)[..., None], 3, axis=2)
    else:
        colour[..., 1] = gray
        colour[..., 2] = gray
        expected = reference8(colour[..., :3])
    alpha = {2: 1, 3: None, 4: 3}[channels]
    if alpha is not None:
        colour[..., alpha] = 65535  # opaque: convert("RGB") drops alpha either way
    np.testing.assert_array_equal(decode_image(png16(colour)), expected)
    if channels >= 3:
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, colour, photometric="rgb", extrasamples=[2] if channels == 4 else None)
        np.testing.assert_array_equal(decode_image(buffer.getvalue()), expected)
    twin = np.repeat(decode_image(encode(gray, "PNG"))[..., :1], 3, axis=2)
    np.testing.assert_array_equal(decode_image(png16(colour))[..., 0], twin[..., 0])


def test_16_bit_tiff_with_orientation():
    samples = gradient16(6, 10)
    image = Image.fromarray(np.ascontiguousarray(np.rot90(samples, 1)))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF", exif=exif)
    np.testing.assert_array_equal(decode_image(buffer.getvalue())[..., 0], reference8(samples))


# ------------------------------------------------------------------------------------------------
# every other format: bit-identical to the decoder before this change


def _regression_cases() -> dict[str, bytes]:
    scene = upright(24, 40)
    rng = np.random.default_rng(7)
    rgba = np.concatenate([scene, rng.integers(0, 256, (24, 40, 1), dtype=np.uint8)], axis=2)
    gray = scene[..., 0]
    palette = Image.fromarray(scene).quantize(16)
    palette.info["transparency"] = 3
    cases = {
        "rgb_jpeg": encode(scene, "JPEG", quality=90),
        "gray_jpeg": encode(gray, "JPEG"),
        "cmyk_jpeg": encode(Image.fromarray(scene).convert("CMYK"), "JPEG"),
        "rgb_png": encode(scene, "PNG"),
        "rgba_png": encode(rgba, "PNG"),
        "gray_png": encode(gray, "PNG"),
        "la_png": encode(Image.fromarray(rgba).convert("LA"), "PNG"),
        "bilevel_png": encode(Image.fromarray(gray).convert("1"), "PNG"),
        "rgb_webp_lossy": encode(scene, "WEBP", quality=80),
        "rgba_webp_lossless": encode(rgba, "WEBP", lossless=True),
        "int32_tiff": encode(scene[..., 0].astype(np.int32) * 1000, "TIFF"),  # mode I, 32-bit: as before
        "gif": encode(scene, "GIF"),
    }
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    cases["palette_png_transparency"] = buffer.getvalue()
    return cases


REGRESSION = _regression_cases()


@pytest.mark.parametrize("name", list(REGRESSION))
def test_other_formats_decode_exactly_as_before(name):
    data = REGRESSION[name]
    decoded = decode_image(data)
    expected = pillow_before(data)
    assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, expected)


def test_bad_input_still_fails_as_before():
    with pytest.raises(ImageError, match="is empty"):
        decode_image(b"")
    with pytest.raises(ImageError, match="could not be decoded"):
        decode_image(b"not an image at all")
    with pytest.raises(ImageError) as caught:
        decode_image(b"\x00" * 100, max_bytes=99)
    assert caught.value.too_large


# ------------------------------------------------------------------------------------------------
# end to end: a phone photo stored rotated, through the real orchestrator + Triton


def test_rotated_photo_end_to_end(client, photo):
    height, width = photo.shape[:2]  # 400 x 480 displayed
    stored = np.rot90(photo, 1)  # stored 480 high, 400 wide; EXIF 6 says: turn it clockwise
    rotated = encode(stored, "PNG", 6)
    upright_png = encode(photo, "PNG")
    point = (450.0, 120.0, 1)  # x = 450 exists only in displayed coordinates (stored width is 400)
    assert point[0] >= stored.shape[1]

    opened = client.open_image(rotated)
    try:
        assert (opened.width, opened.height) == (width, height)
        result = client.mask_from_prompt(image_id=opened.image_id, points=[point], multimask=True)
    finally:
        client.close_image(opened.image_id)
    expected = client.mask_from_prompt(image=upright_png, points=[point], multimask=True)

    assert (result.width, result.height) == (width, height)
    assert len(result.objects) == len(expected.objects) == 1
    assert len(result.objects[0].masks) == len(expected.objects[0].masks)
    for got, want in zip(result.objects[0].masks, expected.objects[0].masks):
        assert got.mask.shape == (height, width)
        np.testing.assert_array_equal(got.mask, want.mask)
        assert got.score == pytest.approx(want.score, abs=1e-6)
    assert any(0 < m.mask.mean() < 1 for m in result.objects[0].masks)

    # the same bytes sent inline (no image_id) give the same answer
    inline = client.mask_from_prompt(image=rotated, points=[point], multimask=True)
    for got, want in zip(inline.objects[0].masks, expected.objects[0].masks):
        np.testing.assert_array_equal(got.mask, want.mask)
