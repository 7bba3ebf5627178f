"""Text-to-mask demo step and the CLI's `segment --text`: Grounding DINO boxes for a caption, a SAM 2
mask per box, drawn as a labelled overlay (phrase and score per object).

    from segserve.demo_text import run
    summary = run(client, "photo.jpg", Path("out"))   # writes out/text_overlay.png, out/text_objects.json
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from segserve.client import ImageLike, PromptResult, SegservClient, image_bytes
from segserve.common.image import decode_image
from segserve.common.overlay import overlay

DEMO_CAPTION = "a person. a flag. a helmet."


def labelled_overlay(image: np.ndarray, result: PromptResult) -> Image.Image:
    """Masks tinted, detected boxes outlined, each labelled "phrase score"."""
    labels = [f"{o.phrase} {o.detection_score:.2f}" for o in result.objects]
    boxes = [o.box for o in result.objects if o.box is not None]
    return overlay(image, [o.best.mask for o in result.objects], labels, (), boxes)


def summarize(result: PromptResult) -> list[dict]:
    return [{"phrase": o.phrase, "score": round(o.detection_score, 4), "box": [round(v, 2) for v in o.box],
             "mask_score": round(o.best.score, 4), "mask_area": o.best.area} for o in result.objects]


def run(client: SegservClient, image: ImageLike, out_dir: Path, caption: str = DEMO_CAPTION,
        box_threshold: float | None = None, text_threshold: float | None = None) -> dict:
    """One text-to-mask request and one Detect request on `image`; writes the overlay and a JSON
    summary into `out_dir` and returns the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = image_bytes(image)
    start = time.perf_counter()
    result = client.mask_from_text(data, caption, box_threshold=box_threshold, text_threshold=text_threshold)
    latency = time.perf_counter() - start
    start = time.perf_counter()
    detections = client.detect(data, caption, box_threshold=box_threshold, text_threshold=text_threshold)
    detect_latency = time.perf_counter() - start
    overlay_path = out_dir / "text_overlay.png"
    labelled_overlay(decode_image(data), result).save(overlay_path)
    summary = {
        "caption": caption,
        "random_weights": result.model.random_weights,
        "objects": summarize(result),
        "detections": [{"phrase": d.phrase, "score": round(d.score, 4), "box": [round(v, 2) for v in d.box]}
                       for d in detections],
        "text_to_mask_latency_s": round(latency, 3),
        "detect_latency_s": round(detect_latency, 3),
        "overlay": str(overlay_path),
    }
    (out_dir / "text_objects.json").write_text(json.dumps(summary, indent=2))
    return summary


def cli_segment_text(args, data: bytes) -> None:
    """`segserve segment IMAGE --text "a cat." [--overlay out.png] [--out mask.png]`."""
    import grpc

    if args.point or args.box or args.multimask:
        sys.exit("segment: --text cannot be combined with --point, --box or --multimask")
    with SegservClient(args.server) as client:
        try:
            result = client.mask_from_text(data, args.text, box_threshold=args.box_threshold,
                                           text_threshold=args.text_threshold, max_objects=args.max_objects)
        except grpc.RpcError as exc:
            sys.exit(f"segment failed: {exc.code().name}: {exc.details()}")
    if args.out:
        masks: Sequence[np.ndarray] = [o.best.mask for o in result.objects]
        union = np.any(masks, axis=0) if masks else np.zeros((result.height, result.width), bool)
        Image.fromarray(union.astype(np.uint8) * 255).save(args.out)
        print(f"mask: {args.out}")
    if args.overlay:
        labelled_overlay(decode_image(data), result).save(args.overlay)
        print(f"overlay: {args.overlay}")
    print(json.dumps({"width": result.width, "height": result.height, "random_weights": result.model.random_weights,
                      "objects": summarize(result)}))
