"""Hypothesis strategies for the RPC fuzz (tests/test_fuzz.py): field values, adversarial images and
forged ids.

Every generated field value comes as a `Tagged(value, bad)`: `bad` is None for a value the API
accepts, else the documented rule it breaks (a point outside the image, a threshold outside [0, 1],
an unknown enum value ...). A request with any bad field must not succeed; which error it gets is
the server's choice among the documented ones. Values whose fate the API does not document (a
truncated image that may still decode, a huge object id) are generated but left untagged: for those
only "a documented status, never INTERNAL" is checked.

Big inputs are built from small draws (a count and a template), so Hypothesis' buffer stays small
and a 3000-point request costs one draw.
"""
from __future__ import annotations

import base64
import io
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st
from PIL import Image

NAN, INF = float("nan"), float("inf")
F32_MAX = 3.4028234663852886e38
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
# Non-finite, negative, huge, tiny and signed-zero floats; all exactly representable in float32.
SPECIAL_FLOATS = [NAN, INF, -INF, -1.0, -1e6, 1e6, F32_MAX, -F32_MAX, 1e-45, -0.0, 2.0**31, 1e30, -1e-6]
SPECIAL_INT32 = [-1, 0, 1, 2, 3, 7, 255, 256, 65535, 2**31 - 1, -(2**31)]
SPECIAL_INT64 = [0, -1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63)]


@dataclass(frozen=True)
class Tagged:
    value: Any
    bad: str | None = None


def bad_of(*tags: Tagged | None) -> str | None:
    """The first broken rule among the tags (None: all acceptable)."""
    return next((t.bad for t in tags if t is not None and t.bad), None)


def pick(options) -> st.SearchStrategy:
    """One of `options`, about uniformly (`st.sampled_from` is, inside composite draws; `st.integers`
    over a small range is not: it favours its lower end)."""
    return st.sampled_from(list(options))


def weighted(*options: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, each with about its weight's share of the examples. (`st.one_of`
    flattens nested one_ofs into one choice, so repeating a branch does not weigh it.)"""
    table = [strategy for weight, strategy in options for _ in range(weight)]
    return pick(range(len(table))).flatmap(lambda i: table[i])


def mostly(valid: st.SearchStrategy, adversarial: st.SearchStrategy, valid_weight: int = 3) -> st.SearchStrategy:
    """`valid` valid_weight / (valid_weight + 1) of the time, else `adversarial`."""
    return weighted((valid_weight, valid), (1, adversarial))


# ---------------------------------------------------------------------------------- numbers


def any_float() -> st.SearchStrategy:
    return st.one_of(pick(SPECIAL_FLOATS), st.floats(width=32, allow_nan=True, allow_infinity=True))


def coordinate(limit: int | None, what: str) -> st.SearchStrategy:
    """A pixel coordinate in [0, limit] (valid) or anything a float32 holds (bad when outside)."""
    def tag(value: float) -> Tagged:
        inside = limit is not None and math.isfinite(value) and 0 <= value <= limit
        return Tagged(value, None if inside else f"{what} outside the image or not finite")
    valid = st.floats(0, limit, width=32) if limit else st.just(0.0)
    return mostly(valid, any_float(), 8).map(tag)


def unit_threshold(what: str) -> st.SearchStrategy:
    """An optional threshold documented to lie in [0, 1]: None (unset), inside, or outside."""
    def tag(value):
        if value is None:
            return Tagged(None)
        ok = math.isfinite(value) and 0.0 <= value <= 1.0
        return Tagged(value, None if ok else f"{what} outside [0, 1]")
    return weighted((3, st.none()), (2, st.floats(0, 1, width=32)), (1, any_float())).map(tag)


def enum_value(known: tuple[int, ...], what: str) -> st.SearchStrategy:
    """A proto3 open enum: a known value, or any int32 (bad when unknown)."""
    return mostly(pick(known), st.one_of(pick(SPECIAL_INT32), st.integers(*INT32)), 6).map(
        lambda v: Tagged(v, None if v in known else f"unknown {what} value {v}"))


def unknown_enum(known: tuple[int, ...]) -> st.SearchStrategy:
    return st.one_of(pick(SPECIAL_INT32), st.integers(*INT32)).filter(lambda v: v not in known)


def outside(limit: float) -> st.SearchStrategy:
    """A float32 outside [0, limit], or not finite."""
    return any_float().filter(lambda v: not (math.isfinite(v) and 0 <= v <= limit))


def int32(valid: st.SearchStrategy, ok=lambda v: True, what: str = "value") -> st.SearchStrategy:
    return mostly(valid, st.one_of(pick(SPECIAL_INT32), st.integers(*INT32)), 5).map(
        lambda v: Tagged(v, None if ok(v) else f"{what} = {v} out of its documented range"))


def count(usual: list[int], huge: list[int]) -> st.SearchStrategy:
    return mostly(pick(usual), pick(huge), 6)


# ---------------------------------------------------------------------------------- images


def _encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with a tiny body: a bomb's signature."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b"")


def jpeg_header_claiming(width: int, height: int) -> bytes:
    """SOI + a baseline SOF0 claiming width x height, then EOI: no scan data at all."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


@dataclass(frozen=True)
class ImageSample:
    name: str
    data: bytes
    size: tuple[int, int] | None  # (width, height) when it decodes; None when it must be refused
    bad: str | None                # the documented rule it breaks (None: valid, or fate undocumented)


def image_catalogue(photo: np.ndarray, max_pixels: int) -> list[ImageSample]:
    """Valid images of many shapes and encodings, and broken ones. `photo`: a small real RGB image;
    `max_pixels`: the server's pixel limit (a real bomb just over it is included)."""
    h, w = photo.shape[:2]
    rng = np.random.default_rng(0)
    png, jpeg = _encode(photo, "PNG"), _encode(photo, "JPEG", quality=90)
    side = int(math.isqrt(max_pixels)) + 8
    bomb = io.BytesIO()
    Image.new("L", (side, side)).save(bomb, format="PNG")
    anim = io.BytesIO()
    frames = [Image.fromarray(photo), Image.fromarray(photo[::-1].copy())]
    frames[0].save(anim, format="GIF", save_all=True, append_images=frames[1:])
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # inside IHDR's CRC: libpng refuses it
    grey16 = (rng.random((17, 23)) * 65535).astype(np.uint16)
    valid = [
        ImageSample("photo.png", png, (w, h), None),
        ImageSample("photo.jpg", jpeg, (w, h), None),
        ImageSample("photo.webp", _encode(photo, "WEBP"), (w, h), None),
        ImageSample("photo.bmp", _encode(photo, "BMP"), (w, h), None),
        ImageSample("photo.tiff", _encode(photo, "TIFF"), (w, h), None),
        ImageSample("animated.gif", anim.getvalue(), (w, h), None),
        ImageSample("1x1.png", _encode(np.array([[[200, 10, 10]]], np.uint8), "PNG"), (1, 1), None),
        ImageSample("1x37.png", _encode(rng.integers(0, 255, (1, 37, 3), np.uint8), "PNG"), (37, 1), None),
        ImageSample("41x1.png", _encode(rng.integers(0, 255, (41, 1, 3), np.uint8), "PNG"), (1, 41), None),
        ImageSample("grey.png", _encode(photo.mean(-1).astype(np.uint8), "PNG"), (w, h), None),
        ImageSample("grey16.png", _encode(grey16, "PNG"), (23, 17), None),
        ImageSample("rgba.png", _encode(np.dstack([photo, np.full((h, w), 128, np.uint8)]), "PNG"), (w, h), None),
        ImageSample("palette.png", _palette(photo), (w, h), None),
        ImageSample("bilevel.png", _encode(photo.mean(-1) > 100, "PNG"), (w, h), None),
        ImageSample("cmyk.jpg", _cmyk_jpeg(photo), (w, h), None),
    ]
    broken = [
        ImageSample("empty", b"", None, "empty image"),
        ImageSample("text", b"definitely not an image", None, "not an image"),
        ImageSample("png-signature-only", b"\x89PNG\r\n\x1a\n", None, "not an image"),
        ImageSample("png-header-100000x100000", png_header_only(100_000, 100_000), None, "image over the pixel limit"),
        ImageSample("png-header-0x10", png_header_only(0, 10), None, "zero-size image"),
        ImageSample("png-header-2^31x1", png_header_only(2**31 - 1, 1), None, "image over the pixel limit"),
        ImageSample("jpeg-header-65500x65500", jpeg_header_claiming(65500, 65500), None, "image over the pixel limit"),
        ImageSample("jpeg-sof-0x0", jpeg_header_claiming(0, 0), None, "zero-size image"),
        ImageSample(f"bomb-{side}x{side}.png", bomb.getvalue(), None, "image over the pixel limit"),
        ImageSample("png-bad-crc", bytes(bad_crc), None, None),
        ImageSample("jpeg-soi-only", b"\xff\xd8\xff\xe0 truncated jpeg", None, "not an image"),
    ]
    return valid + broken + [
        ImageSample(f"photo.png[:{n}]", png[:n], None, None) for n in (8, 33, 60, len(png) // 2, len(png) - 12)
    ] + [ImageSample(f"photo.jpg[:{n}]", jpeg[:n], None, None) for n in (2, 20, len(jpeg) // 2, len(jpeg) - 2)]


def solid_png(value: int, size: int = 16) -> bytes:
    """A small grey PNG; different values give different bytes (distinct embedding-cache entries)."""
    return _encode(np.full((size, size, 3), value % 256, np.uint8), "PNG")


def _palette(photo: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(buffer, format="PNG")
    return buffer.getvalue()


def _cmyk_jpeg(photo: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo).convert("CMYK").save(buffer, format="JPEG")
    return buffer.getvalue()


def images(catalogue: list[ImageSample]) -> st.SearchStrategy:
    """A catalogue image, or random bytes (which are not an image)."""
    garbage = st.binary(min_size=1, max_size=96).map(lambda b: ImageSample(f"random {len(b)} bytes", b, None, None))
    return st.one_of(pick(catalogue), garbage)


def valid_images(catalogue: list[ImageSample]) -> st.SearchStrategy:
    return pick([s for s in catalogue if s.size and not s.bad])


# ---------------------------------------------------------------------------------- text


TEXTS = ["a cat.", "a red disc. a blue square.", "person", "", " ", "\t\n", ".", " . . . ", "....", "a" * 9000,
         "a. " * 300, "\x00", "cat\x00dog.", "猫。犬。", "🐱🐶.", "\u202e.tac a", "a\u0301 cat.", "[SEP] [CLS].",
         "a cat" * 60, "\ud7ff\ue000.", "%s %n %x."]


def caption() -> st.SearchStrategy:
    """A caption, tagged bad when the API documents a refusal (empty, whitespace, over 256 tokens)."""
    def tag(text: str) -> Tagged:
        if not text.strip():
            return Tagged(text, "empty or whitespace-only text")
        if not any(p.split() for p in text.split(".")):
            return Tagged(text, "text without words (only '.' separators)")
        if len(text) > 8192 or text == "a. " * 300:
            return Tagged(text, "text over 256 tokens")
        return Tagged(text)
    return st.one_of(pick(TEXTS), pick(TEXTS[:3]), st.text(max_size=40)).map(tag)


# ---------------------------------------------------------------------------------- ids


@dataclass(frozen=True)
class IdSpec:
    """A session id to send, resolved by the test's World at call time (genuine ids change per run).
    kind: valid_image | valid_video | fresh_video | closed_image | ended_video | empty | random |
    long | old_format | tampered_* | flipped_* | padded_* | noncanonical_* (* = image or video).
    Only valid_* and fresh_video are live sessions of the right kind; padded_* and noncanonical_* are
    other spellings of a live id (an alias is not an id the server issued)."""
    kind: str
    text: str = ""
    n: int = 0
    char: str = "A"
    fields: tuple = ()

    @property
    def genuine(self) -> bool:
        return self.kind in ("valid_image", "valid_video", "fresh_video")


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def id_specs(valid_kind: str) -> st.SearchStrategy:
    """Ids for a field that expects a session of `valid_kind` ("image" or "video"): the genuine one
    (two thirds of the time), or a forged, stale, altered or other-kind one."""
    genuine = pick([IdSpec(f"valid_{valid_kind}")] + ([IdSpec("fresh_video")] if valid_kind == "video" else []))
    return mostly(genuine, forged_ids(valid_kind), 2)


def forged_ids(valid_kind: str) -> st.SearchStrategy:
    """Ids that are not a live session of `valid_kind`: made up, stale, altered or of the other kind."""
    other = "video" if valid_kind == "image" else "image"
    return st.one_of(
        st.just(IdSpec("empty")),
        st.text(max_size=40).map(lambda t: IdSpec("random", text=t)),
        pick([513, 4096, 100_000]).map(lambda n: IdSpec("long", n=n)),
        st.tuples(pick(["triton", "127.0.0.1:1", "evil.example:8001", ""]),
                  pick(["ffff", "0", "-5", "f" * 40, "zz", "7fffffffffffffff", ""]),
                  pick(["4294967296", "0", "-5", "48", "2147483648", "x"]),
                  pick(["4294967296", "0", "-5", "64", "1"]),
                  pick(["1", "2", "s2"])).map(lambda f: IdSpec("old_format", fields=f)),
        st.tuples(pick([0, 1, 2, 4800, 65535, 2**31, -1]), pick([0, 1, 3, 6400, 2**31, -1]))
        .map(lambda hw: IdSpec(f"tampered_{valid_kind}", fields=hw)),
        st.tuples(pick(range(128)), pick(list(B64) + [".", "=", "|", " ", "é"]))
        .map(lambda pc: IdSpec(f"flipped_{valid_kind}", n=pc[0], char=pc[1])),
        pick(["=", "==", "\n", " ", "\x00"]).map(lambda s: IdSpec(f"padded_{valid_kind}", text=s)),
        st.just(IdSpec(f"noncanonical_{valid_kind}")),
        st.just(IdSpec(f"valid_{other}")),
        st.just(IdSpec("closed_image" if valid_kind == "image" else "ended_video")),
    )


def old_format_id(fields: tuple, triton_url: str) -> str:
    """The pre-HMAC image id format: base64url('1|replica|sequence hex|height|width')."""
    url, sequence, height, width, version = fields
    url = triton_url if url == "triton" else url
    raw = f"{version}|{url}|{sequence}|{height}|{width}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def tamper(genuine: str, height: int, width: int) -> str:
    """The genuine id with its size fields rewritten, in whichever format it uses: the old base64
    payload re-encoded, or the signed format's payload replaced with the tag kept."""
    def unb64(text):
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    def b64(data):
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    parts = genuine.split(".")
    try:
        if len(parts) == 3:  # <version>.<payload>.<tag>
            fields = unb64(parts[1]).decode().split("|")
            fields[-2:] = [str(height), str(width)]
            return ".".join([parts[0], b64("|".join(fields).encode()), parts[2]])
        fields = unb64(genuine).decode().split("|")
        if len(fields) >= 3:
            fields[-2:] = [str(height), str(width)]
            return b64("|".join(fields).encode())
    except (ValueError, UnicodeDecodeError):
        pass
    return genuine[:-2] + ("AA" if not genuine.endswith("AA") else "BB")


def flip(genuine: str, position: int, char: str) -> str:
    """One character replaced (by a different one) at position % len, never the last character of a
    dot-separated part: that one may carry unused bits, and changing only those is `noncanonical`."""
    if len(genuine) < 2:
        return char
    i = position % len(genuine)
    while i > 0 and (genuine[i] == "." or i == len(genuine) - 1 or genuine[i + 1] == "."):
        i -= 1
    if genuine[i] == char:
        char = "B" if char != "B" else "C"
    return genuine[:i] + char + genuine[i + 1:]


def noncanonical(genuine: str) -> str:
    """Another spelling of the same bytes: the last base64 character of the id's last part changed in
    its unused low bits only (or, when there are none, padding appended)."""
    head, _, part = genuine.rpartition(".")
    def unb64(text):
        try:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            return None
    for c in B64:
        candidate = part[:-1] + c
        if candidate != part and unb64(candidate) is not None and unb64(candidate) == unb64(part):
            return (head + "." if head else "") + candidate
    return genuine + "="
