"""Interactive SAM 2 image sessions as a Triton sequence.

A session is a Triton sequence (correlation id). The START request carries the RGB image: it is
preprocessed and encoded once and the three embedding levels stay in this instance. Later requests
carry only prompts (already in the 1024 model frame) and run only the decoder; masks come back as
COCO RLE at the original size, so a click costs a few hundred bytes each way. END, or the model's
own idle TTL (`session_ttl_s`), frees the session. Triton drops idle sequences without telling the
model, so the builder sets Triton's `max_sequence_idle_microseconds` a margin above that TTL: a
request for a session this instance no longer holds (ended, expired, or refused on START) reaches
the model and is answered NOT_FOUND, the only NOT_FOUND this model sends. Refusals are typed
(`segserve.common.status`, error boundary in `triton_models.common`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from segserve.common import rle, sam2_transforms
from segserve.common.status import INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ModelRefusal
from segserve.triton_models.common import optional_input, parameters, repository_root, respond_each, scalar
from segserve.triton_models.graph_runner import GraphSettings, describe
from segserve.triton_models.sam2_runner import BlsRunner, InProcessRunner


@dataclass
class ImageSession:
    features: dict[str, Any]  # runner.encode's state: numpy arrays or BLS Tensors
    original_hw: tuple[int, int]
    last_used: float
    nbytes: int


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.name = args["model_name"]
        self.ttl_s = float(params.get("session_ttl_s", "600"))
        self.max_sessions = int(params.get("max_sessions", "64"))
        self.image_size = int(params.get("image_size", "1024"))
        self.low_res = int(params.get("low_res_mask_size", "256"))
        self.mask_threshold = float(params.get("mask_threshold", "0.0"))
        encoder, decoder = params.get("encoder_model", "sam2_image_encoder"), params.get("decoder_model", "sam2_prompt_decoder")
        if params.get("runner", "inprocess") == "bls":
            self.runner = BlsRunner(encoder, decoder)
        else:
            root = repository_root(args)
            self.runner = InProcessRunner(root, encoder, decoder, GraphSettings.from_parameters(params, root))
            for graph, runner in ((encoder, self.runner.encoder), (decoder, self.runner.decoder)):
                pb_utils.Logger.log_info(f"{self.name}: {describe(graph, runner)}")
        self.sessions: dict[int, ImageSession] = {}
        # The family must outlive its metrics, so it is kept on the instance.
        self.metric_family = pb_utils.MetricFamily(name="segserve_triton_image_sessions",
                                                   description="SAM 2 image sessions held in this model instance",
                                                   kind=pb_utils.MetricFamily.GAUGE)
        self.sessions_gauge = self.metric_family.Metric(labels={"model": args["model_name"], "instance": args["model_instance_name"]})

    def execute(self, requests):
        self._evict_expired()
        responses = respond_each(requests, self._handle, self.name, lambda r: f" (sequence {int(scalar(r, 'CORRID'))})")
        for request in requests:
            if scalar(request, "END") and self.sessions.pop(int(scalar(request, "CORRID")), None) is not None:
                pb_utils.Logger.log_verbose(f"{self.name}: closed sequence {int(scalar(request, 'CORRID'))}")
        self.sessions_gauge.set(len(self.sessions))
        return responses

    def _evict_expired(self) -> None:
        now = time.monotonic()
        for corrid in [c for c, s in self.sessions.items() if now - s.last_used > self.ttl_s]:
            del self.sessions[corrid]
            pb_utils.Logger.log_verbose(f"{self.name}: sequence {corrid} expired after {self.ttl_s:g} s idle")

    def _handle(self, request):
        corrid = int(scalar(request, "CORRID"))
        image = optional_input(request, "IMAGE")
        prompt = self._prompt(request)  # checked before any work: a refused START opens nothing
        if scalar(request, "START"):
            self.sessions.pop(corrid, None)  # START begins a new sequence under this id
            if image is None:
                raise ModelRefusal(INVALID_ARGUMENT, "IMAGE is required on the first request of a session")
            session = self._open(corrid, image[0])
        else:
            session = self.sessions.get(corrid)
            if session is None:
                raise ModelRefusal(NOT_FOUND, "this server does not hold the image session (closed, expired, "
                                              "never opened, or the server restarted)")
            if image is not None:
                raise ModelRefusal(INVALID_ARGUMENT, "IMAGE is only accepted on the first request of a session")
        session.last_used = time.monotonic()
        outputs = {"IMAGE_SIZE": np.array([session.original_hw], dtype=np.int32)}
        if prompt is not None:
            outputs.update(self._decode(request, session, *prompt))
        wanted = set(request.requested_output_names()) or set(outputs)
        return pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items() if k in wanted])

    def _open(self, corrid: int, image: np.ndarray) -> ImageSession:
        if len(self.sessions) >= self.max_sessions:
            raise ModelRefusal(RESOURCE_EXHAUSTED, f"this instance already holds {self.max_sessions} image sessions")
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) == 0:
            raise ModelRefusal(INVALID_ARGUMENT, f"IMAGE must be RGB [H, W, 3], got {list(image.shape)}")
        # numpy arrays (in process) or the encoder's BLS output Tensors, left on their device (fleet)
        features = self.runner.encode(sam2_transforms.preprocess(image, self.image_size))
        session = ImageSession(features, (int(image.shape[0]), int(image.shape[1])), time.monotonic(),
                               sum(self.runner.nbytes(v) for v in features.values()))
        self.sessions[corrid] = session
        return session

    def _prompt(self, request) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """The request's prompt (coords [P, M, 2], labels [P, M], mask input or None), checked."""
        coords = optional_input(request, "POINT_COORDS")
        if coords is None:
            return None
        coords = coords[0]
        labels = optional_input(request, "POINT_LABELS")
        if labels is None or coords.ndim != 3 or coords.shape[2] != 2 or labels[0].shape != coords.shape[:2]:
            raise ModelRefusal(INVALID_ARGUMENT, "POINT_COORDS [P, M, 2] and POINT_LABELS [P, M] must match, got "
                                                 f"{list(coords.shape)} and {None if labels is None else list(labels[0].shape)}")
        mask = optional_input(request, "MASK_INPUT")
        if mask is not None and mask.shape[1:] != (1, self.low_res, self.low_res):
            raise ModelRefusal(INVALID_ARGUMENT, f"MASK_INPUT must be [1, {self.low_res}, {self.low_res}]")
        return coords, labels[0], mask

    def _decode(self, request, session: ImageSession, coords: np.ndarray, labels: np.ndarray,
                mask: np.ndarray | None) -> dict[str, np.ndarray]:
        has_mask = mask is not None
        multimask = bool(scalar(request, "MULTIMASK", True))
        feeds = {
            **session.features,
            "point_coords": coords.astype(np.float32),
            "point_labels": labels.astype(np.int32),
            "mask_input": (mask if has_mask else np.zeros((1, 1, self.low_res, self.low_res), np.float32)).astype(np.float32),
            "has_mask_input": np.array([1.0 if has_mask else 0.0], np.float32),
        }
        names = ["multi_masks", "multi_iou"] if multimask else ["single_mask", "single_iou"]
        result = self.runner.decode(feeds, names + ["object_score_logits"])
        logits, scores = result[names[0]], result[names[1]]
        outputs = {
            "SCORES": scores[None].astype(np.float32),
            "OBJECT_SCORE": result["object_score_logits"].reshape(1, -1).astype(np.float32),
            "LOW_RES_LOGITS": logits[None].astype(np.float32),
        }
        wanted = set(request.requested_output_names())
        if not wanted or "MASKS_RLE" in wanted:
            binary = sam2_transforms.masks_from_logits(logits, session.original_hw, self.mask_threshold)
            counts = [[rle.encode(m)["counts"].encode() for m in prompt] for prompt in binary]
            outputs["MASKS_RLE"] = np.array([counts], dtype=object)
        return outputs
