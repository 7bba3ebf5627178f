"""The `segserve.v1.AutoMask` servicer: automatic mask generation through Triton image sessions.

The whole image is an image session of the shared `ImageSessions` (an `image_id`, or image bytes
through the embedding cache); each crop of `crop_n_layers` > 0 is a short-lived session of its own
opened on the crop's pixels and ended when the request finishes. Grid points go to the session
model `points_per_batch` prompts per request (one decoder call per batch); only SCORES and
LOW_RES_LOGITS are asked for, and the filters, NMS and RLE run here (`segserve.common.automask`).
The next batch is already decoding in Triton while this one is filtered.
"""
from __future__ import annotations

import contextlib
import logging
import math
import secrets
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from segserve.api import load
from segserve.common import automask as amg
from segserve.common.sam2_transforms import to_model_coords

from .errors import ServiceError, exhausted, invalid
from .rpc import CallScope, server_stream
from .service import stage
from .sessions import ImageSession
from .triton_pool import IMAGE, SESSION_MODEL, Replica, tensor

apb, apb_grpc = load("automask")
log = logging.getLogger("segserve.orchestrator")

# (field, default, kind, low, high, low_inclusive, high_inclusive)
_LIMITS = [
    ("points_per_side", 32, int, 1, 256, True, True),
    # Each prompt's logits are 3 x 256 x 256 float32 (768 KiB): 256 prompts are ~200 MB a call.
    ("points_per_batch", 64, int, 1, 256, True, True),
    ("pred_iou_thresh", 0.8, float, 0.0, 1.0, True, True),
    ("stability_score_thresh", 0.95, float, 0.0, 1.0, True, True),
    ("stability_score_offset", 1.0, float, 0.0, 100.0, False, True),
    ("box_nms_thresh", 0.7, float, 0.0, 1.0, True, True),
    ("crop_n_layers", 0, int, 0, 4, True, True),
    ("crop_nms_thresh", 0.7, float, 0.0, 1.0, True, True),
    ("crop_overlap_ratio", 512 / 1500, float, 0.0, 1.0, True, False),
    ("crop_n_points_downscale_factor", 1, int, 1, 16, True, True),
    ("min_mask_region_area", 0, int, 0, 1 << 30, True, True),
    ("mask_threshold", 0.0, float, -100.0, 100.0, True, True),
]
MASKS_PER_MESSAGE = 64


def parameters(message, max_points: int) -> amg.AutoMaskParams:
    """Validated parameters (INVALID_ARGUMENT names the field; RESOURCE_EXHAUSTED over max_points)."""
    values = {}
    for name, default, kind, low, high, low_in, high_in in _LIMITS:
        value = getattr(message, name) if message.HasField(name) else default
        if kind is float and not math.isfinite(value):
            raise invalid(f"parameters.{name}", "must be a finite number")
        ok = (value >= low if low_in else value > low) and (value <= high if high_in else value < high)
        if not ok:
            interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
            raise invalid(f"parameters.{name}", f"{value:g} is outside {interval}")
        values[name] = kind(value)
    params = amg.AutoMaskParams(**values)
    sides = amg.points_per_layer(params)
    if min(sides) < 1:
        raise invalid("parameters.crop_n_points_downscale_factor",
                      f"leaves fewer than one point per side in crop layer {sides.index(min(sides))}")
    total = amg.total_points(params)
    if total > max_points:
        raise exhausted("parameters", f"{total} points to decode, the limit per request is {max_points} "
                                      "(lower points_per_side or crop_n_layers)")
    return params


def decode_points(session: ImageSession, coords: np.ndarray, scope: CallScope,
                  replica: Replica | None = None, sequence_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One decoder call for P single-point prompts (model frame [P, 2]) -> logits [P, 3, h, w], iou [P, 3].
    On `session`, or on a crop's temporary sequence (`replica`, `sequence_id`)."""
    prompts = np.concatenate([coords[:, None, :], np.zeros((len(coords), 1, 2), np.float32)], axis=1)
    labels = np.tile(np.array([[1, -1]], np.int32), (len(coords), 1))
    inputs = [tensor("POINT_COORDS", prompts[None].astype(np.float32), "FP32"),
              tensor("POINT_LABELS", labels[None], "INT32"),
              tensor("MULTIMASK", np.array([[True]]), "BOOL")]
    outputs = ["SCORES", "LOW_RES_LOGITS"]
    if replica is None:
        result = session.infer(inputs, outputs, scope)
    else:
        result = replica.infer(SESSION_MODEL, inputs, outputs, "image", scope, sequence_id)
    return result.as_numpy("LOW_RES_LOGITS")[0], result.as_numpy("SCORES")[0]


def _mask_message(record: dict) -> "apb.GeneratedMask":
    message = apb.GeneratedMask(area=int(record["area"]), bbox=record["bbox"],
                                predicted_iou=record["predicted_iou"], stability_score=record["stability_score"],
                                point_coords=record["point_coords"][0], crop_box=record["crop_box"])
    message.segmentation.size.extend(record["segmentation"]["size"])
    message.segmentation.counts = record["segmentation"]["counts"]
    return message


class AutoMaskService(apb_grpc.AutoMaskServicer):
    def __init__(self, service, max_points: int = 16384):
        self.service = service  # the SegmentationService: its ImageSessions, pool and image decoding
        self.max_points = max_points
        self.decoder_calls = 0

    @server_stream
    def GenerateMasks(self, request, context):
        """Server stream; errors (also those raised mid-stream) end it with their status code, and
        the work stops within one decoder batch when the client cancels or its deadline passes."""
        yield from self._generate(request, CallScope(context))

    def _generate(self, request, scope: CallScope):
        service = self.service
        service.model_info()
        source = request.WhichOneof("source")
        if source is None:
            raise invalid("image_id", "set image_id (from OpenImage) or image (bytes)")
        if request.max_masks < 0:
            raise invalid("max_masks", "must be >= 0")
        params = parameters(request.parameters, self.max_points)
        holder = {}

        def decode():
            holder["image"] = service._decode(request.image)
            return holder["image"]

        if source == "image_id":
            if params.crop_n_layers > 0:
                raise invalid("parameters.crop_n_layers", "crops need the image's pixels: send image bytes")
            leased = service.images.lease(request.image_id)
        else:
            leased = service.images.cached(request.image, decode, scope)
        with leased as held:
            session = held if source == "image_id" else held[0]
            image = None
            if params.crop_n_layers > 0:
                image = holder.get("image")
                if image is None:
                    image = service._decode(request.image)
            yield from self._run(request, params, session, image, scope)

    def _run(self, request, params: amg.AutoMaskParams, session: ImageSession, image: np.ndarray | None,
             scope: CallScope):
        service = self.service
        height, width = session.height, session.width
        crops = amg.plan(height, width, params)
        points_total = sum(len(c.points) for c in crops)
        progress = apb.AutoMaskProgress(points_total=points_total, crops_total=len(crops))
        per_crop: list[amg.Candidates] = []
        calls = 0
        with ThreadPoolExecutor(max_workers=1) as prefetch:
            for crop in crops:
                scope.check()
                with self._crop_sequence(session, crop, image, scope) as (replica, sequence_id):
                    found = amg.Candidates()
                    model_xy = to_model_coords(crop.points, crop.size)
                    starts = list(range(0, len(crop.points), params.points_per_batch))

                    def submit(first: int, points=model_xy, replica=replica, sequence_id=sequence_id):
                        return prefetch.submit(decode_points, session, points[first:first + params.points_per_batch],
                                               scope, replica, sequence_id)

                    pending = submit(starts[0]) if starts else None
                    try:
                        for n, start in enumerate(starts):
                            logits, iou = pending.result()
                            calls += 1
                            scope.check()  # the client is gone: stop within this batch
                            pending = submit(starts[n + 1]) if n + 1 < len(starts) else None
                            with stage("automask_filter"):
                                kept = amg.filter_batch(logits, iou, crop.points[start:start + params.points_per_batch],
                                                        crop, (height, width), params)
                            found.extend(kept)
                            progress.points_done += len(iou)
                            progress.candidates += len(kept)
                            if request.stream:
                                yield apb.GenerateMasksResponse(width=width, height=height, progress=_copy(progress))
                    finally:
                        if pending is not None and not pending.cancel():
                            _settle(pending)  # an abandoned prefetch finishes (or fails) before the END
                per_crop.append(amg.crop_nms(found, params))
                progress.crops_done += 1
        self.decoder_calls += calls
        scope.check()
        with stage("automask_nms"):
            merged = amg.merge_crops(per_crop, params)
            if params.min_mask_region_area > 0:
                merged = amg.postprocess_small_regions(merged, params.min_mask_region_area, params.box_nms_thresh)
            records = amg.records(merged, request.max_masks)
        masks = [_mask_message(r) for r in records]
        chunk = MASKS_PER_MESSAGE if request.stream else max(1, len(masks))
        chunks = [masks[i:i + chunk] for i in range(0, len(masks), chunk)] or [[]]
        image_id = "" if session.implicit else session.image_id
        for i, part in enumerate(chunks):
            last = i == len(chunks) - 1
            message = apb.GenerateMasksResponse(width=width, height=height, masks=part, done=last, image_id=image_id,
                                                progress=_copy(progress))
            if last:
                message.decoder_calls = calls
                message.truncated = len(records) < len(merged)
                message.model.CopyFrom(service._sam2_info())
            yield message

    @contextlib.contextmanager
    def _crop_sequence(self, session: ImageSession, crop, image: np.ndarray | None, scope: CallScope):
        """(replica, sequence_id) to decode a crop on: the session itself for the whole image, else a
        temporary sequence encoded from the crop's pixels and ended afterwards."""
        height, width = session.height, session.width
        if crop.box == (0, 0, width, height):
            yield None, 0
            return
        pool = self.service.pool
        left, top, right, bottom = crop.box
        replica = pool.place(IMAGE)  # a session of the image model for as long as the crop is decoded
        sequence_id = secrets.randbelow(2**63 - 1) + 1
        try:
            try:
                with stage("encode"):
                    replica.open_session(sequence_id, np.ascontiguousarray(image[top:bottom, left:right]), scope)
                yield replica, sequence_id
            finally:
                try:
                    replica.close_session(sequence_id)
                except ServiceError as exc:  # freed at the model's TTL anyway
                    log.warning("ending a crop sequence failed (%s): %s", exc.code.name, exc.message)
        finally:
            pool.release(replica, IMAGE)


def _settle(future) -> None:
    try:
        future.result()
    except ServiceError as exc:  # the request already failed or was cancelled; this batch no longer matters
        log.debug("abandoned decoder batch ended with %s", exc.code.name)


def _copy(progress) -> "apb.AutoMaskProgress":
    out = apb.AutoMaskProgress()
    out.CopyFrom(progress)
    return out


def add_to_server(service, server) -> AutoMaskService:
    automask = AutoMaskService(service, service.settings.max_automask_points)
    apb_grpc.add_AutoMaskServicer_to_server(automask, server)
    return automask
