"""Video files and frame folders <-> RGB frames, for the SDK and `segserve track` (client side: the
server only ever sees frames). Decoding and encoding use PyAV (`av`), whose wheels bundle FFmpeg.

    for frame in read_frames("clip.mp4", stride=2, max_frames=100):   # uint8 [H, W, 3]
        ...
    write_video("out.mp4", frames, fps=25)                            # libx264, else mpeg4
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# H.264 where the wheel has it (small files, plays everywhere); MPEG-4 part 2 is in every FFmpeg build.
DEFAULT_CODECS = ("libx264", "mpeg4")
MAX_FRAME_PIXELS = 64_000_000


class VideoError(ValueError):
    """A path that is neither a readable video nor a folder of images."""


def frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _check(stride: int, max_frames: int | None) -> None:
    if stride < 1:
        raise VideoError(f"stride must be at least 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise VideoError(f"max_frames must be at least 1, got {max_frames}")


def read_frames(path: str | Path, stride: int = 1, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames [H, W, 3] of a video file (any container / codec FFmpeg reads) or of a
    folder of images (sorted by name): every `stride`-th frame from the first, at most
    `max_frames` of them. Frames are decoded lazily, so a long video can be streamed."""
    _check(stride, max_frames)
    path = Path(path)
    if path.is_dir():
        yield from _read_folder(path, stride, max_frames)
    elif path.is_file():
        yield from _read_video(path, stride, max_frames)
    else:
        raise VideoError(f"{path} does not exist")


def _read_folder(folder: Path, stride: int, max_frames: int | None) -> Iterator[np.ndarray]:
    from segserve.common.image import ImageError, decode_image

    files = frame_files(folder)[::stride][:max_frames]
    if not files:
        raise VideoError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    for file in files:
        try:
            yield decode_image(file.read_bytes(), file.name, MAX_FRAME_PIXELS, 1 << 30)
        except ImageError as exc:
            raise VideoError(str(exc)) from exc


def _av():
    """PyAV, the `video` extra: the bare client reads frame folders only."""
    try:
        import av
    except ImportError:
        raise VideoError("video files need PyAV, the 'video' extra: pip install 'segserve[video]' "
                         "(or give a folder of frame images)") from None
    return av


def _read_video(path: Path, stride: int, max_frames: int | None) -> Iterator[np.ndarray]:
    av = _av()

    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise VideoError(f"{path} is not a video FFmpeg can read: {exc}") from exc
    with container:
        if not container.streams.video:
            raise VideoError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        kept = 0
        for index, frame in enumerate(container.decode(stream)):
            if index % stride:
                continue
            yield frame.to_ndarray(format="rgb24")
            kept += 1
            if max_frames is not None and kept >= max_frames:
                return


def frame_rate(path: str | Path, default: float = 10.0) -> float:
    """Frames per second of a video file (`default` for a folder or an unknown rate)."""
    path = Path(path)
    if not path.is_file():
        return default
    av = _av()

    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate if container.streams.video else None
    except av.FFmpegError:
        return default
    return float(rate) if rate else default


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = 10.0,
                codecs: Iterable[str] = DEFAULT_CODECS) -> tuple[str, int]:
    """Encode RGB frames to a video file with the first codec this FFmpeg build has; returns
    (codec, frames written). Odd sizes are padded by one edge pixel (yuv420p needs even sizes)."""
    av = _av()

    available = [c for c in codecs if c in av.codecs_available]
    if not available:
        raise VideoError(f"none of the codecs {list(codecs)} is in this PyAV build")
    codec = available[0]
    count = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            height, width = frame.shape[:2]
            frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            if stream is None:
                from fractions import Fraction

                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height = frame.shape[1], frame.shape[0]
                stream.pix_fmt = "yuv420p"
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return codec, count
