"""Precision is provenance: each graph in bf16 (OpenVINO) measured against fp32 (ONNX Runtime, the
runtime the export's parity is measured in), by what the family's users see, not by raw tensor error.

- SAM 2 image (`sam2_image_encoder`, `sam2_prompt_decoder`, a gate each): N seeded single-point
  prompts on a fixed natural image (scikit-image's astronaut); the encoder in bf16 feeding the fp32
  decoder, and the fp32 encoder feeding the decoder in bf16, each against all-fp32: IoU of the masks
  (single and multimask, upscaled to the image and thresholded as served).
- SAM 2 video (the five graphs, one verdict shared: they only make sense together): the tracker
  (`sam2_video_core.VideoTracker`) on a synthetic clip with two clicked objects and one mask prompt,
  propagated through every frame, all five graphs in bf16 against all five in fp32: IoU per frame
  and object.
- Grounding DINO: thresholded detections as matched sets (boxes matched by IoU, phrases compared,
  score deltas), never per query index: its top-900 query selection is tie-sensitive, so even
  OpenVINO fp32 picks other queries than ONNX Runtime (design.md). A detection near the threshold
  may cross it: each side's detections are matched against the other side's detections at
  `threshold - TIE_MARGIN`.
- Mask2Former: segment agreement after the served post-processing (`common/mask2former_post.py`):
  semantic label-map pixel agreement, and panoptic segments matched by label and mask IoU (its bf16
  logits differ by up to 12% relative error at real size, which says nothing about segments).

A graph that fails its gate is served in fp32 and its record says so (`served_precision`). Records
(`PrecisionRecord`, `manifest.precisions`) are cached by the graphs' sha256: a re-export measures
again, a new gate re-judges the stored metrics without running anything. On a CPU without native
bf16 (AMX or AVX512-BF16) nothing is measured (emulated bf16 says nothing about the served one):
the record says why, and the graph is served in fp32.

`graph_precisions(manifest, requested)` is what `build_repository` asks: graph -> the precision to
serve it in, measuring first where a bf16 request finds no current record ("at first build").
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from segserve.export.manifest import Manifest, PrecisionRecord

log = logging.getLogger("segserve.precision")

MEASURED_RUNTIME = "openvino"
MEASURED_PRECISION = "bf16"
REFERENCE = "onnxruntime fp32"

SAM2_IMAGE_GRAPHS = ("sam2_image_encoder", "sam2_prompt_decoder")
SAM2_VIDEO_GRAPHS = ("sam2_video_image_encoder", "sam2_video_memory_attention", "sam2_video_decoder",
                     "sam2_video_memory_encoder", "sam2_video_mask_prompt")
FAMILY_GRAPHS: dict[str, tuple[str, ...]] = {
    "sam2": SAM2_IMAGE_GRAPHS,
    "sam2_video": SAM2_VIDEO_GRAPHS,
    "grounding_dino": ("grounding_dino",),
    "mask2former": ("mask2former",),
}
# Families whose graphs are measured together (they only run together): a record depends on all of
# their artifacts.
MEASURED_TOGETHER = {"sam2_video"}
VIDEO_ENCODER = "sam2_video_image_encoder"
# SAM 2 video in bf16 is tracked in nested configurations (`measure_sam2_video`), each adding graphs
# in the order of the time they save: the encoder (most of a one-object frame), then memory
# attention (most of each further object). The other three stay fp32:
# - the memory encoder: its bf16 memories feed back into every later frame (random weights at 512²:
#   IoU 0.72 with it in bf16, 0.98-0.99 without it);
# - the decoder and the mask prompt: OpenVINO 2026.4 aborts the process ("Data offsets with invalid
#   ranks detected" in a Subgraph of the decoder's cross-attention, then free(): invalid pointer)
#   when a tracker imports their bf16 compiled model from a cache that another process wrote, the
#   normal case when the precision measurement or another Triton model compiled it first.
VIDEO_BF16_TIERS: tuple[tuple[str, ...], ...] = (
    (VIDEO_ENCODER,),
    (VIDEO_ENCODER, "sam2_video_memory_attention"),
)

# Gates: metric -> [">=" | "<=", bound]. Chosen from what was measured:
# - SAM 2 image: at real size (hiera-tiny, 1024², random weights, which are harsher than trained
#   ones), masks from OpenVINO bf16 embeddings agree with fp32 at IoU median 0.9915, min 0.9855 over
#   20 prompts (design.md, issue 14). A median of 0.98 and a min of 0.90 leave room for the tiny
#   test models (whose masks are blobs of random texture, see the test's printed numbers) and still
#   refuse a graph whose bf16 masks visibly differ: one prompt's mask losing a tenth of its area.
# - SAM 2 video: the same bounds on every frame and object after propagation. Errors feed back through
#   the memory bank (stored in bf16 in fp32 too), so the min is the frame that drifted most. Judged
#   per nested tier of graphs in bf16 (`VIDEO_BF16_TIERS`).
# - Grounding DINO: every detection found on the other side (recall and precision >= 0.9, near-
#   threshold ones tolerated by TIE_MARGIN), matched boxes at IoU median >= 0.9, the same phrase for
#   >= 0.95 of them, and scores within 0.05 (scores are sigmoids in [0, 1]; bf16 has 8 mantissa bits,
#   so a logit of ~5 moves by ~0.02 and its sigmoid by far less).
# - Mask2Former: >= 0.95 of the pixels get the same semantic label and the same panoptic label, and
#   >= 0.9 of the segments (either way) have a match of the same label at median mask IoU >= 0.9.
GATES: dict[str, dict[str, list]] = {
    "sam2": {"median_iou": [">=", 0.98], "min_iou": [">=", 0.90]},
    "sam2_video": {"median_iou": [">=", 0.98], "min_iou": [">=", 0.90]},
    "grounding_dino": {"recall": [">=", 0.9], "precision": [">=", 0.9], "median_box_iou": [">=", 0.9],
                       "phrase_agreement": [">=", 0.95], "max_score_delta": ["<=", 0.05]},
    "mask2former": {"semantic_pixel_agreement": [">=", 0.95], "panoptic_pixel_agreement": [">=", 0.95],
                    "segment_recall": [">=", 0.9], "segment_precision": [">=", 0.9],
                    "median_segment_iou": [">=", 0.9]},
}
SAM2_PROMPTS = 16
VIDEO_FRAMES = 8
DETECTION_MATCH_IOU = 0.5
SEGMENT_MATCH_IOU = 0.5
TIE_MARGIN = 0.02  # a detection this close to the box threshold may cross it in either runtime
# Grounding DINO's selection for the measurement: the served defaults (`description.py`) are meant
# for trained weights; a measurement needs a set of a few dozen detections at most, so the box
# threshold is the served one unless that leaves none, then the 20th best score (recorded).
MAX_DETECTIONS = 20
# Mask2Former's the same way (`_segment_settings`).
MAX_SEGMENT_QUERIES = 20


class PrecisionError(RuntimeError):
    pass


# ---------------------------------------------------------------------------- inputs


def test_image() -> np.ndarray:
    """The fixed natural image every measurement uses: scikit-image's astronaut, cropped non-square."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[40:440, 20:500])


def _runners(paths: dict[str, Path], threads: int, cache_dir: Path | None = None) -> tuple[dict, dict]:
    """fp32 reference runners (ONNX Runtime, basic optimisations as the video tracker runs them) and
    the OpenVINO bf16 runners. `cache_dir`: OpenVINO's compiled-model cache (the SAM 2 image encoder
    takes about a minute to compile here)."""
    from segserve.triton_models.graph_runner import open_graph

    fp32 = {n: open_graph(p, "onnxruntime", "fp32", threads, optimization="basic") for n, p in paths.items()}
    bf16 = {n: open_graph(p, MEASURED_RUNTIME, MEASURED_PRECISION, threads, cache_dir) for n, p in paths.items()}
    return fp32, bf16


def _iou_stats(expected_logits: np.ndarray, actual_logits: np.ndarray, threshold: float = 0.0) -> dict[str, Any]:
    from segserve.engines.parity import mask_ious

    ious, gated = mask_ious(expected_logits, actual_logits, threshold)
    ref = (expected_logits > threshold).reshape(-1, *expected_logits.shape[-2:])
    area = ref.mean(axis=(1, 2))
    judged = ious[gated] if gated.any() else np.ones(1)
    return {"masks": int(ious.size), "masks_too_small_to_judge": int((~gated).sum()),
            "median_iou": round(float(np.median(judged)), 6), "min_iou": round(float(judged.min()), 6),
            "mean_iou": round(float(judged.mean()), 6),
            "reference_nonempty_masks": int((area > 0).sum()),
            "reference_median_area_fraction": round(float(np.median(area)), 6)}


# ---------------------------------------------------------------------------- SAM 2 image


def measure_sam2_image(manifest: Manifest, threads: int = 0, cache_dir: Path | None = None,
                       prompts: int = SAM2_PROMPTS) -> dict[str, dict]:
    from segserve.common import sam2_transforms

    config = manifest.records[SAM2_IMAGE_GRAPHS[1]].model_config
    size, low_res = int(config["image_size"]), int(config["low_res_mask_size"])
    fp32, bf16 = _runners({n: manifest.artifact_path(n) for n in SAM2_IMAGE_GRAPHS}, threads, cache_dir)
    encoder, decoder = SAM2_IMAGE_GRAPHS
    image = test_image()
    hw = image.shape[:2]
    pixels = sam2_transforms.preprocess(image, size)
    feats = {"fp32": fp32[encoder].run({"pixel_values": pixels}), "bf16": bf16[encoder].run({"pixel_values": pixels})}
    rng = np.random.default_rng(0)
    xy = rng.uniform(0.05, 0.95, (prompts, 2)) * np.array([hw[1], hw[0]])
    coords = np.zeros((prompts, 2, 2), np.float32)
    coords[:, 0] = sam2_transforms.to_model_coords(xy, hw, size)
    labels = np.tile(np.array([[1, sam2_transforms.PAD_LABEL]], np.int32), (prompts, 1))
    prompt_feeds = {"point_coords": coords, "point_labels": labels,
                    "mask_input": np.zeros((1, 1, low_res, low_res), np.float32),
                    "has_mask_input": np.zeros((1,), np.float32)}

    def masks(runner, features) -> np.ndarray:
        out = runner.run({**features, **prompt_feeds}, ["multi_masks", "single_mask"])
        logits = np.concatenate([out["single_mask"], out["multi_masks"]], axis=1)  # [P, 4, l, l]
        return sam2_transforms.upscale_logits(logits, hw)

    reference = masks(fp32[decoder], feats["fp32"])
    inputs = (f"{prompts} seeded single-point prompts (uniform, 5-95% of each side) on scikit-image's astronaut "
              f"{hw[1]}x{hw[0]}; single + 3 multimask masks each, upscaled to the image, logit > 0")
    return {
        encoder: {**_iou_stats(reference, masks(fp32[decoder], feats["bf16"])), "inputs": inputs,
                  "setup": "encoder bf16 -> decoder fp32 vs all fp32"},
        decoder: {**_iou_stats(reference, masks(bf16[decoder], feats["fp32"])), "inputs": inputs,
                  "setup": "encoder fp32 -> decoder bf16 vs all fp32",
                  "both_bf16": {k: v for k, v in _iou_stats(reference, masks(bf16[decoder], feats["bf16"])).items()
                                if k in ("median_iou", "min_iou")}},
    }


# ---------------------------------------------------------------------------- SAM 2 video


class RunnerGraphs:
    """`VideoTracker`'s graph runner (`run(name, feeds)`) over `graph_runner.open_graph` runners."""

    def __init__(self, runners: dict):
        self.runners = runners

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runners[name].run(feeds)


def _track(graphs, config: dict, frames: np.ndarray, centres: dict) -> list[np.ndarray]:
    """Clicks on two shapes and a mask prompt on frame 0, then propagation: low-res logits per frame
    [objects, l, l]."""
    from segserve.common import sam2_transforms
    from segserve.triton_models.sam2_video_core import VideoSession, VideoTracker

    tracker = VideoTracker(graphs, config)
    session = VideoSession()
    tracker.add_frames(session, list(frames))
    hw = frames.shape[1:3]
    size = tracker.image_size

    def click(points, labels):
        return (sam2_transforms.to_model_coords(np.array(points, np.float32), hw, size), np.array(labels, np.int32))

    mask = np.zeros(hw, bool)
    mask[int(hw[0] * 0.65):int(hw[0] * 0.95), int(hw[1] * 0.05):int(hw[1] * 0.35)] = True
    (x2, y2) = centres[2][0]
    prompts = [click([centres[1][0]], [1]), click([(x2, y2), (5.0, 5.0)], [1, 0]), mask]
    results = [tracker.add_prompts(session, 0, [1, 2, 3], prompts).low_res_masks]
    for index in range(1, len(frames)):
        results.append(tracker.step(session, index).low_res_masks)
    return results


def _video_stats(reference: list[np.ndarray], measured: list[np.ndarray], hw) -> dict[str, Any]:
    from segserve.common import sam2_transforms

    stats = _iou_stats(np.concatenate([sam2_transforms.upscale_logits(r, hw) for r in reference]),
                       np.concatenate([sam2_transforms.upscale_logits(g, hw) for g in measured]))
    stats["per_frame_min_iou"] = [_iou_stats(sam2_transforms.upscale_logits(r, hw),
                                             sam2_transforms.upscale_logits(g, hw))["min_iou"]
                                  for r, g in zip(reference, measured)]
    return stats


def measure_sam2_video(manifest: Manifest, threads: int = 0, cache_dir: Path | None = None,
                       frames: int = VIDEO_FRAMES) -> dict[str, dict]:
    """Tracking with bf16 graphs against tracking with fp32 ones, for each of `VIDEO_BF16_TIERS`
    (the other graphs fp32). A graph's record carries the figures of the first tier that puts it in
    bf16, with the gated IoUs the worst of that tier and every smaller one: a graph passes only
    where all the tiers up to its own pass, so the graphs served in bf16 are always exactly one
    measured tier (or none)."""
    from segserve.common.synthetic_video import moving_shapes

    config = manifest.records[SAM2_VIDEO_GRAPHS[0]].model_config
    fp32, bf16 = _runners({n: manifest.artifact_path(n) for n in SAM2_VIDEO_GRAPHS}, threads, cache_dir)
    clip, centres = moving_shapes(frames, 120, 160)
    hw = clip.shape[1:3]
    reference = _track(RunnerGraphs(fp32), config, clip, centres)
    tiers = []
    for graphs in VIDEO_BF16_TIERS:
        runners = {**fp32, **{g: bf16[g] for g in graphs}}
        tiers.append(_video_stats(reference, _track(RunnerGraphs(runners), config, clip, centres), hw))
    summary = [{"bf16": list(graphs), **{k: t[k] for k in ("median_iou", "min_iou", "mean_iou")}}
               for graphs, t in zip(VIDEO_BF16_TIERS, tiers)]
    common = dict(frames=len(reference), objects=int(reference[0].shape[0]), tiers=summary,
                  inputs=f"synthetic clip (moving_shapes) {frames} frames {hw[1]}x{hw[0]}: two clicked objects and "
                         "one mask prompt on frame 0, propagated forward; masks per frame and object")
    metrics = {}
    for name in SAM2_VIDEO_GRAPHS:
        own = next((i for i, graphs in enumerate(VIDEO_BF16_TIERS) if name in graphs), None)
        if own is None:  # fp32 in every tier: the figures are those of the largest tier
            metrics[name] = {**tiers[-1], **common, "bf16_offered": False,
                             "setup": "not offered in bf16 (see VIDEO_BF16_TIERS); figures of the largest tier"}
            continue
        metrics[name] = {**tiers[own], **common, "tier": own,
                         **{k: min(t[k] for t in tiers[:own + 1]) for k in ("median_iou", "min_iou", "mean_iou")},
                         "setup": f"bf16 {list(VIDEO_BF16_TIERS[own])}, the other graphs fp32, against all five in "
                                  f"fp32, through VideoTracker; the IoUs judged are the worst of tiers 0..{own}"}
    return metrics


# ---------------------------------------------------------------------------- Grounding DINO

GROUNDING_CAPTIONS = ("a person. a flag. a helmet.", "an astronaut in a white suit. the sky.")


def _match(a_boxes: np.ndarray, b_boxes: np.ndarray, min_iou: float) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by IoU (best pairs first): (index in a, index in b, IoU)."""
    from segserve.common.grounding import box_iou

    if not len(a_boxes) or not len(b_boxes):
        return []
    iou = box_iou(a_boxes, b_boxes)
    pairs = []
    used_a, used_b = set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < min_iou:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((int(i), int(j), float(iou[i, j])))
    return pairs


def _tokens(probs: np.ndarray, query: int, cut: float, length: int) -> set[int]:
    """Caption positions above `cut` for one query (first and last logit column excluded, as
    `grounding.phrase_token_ids`)."""
    row = probs[query, :length] > cut
    return {int(i) for i in np.flatnonzero(row) if 0 < i < probs.shape[1] - 1}


def compare_detections(ref: dict, got: dict, threshold: float, text_threshold: float, length: int) -> dict[str, Any]:
    """Detections as sets. `ref` / `got`: {"strict": Detections above threshold, "loose": above
    threshold - TIE_MARGIN, "probs": [Q, L] token probabilities}. Each strict side is matched (box
    IoU >= DETECTION_MATCH_IOU) against the other's loose side; a matched pair's phrases agree when
    every token above text_threshold on one side is above text_threshold - TIE_MARGIN on the other."""
    forward = _match(ref["strict"].boxes, got["loose"].boxes, DETECTION_MATCH_IOU)
    backward = _match(got["strict"].boxes, ref["loose"].boxes, DETECTION_MATCH_IOU)
    phrases, exact, deltas = [], [], []
    for i, j, _ in forward:
        qi, qj = int(ref["strict"].query_indices[i]), int(got["loose"].query_indices[j])
        ref_tokens = _tokens(ref["probs"], qi, text_threshold, length)
        got_tokens = _tokens(got["probs"], qj, text_threshold, length)
        phrases.append(ref_tokens <= _tokens(got["probs"], qj, text_threshold - TIE_MARGIN, length)
                       and got_tokens <= _tokens(ref["probs"], qi, text_threshold - TIE_MARGIN, length))
        exact.append(ref["strict"].labels[i] == got["loose"].labels[j])
        deltas.append(abs(float(ref["strict"].scores[i]) - float(got["loose"].scores[j])))
    return {"reference_detections": len(ref["strict"]), "measured_detections": len(got["strict"]),
            "matched": len(forward), "matched_back": len(backward), "box_ious": [iou for *_, iou in forward],
            "phrases_equal": phrases, "phrases_identical": exact, "score_deltas": deltas}


def _detection_metrics(results: list[dict[str, Any]]) -> dict[str, Any]:
    ref_n = sum(r["reference_detections"] for r in results)
    got_n = sum(r["measured_detections"] for r in results)
    ious = [v for r in results for v in r["box_ious"]]
    phrases = [v for r in results for v in r["phrases_equal"]]
    exact = [v for r in results for v in r["phrases_identical"]]
    deltas = [v for r in results for v in r["score_deltas"]]
    return {
        "reference_detections": ref_n, "measured_detections": got_n,
        "matched": sum(r["matched"] for r in results),
        # Nothing to compare is not agreement.
        "recall": round(sum(r["matched"] for r in results) / ref_n, 6) if ref_n else 0.0,
        "precision": round(sum(r["matched_back"] for r in results) / got_n, 6) if got_n else 0.0,
        "median_box_iou": round(float(np.median(ious)), 6) if ious else 0.0,
        "min_box_iou": round(float(min(ious)), 6) if ious else 0.0,
        "phrase_agreement": round(float(np.mean(phrases)), 6) if phrases else 0.0,
        "phrase_identical": round(float(np.mean(exact)), 6) if exact else 0.0,
        "max_score_delta": round(float(max(deltas)), 6) if deltas else 0.0,
    }


def measure_grounding_dino(manifest: Manifest, threads: int = 0, cache_dir: Path | None = None) -> dict[str, dict]:
    from segserve.common.grounding import CaptionTokenizer, letterbox, select_boxes, sigmoid
    from segserve.triton_models.graph_runner import open_graph

    config = manifest.records["grounding_dino"].model_config
    tokenizer = CaptionTokenizer(manifest.directory / config["tokenizer_dir"])
    path = manifest.artifact_path("grounding_dino")
    fp32, bf16 = _runners({"grounding_dino": path}, threads, cache_dir)
    # The runtime's own noise floor: OpenVINO in fp32 against the same reference.
    control = open_graph(path, MEASURED_RUNTIME, "fp32", threads, cache_dir)
    boxed = letterbox(test_image(), int(config["image_size"]))
    box_threshold, text_threshold = _grounding_defaults()
    measured, controls, thresholds = [], [], []
    for caption in GROUNDING_CAPTIONS:
        text = tokenizer.encode_batch([caption])
        length = text["input_ids"].shape[1]
        feeds = {"pixel_values": boxed.pixel_values[None], "pixel_mask": boxed.pixel_mask[None], **text}
        outs = {"ref": fp32["grounding_dino"].run(feeds), "bf16": bf16["grounding_dino"].run(feeds),
                "control": control.run(feeds)}
        scores = np.sort(sigmoid(outs["ref"]["logits"][0]).max(-1))[::-1]
        # The served threshold, raised to keep at most MAX_DETECTIONS (random weights score everything alike).
        threshold = max(box_threshold, float(scores[min(MAX_DETECTIONS, len(scores) - 1)]))
        thresholds.append(round(threshold, 6))

        sides = {}
        for key, out in outs.items():
            detect = [select_boxes(out["logits"][0], out["pred_boxes"][0], text["input_ids"][0], boxed.original_size,
                                   tokenizer.decode, box_threshold=min(max(cut, 0.0), 1.0),
                                   text_threshold=text_threshold) for cut in (threshold, threshold - TIE_MARGIN)]
            sides[key] = {"strict": detect[0], "loose": detect[1], "probs": sigmoid(out["logits"][0])}
        measured.append(compare_detections(sides["ref"], sides["bf16"], threshold, text_threshold, length))
        controls.append(compare_detections(sides["ref"], sides["control"], threshold, text_threshold, length))
    metrics = _detection_metrics(measured)
    control_metrics = _detection_metrics(controls)
    metrics.update(
        openvino_fp32_control={k: control_metrics[k] for k in ("recall", "precision", "median_box_iou",
                                                               "phrase_agreement", "max_score_delta")},
        box_thresholds=thresholds, text_threshold=text_threshold, tie_margin=TIE_MARGIN,
        inputs=f"scikit-image's astronaut letterboxed, captions {list(GROUNDING_CAPTIONS)}; detections above the "
               f"served box threshold ({box_threshold}) or the {MAX_DETECTIONS}th best reference score, no NMS",
        setup="bf16 vs fp32, detections matched by box IoU >= 0.5 (openvino_fp32_control: OpenVINO fp32 vs the "
              "same reference, the runtime's own tie-sensitivity)")
    return {"grounding_dino": metrics}


def _grounding_defaults() -> tuple[float, float]:
    try:
        from segserve.repository.description import GROUNDING_DEFAULTS

        return float(GROUNDING_DEFAULTS["box_threshold"]), float(GROUNDING_DEFAULTS["text_threshold"])
    except (ImportError, KeyError):
        return 0.35, 0.25


# ---------------------------------------------------------------------------- Mask2Former


def _segment_masks(result) -> tuple[list[np.ndarray], list[int]]:
    masks, labels = [], []
    for info in result.segments_info:
        masks.append(result.segmentation == info["id"])
        labels.append(int(info["label_id"]))
    return masks, labels


def _label_map(result) -> np.ndarray:
    labels = np.full(result.segmentation.shape, -1, np.int64)
    for info in result.segments_info:
        labels[result.segmentation == info["id"]] = int(info["label_id"])
    return labels


def _match_segments(a, b) -> list[tuple[int, int, float]]:
    (a_masks, a_labels), (b_masks, b_labels) = a, b
    pairs = []
    for i, (mask, label) in enumerate(zip(a_masks, a_labels)):
        for j, (other, other_label) in enumerate(zip(b_masks, b_labels)):
            if label != other_label:
                continue
            union = np.logical_or(mask, other).sum()
            iou = float(np.logical_and(mask, other).sum() / union) if union else 1.0
            if iou >= SEGMENT_MATCH_IOU:  # > 0.5: at most one match each way
                pairs.append((i, j, iou))
    return pairs


def _segment_settings(post, fp32_out: dict, sizes, mask_size: int, options: dict) -> dict:
    """The served post-processing if the fp32 panoptic result keeps a segment with it. Otherwise
    (random weights at real size: every query scores about 1/num_labels) the score threshold goes
    just under the MAX_SEGMENT_QUERIES-th best query's score, and the mask threshold, which applies
    to score-weighted mask probabilities, to half of that, so that there are segments to compare."""
    args = (fp32_out["class_queries_logits"], fp32_out["masks_queries_logits"])
    if post.post_process_panoptic_segmentation(*args, target_sizes=sizes, mask_size=mask_size,
                                               **options)[0].segments_info:
        return options
    probs = post.softmax(fp32_out["class_queries_logits"][0])
    kept = probs.argmax(-1) != probs.shape[-1] - 1  # the last class is "no object"
    if not kept.any():
        return options
    scores = np.sort(probs.max(-1)[kept])[::-1]
    threshold = float(scores[min(MAX_SEGMENT_QUERIES, len(scores)) - 1]) * 0.999
    return {**options, "threshold": threshold, "mask_threshold": threshold / 2}


def measure_mask2former(manifest: Manifest, threads: int = 0, cache_dir: Path | None = None) -> dict[str, dict]:
    from segserve.common import mask2former_post as post

    config = manifest.records["mask2former"].model_config
    fp32, bf16 = _runners({"mask2former": manifest.artifact_path("mask2former")}, threads, cache_dir)
    pixels, sizes = post.preprocess([test_image()], post.PreprocessConfig.from_model_config(config))
    settings = config.get("postprocess", {})
    options = {k: settings[k] for k in ("threshold", "mask_threshold", "overlap_mask_area_threshold") if k in settings}
    mask_size = settings.get("mask_size", post.HF_MASK_SIZE)
    outs = {"fp32": fp32["mask2former"].run({"pixel_values": pixels}),
            "bf16": bf16["mask2former"].run({"pixel_values": pixels})}
    served = dict(options)
    options = _segment_settings(post, outs["fp32"], sizes, mask_size, options)
    semantic, panoptic = {}, {}
    for key, out in outs.items():
        args = (out["class_queries_logits"], out["masks_queries_logits"])
        semantic[key] = post.post_process_semantic_segmentation(*args, target_sizes=sizes, mask_size=mask_size)[0]
        panoptic[key] = post.post_process_panoptic_segmentation(*args, target_sizes=sizes, mask_size=mask_size,
                                                                **options)[0]
    ref_segments, got_segments = _segment_masks(panoptic["fp32"]), _segment_masks(panoptic["bf16"])
    pairs = _match_segments(ref_segments, got_segments)
    ious = [iou for _, _, iou in pairs]
    n_ref, n_got = len(ref_segments[0]), len(got_segments[0])
    return {"mask2former": {
        "semantic_pixel_agreement": round(float((semantic["fp32"] == semantic["bf16"]).mean()), 6),
        "semantic_labels_in_reference": int(np.unique(semantic["fp32"]).size),
        "panoptic_pixel_agreement": round(float((_label_map(panoptic["fp32"]) == _label_map(panoptic["bf16"])).mean()), 6),
        "reference_segments": n_ref, "measured_segments": n_got, "matched_segments": len(pairs),
        "segment_recall": round(len(pairs) / n_ref, 6) if n_ref else 0.0,
        "segment_precision": round(len(pairs) / n_got, 6) if n_got else 0.0,
        "median_segment_iou": round(float(np.median(ious)), 6) if ious else 0.0,
        "min_segment_iou": round(float(min(ious)), 6) if ious else 0.0,
        "post_processing": {k: round(float(v), 6) for k, v in options.items()}, "served_post_processing": served,
        "inputs": f"scikit-image's astronaut {sizes[0][1]}x{sizes[0][0]}, mask_size {mask_size}; the served "
                  f"post-processing, or where that keeps no segment, the score threshold under the "
                  f"{MAX_SEGMENT_QUERIES}th best query score and the mask threshold at half of it",
        "setup": "bf16 vs fp32: semantic label maps, panoptic segments matched by label and mask IoU > 0.5",
    }}


# Bumped when a family's measurement changes, so that older records are measured again:
# sam2_video 3 (nested bf16 tiers, the encoder and memory attention), mask2former 2 (thresholds
# that keep segments).
METHODS = {"sam2": 1, "sam2_video": 3, "grounding_dino": 1, "mask2former": 2}
MEASURES: dict[str, Callable[..., dict[str, dict]]] = {
    "sam2": measure_sam2_image, "sam2_video": measure_sam2_video,
    "grounding_dino": measure_grounding_dino, "mask2former": measure_mask2former,
}


# ---------------------------------------------------------------------------- gates and records


def judge(metrics: dict[str, Any], gate: dict[str, list]) -> list[str]:
    """The gate's failures (empty: passed)."""
    failures = ["bf16 not offered for this graph"] if metrics.get("bf16_offered") is False else []
    for name, (op, bound) in gate.items():
        value = metrics.get(name)
        if value is None:
            failures.append(f"{name} not measured")
        elif (op == ">=" and not value >= bound) or (op == "<=" and not value <= bound):
            failures.append(f"{name} {value:.4g} (needs {op} {bound:g})")
    return failures


def _versions() -> dict[str, str]:
    import onnxruntime
    import openvino

    return {"openvino": openvino.__version__, "onnxruntime": onnxruntime.__version__}


def _cpu(flags: set[str] | None) -> str:
    from segserve.triton_models.graph_runner import cpu_flags

    flags = cpu_flags() if flags is None else flags
    return ",".join(sorted({"amx_bf16", "avx512_bf16", "amx_tile"} & flags)) or "no native bf16"


def _present_families(manifest: Manifest) -> list[str]:
    return [f for f, graphs in FAMILY_GRAPHS.items() if all(g in manifest.records for g in graphs)]


def _current(manifest: Manifest, record: PrecisionRecord | None) -> bool:
    """The record measured exactly the artifacts now in the manifest (all of a shared verdict's),
    the way its family is measured now (`METHODS`)."""
    if record is None:
        return False
    if record.status in ("passed", "failed") and record.metrics.get("method", 1) != METHODS.get(record.family, 1):
        return False
    group = record.artifacts_sha256 or {record.name: record.onnx_sha256}
    return all(name in manifest.records and manifest.records[name].sha256 == sha for name, sha in group.items())


def _gate_of(family: str, gates: dict[str, dict] | None) -> dict[str, list]:
    gate = {k: list(v) for k, v in GATES[family].items()}
    for name, value in ((gates or {}).get(family) or {}).items():
        gate[name] = list(value) if isinstance(value, (list, tuple)) else [gate.get(name, [">=", 0])[0], value]
    return gate


def measure(artifacts: Path | Manifest, families: list[str] | None = None, gates: dict[str, dict] | None = None,
            threads: int = 0, force: bool = False, flags: set[str] | None = None,
            cache_dir: Path | None = None) -> dict[str, PrecisionRecord]:
    """Measure (or reuse) every graph of `families` (default: every exported family). `gates`
    overrides thresholds per family: {"sam2": {"min_iou": 0.95}} or {"sam2": {"min_iou": [">=", 0.95]}}.
    A stored record of the same artifacts is reused and only re-judged if the gate changed."""
    from segserve.triton_models.graph_runner import cpu_has_native_bf16

    manifest = artifacts if isinstance(artifacts, Manifest) else Manifest(Path(artifacts))
    present = _present_families(manifest)
    families = present if families is None else families
    unknown = [f for f in families if f not in FAMILY_GRAPHS]
    if unknown:
        raise PrecisionError(f"unknown model families {unknown}; known: {sorted(FAMILY_GRAPHS)}")
    missing = [f for f in families if f not in present]
    if missing:
        raise PrecisionError(f"families {missing} are not exported in {manifest.directory}")
    native = cpu_has_native_bf16(flags)
    records: dict[str, PrecisionRecord] = {}
    changed = False
    for family in families:
        graphs = FAMILY_GRAPHS[family]
        gate = _gate_of(family, gates)
        shas = {g: manifest.records[g].sha256 for g in graphs}
        stored = [manifest.precisions.get(g) for g in graphs]
        reusable = not force and all(_current(manifest, r) for r in stored) and \
            all(r.status in ("passed", "failed") for r in stored)
        if reusable:
            for record in stored:
                failures = judge(record.metrics, gate)
                if record.gate != gate:
                    _verdict(record, gate, failures, family)
                    changed = True
                records[record.name] = record
            continue
        if not native:
            reason = ("this CPU has no native bf16 (AMX or AVX512-BF16): bf16 not measured (emulated bf16 would "
                      "measure another arithmetic, slowly); served in fp32")
            for graph in graphs:
                previous = manifest.precisions.get(graph)
                if previous is not None and _current(manifest, previous) and previous.status == "skipped" and not force:
                    records[graph] = previous
                    continue
                records[graph] = PrecisionRecord(
                    name=graph, family=family, onnx_sha256=shas[graph], artifacts_sha256=_group(family, shas, graph),
                    status="skipped", passed=False, served_precision="fp32", gate=gate, reason=reason,
                    cpu=_cpu(flags))
                manifest.precisions[graph] = records[graph]
                changed = True
            log.warning("%s: %s", family, reason)
            continue
        started = time.perf_counter()
        metrics = MEASURES[family](manifest, threads=threads, cache_dir=cache_dir)
        for graph_metrics in metrics.values():
            graph_metrics["method"] = METHODS[family]
        seconds = round(time.perf_counter() - started, 3)
        together = family in MEASURED_TOGETHER
        for graph in graphs:
            record = PrecisionRecord(
                name=graph, family=family, onnx_sha256=shas[graph], artifacts_sha256=_group(family, shas, graph),
                status="failed", passed=False, served_precision="fp32", gate=gate, metrics=metrics[graph],
                shared_with=[g for g in graphs if g != graph] if together else [], versions=_versions(),
                cpu=_cpu(flags), seconds=seconds)
            _verdict(record, gate, judge(metrics[graph], gate), family)
            manifest.precisions[graph] = records[graph] = record
            changed = True
    if changed:
        manifest.save()
    return records


def _group(family: str, shas: dict[str, str], graph: str) -> dict[str, str]:
    return dict(shas) if family in MEASURED_TOGETHER else {graph: shas[graph]}


def _verdict(record: PrecisionRecord, gate: dict, failures: list[str], family: str) -> None:
    record.gate = gate
    record.failures = failures
    record.passed = not failures
    record.status = "passed" if record.passed else "failed"
    record.served_precision = MEASURED_PRECISION if record.passed else "fp32"
    if record.passed:
        record.reason = f"bf16 agrees with fp32 within the {family} gate"
    else:
        shared = " (measured together with the family's other graphs)" if record.shared_with else ""
        record.reason = f"bf16 failed its gate{shared}: {'; '.join(failures)}; served in fp32"


def graph_precisions(manifest: Manifest, requested: str, measure_missing: bool = True, threads: int = 0,
                     flags: set[str] | None = None, gates: dict[str, dict] | None = None,
                     cache_dir: Path | None = None) -> dict[str, str]:
    """graph -> the precision to serve it in. `requested` fp32: every graph fp32. bf16 (or auto on a
    CPU with native bf16): a graph whose current record passed its gate gets bf16, every other one
    fp32; graphs without a current record are measured first (`measure_missing`), so the first bf16
    build of an export pays the measurement once."""
    from segserve.triton_models.graph_runner import PRECISIONS, cpu_has_native_bf16

    if requested not in (*PRECISIONS, "auto"):
        raise ValueError(f"unknown precision {requested!r}: choose auto, {', '.join(PRECISIONS)}")
    if requested == "auto":
        requested = MEASURED_PRECISION if cpu_has_native_bf16(flags) else "fp32"
    result = {name: "fp32" for name in manifest.records}
    if requested == "fp32":
        return result
    families = _present_families(manifest)
    stale = [f for f in families if not all(_current(manifest, manifest.precisions.get(g)) for g in FAMILY_GRAPHS[f])]
    if stale and measure_missing:
        measure(manifest, stale, gates=gates, threads=threads, flags=flags, cache_dir=cache_dir)
    for family in families:
        for graph in FAMILY_GRAPHS[family]:
            record = manifest.precisions.get(graph)
            if _current(manifest, record) and record.passed:
                result[graph] = record.served_precision
            elif record is None or not _current(manifest, record):
                log.warning("%s: bf16 never measured for this export: served in fp32", graph)
    return result


def precision_summary(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Per graph, the bf16 gate in a few fields (what model_info publishes)."""
    summary = {}
    for name in manifest.records:
        record = manifest.precisions.get(name)
        if record is None or not _current(manifest, record):
            summary[name] = {"status": "not_measured"}
            continue
        key = {"sam2": "min_iou", "sam2_video": "min_iou", "grounding_dino": "recall",
               "mask2former": "semantic_pixel_agreement"}.get(record.family)
        entry = {"status": record.status, "measured": f"{record.measured_runtime} {record.measured_precision} vs "
                                                      f"{record.reference}",
                 "served_precision": record.served_precision, "reason": record.reason}
        headline = {k: record.metrics[k] for k in GATES.get(record.family, {}) if k in record.metrics}
        if headline:
            entry["metrics"] = headline
        if key and key in record.metrics:
            entry["headline"] = f"{key} {record.metrics[key]:.4f}"
        summary[name] = entry
    return summary
