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

Throughput under concurrency (parameters `encode`, `decode_batching`):
- `encode: async` (default): a START is handed to a worker thread that calls the encoder model
  (`sam2_image_encoder`, its own instances and dynamic batching) through BLS, and execute()
  returns at once. Every request is answered through its response sender, so the START is
  answered when its embeddings are in, while the clicks of other sessions keep being decoded by
  the next execute() calls: one user's new image never stalls another's click. A request for a
  session still being opened waits for it (answered by the worker), not in execute().
  `inline`: the START is encoded inside execute() (the one-at-a-time path, for comparison).
- `decode_batching: batched` (default): the prompts of every request of one execute() (and those
  waiting on a START) are decoded in ONE decoder call (`sam2_image_batch`); a request of more
  than `max_batch_prompts` prompts (automatic masks) is a call of its own. If the shared call
  fails, the requests are decoded one by one, so a failure is answered for its own request only.
  `solo`: one decoder call per request.
Each request is checked before it joins a batch: a bad one is refused alone (INVALID_ARGUMENT
naming the field) and the rest of the batch is answered normally.
"""
from __future__ import annotations

import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from segserve.common import rle, sam2_transforms
from segserve.common.status import INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ModelRefusal
from segserve.triton_models import sam2_image_batch as batching
from segserve.triton_models.common import (check_cancelled, guarded, optional_input, parameters, release_metrics,
                                           repository_root, scalar, send_final)
from segserve.triton_models.graph_runner import GraphSettings, describe
from segserve.triton_models.sam2_runner import BlsRunner, InProcessRunner

# Labels a client may send: pad (-1), background (0), foreground (1), box corners (2, 3).
VALID_LABELS = (-1, 0, 1, 2, 3)


@dataclass
class ImageSession:
    features: dict[str, Any]  # runner.encode's state: numpy arrays or BLS Tensors
    original_hw: tuple[int, int]
    last_used: float
    nbytes: int


@dataclass
class Call:
    """One request, read and checked in execute() (nothing of the request is used after it)."""

    corrid: int
    sender: Any
    start: bool
    end: bool
    image: np.ndarray | None
    prompt: batching.Prompt | None
    wanted: set[str]


@dataclass
class Opening:
    """A START being encoded; requests of its sequence that arrive meanwhile wait in `waiting`."""

    call: Call
    waiting: list[Call] = field(default_factory=list)


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.name = args["model_name"]
        self.ttl_s = float(params.get("session_ttl_s", "600"))
        self.max_sessions = int(params.get("max_sessions", "64"))
        self.image_size = int(params.get("image_size", "1024"))
        self.low_res = int(params.get("low_res_mask_size", "256"))
        self.mask_threshold = float(params.get("mask_threshold", "0.0"))
        self.async_encode = params.get("encode", "async") == "async"
        self.batched = params.get("decode_batching", "batched") == "batched"
        self.max_batch_prompts = int(params.get("max_batch_prompts", "32"))
        encoder, decoder = params.get("encoder_model", "sam2_image_encoder"), params.get("decoder_model", "sam2_prompt_decoder")
        if params.get("runner", "inprocess") == "bls":
            self.runner = BlsRunner(encoder, decoder)
        else:
            root = repository_root(args)
            self.runner = InProcessRunner(root, encoder, decoder, GraphSettings.from_parameters(params, root),
                                          encoder_in_process=not self.async_encode)
            for graph, runner in ((encoder, self.runner.encoder), (decoder, self.runner.decoder)):
                if runner is not None:
                    pb_utils.Logger.log_info(f"{self.name}: {describe(graph, runner)}")
        # Several STARTs in flight, so that the encoder's dynamic batcher can merge them.
        self.encoders = ThreadPoolExecutor(max_workers=int(params.get("encode_workers", "4")),
                                           thread_name_prefix="encode")
        self.lock = threading.Lock()  # sessions and openings: execute() and the encoder workers
        self.sessions: dict[int, ImageSession] = {}
        self.openings: dict[int, Opening] = {}
        # The families must outlive their metrics, so they are kept on the instance.
        labels = {"model": args["model_name"], "instance": args["model_instance_name"]}
        self.metric_family = pb_utils.MetricFamily(name="segserve_triton_image_sessions",
                                                   description="SAM 2 image sessions held in this model instance",
                                                   kind=pb_utils.MetricFamily.GAUGE)
        self.sessions_gauge = self.metric_family.Metric(labels=labels)
        self.decoder_family = pb_utils.MetricFamily(
            name="segserve_triton_image_decoder_calls", kind=pb_utils.MetricFamily.COUNTER,
            description="SAM 2 decoder calls of the image session model (one call decodes a batch of requests)")
        self.decoder_calls = self.decoder_family.Metric(labels=labels)
        self.decoded_family = pb_utils.MetricFamily(
            name="segserve_triton_image_decoded_requests", kind=pb_utils.MetricFamily.COUNTER,
            description="image-session requests whose prompts were decoded")
        self.decoded_requests = self.decoded_family.Metric(labels=labels)

    def finalize(self):
        self.encoders.shutdown(wait=True, cancel_futures=True)
        release_metrics(self, "sessions_gauge", "decoder_calls", "decoded_requests",
                        "metric_family", "decoder_family", "decoded_family")

    # ------------------------------------------------------------------------------------ execute

    def execute(self, requests):
        self._evict_expired()
        ready: list[tuple[Call, ImageSession]] = []
        for request in requests:
            sender = request.get_response_sender()
            corrid = int(scalar(request, "CORRID"))
            where = f" (sequence {corrid})"
            try:
                check_cancelled(request)
                call = self._read(request, corrid, sender)
            except Exception as exc:  # refused alone; the rest of the batch goes on
                if scalar(request, "END") or scalar(request, "START"):  # a refused START still ends the old one
                    self._close(corrid)
                    self._update_gauge()
                send_final(sender, guarded(lambda exc=exc: _raise(exc), self.name, where))
                continue
            if call.start:
                self._start(call)
            else:
                session = self._attach(call)
                if session is not None:
                    ready.append((call, session))
        self._answer(ready)
        self._update_gauge()
        return None  # every request is answered through its response sender

    def _read(self, request, corrid: int, sender) -> Call:
        image = optional_input(request, "IMAGE")
        start = bool(scalar(request, "START"))
        prompt = self._prompt(request)  # checked before any work: a refused START opens nothing
        if start and image is None:
            raise ModelRefusal(INVALID_ARGUMENT, "IMAGE is required on the first request of a session")
        if not start and image is not None:
            raise ModelRefusal(INVALID_ARGUMENT, "IMAGE is only accepted on the first request of a session")
        if image is not None:
            image = image[0]
            if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) == 0:
                raise ModelRefusal(INVALID_ARGUMENT, f"IMAGE must be RGB [H, W, 3], got {list(image.shape)}")
            image = np.array(image, copy=True)  # may be encoded after execute() returns
        return Call(corrid, sender, start, bool(scalar(request, "END")), image, prompt,
                    set(request.requested_output_names()))

    def _prompt(self, request) -> batching.Prompt | None:
        """The request's prompt (coords [P, M, 2], labels [P, M], mask input or None), checked."""
        coords = optional_input(request, "POINT_COORDS")
        if coords is None:
            return None
        coords = coords[0]
        labels = optional_input(request, "POINT_LABELS")
        if labels is None or coords.ndim != 3 or coords.shape[2] != 2 or labels[0].shape != coords.shape[:2]:
            raise ModelRefusal(INVALID_ARGUMENT, "POINT_COORDS [P, M, 2] and POINT_LABELS [P, M] must match, got "
                                                 f"{list(coords.shape)} and {None if labels is None else list(labels[0].shape)}")
        labels = labels[0]
        if 0 in coords.shape[:2]:
            raise ModelRefusal(INVALID_ARGUMENT, f"POINT_COORDS must hold at least one prompt of one point, got {list(coords.shape)}")
        if not np.isfinite(coords).all():
            raise ModelRefusal(INVALID_ARGUMENT, "POINT_COORDS must be finite")
        if not np.isin(labels, VALID_LABELS).all():
            raise ModelRefusal(INVALID_ARGUMENT, f"POINT_LABELS must be one of {list(VALID_LABELS)}, got "
                                                 f"{sorted(set(labels.reshape(-1).tolist()) - set(VALID_LABELS))[:5]}")
        mask = optional_input(request, "MASK_INPUT")
        if mask is not None:
            if mask.shape[1:] != (1, self.low_res, self.low_res):
                raise ModelRefusal(INVALID_ARGUMENT, f"MASK_INPUT must be [1, {self.low_res}, {self.low_res}]")
            if not np.isfinite(mask).all():
                raise ModelRefusal(INVALID_ARGUMENT, "MASK_INPUT must be finite")
            mask = np.array(mask, np.float32)
        return batching.Prompt(np.array(coords, np.float32), np.array(labels, np.int32), mask,
                               bool(scalar(request, "MULTIMASK", True)))

    # ------------------------------------------------------------------------------ sessions

    def _evict_expired(self) -> None:
        now = time.monotonic()
        with self.lock:
            for corrid in [c for c, s in self.sessions.items() if now - s.last_used > self.ttl_s]:
                del self.sessions[corrid]
                pb_utils.Logger.log_verbose(f"{self.name}: sequence {corrid} expired after {self.ttl_s:g} s idle")

    def _update_gauge(self) -> None:
        with self.lock:
            self.sessions_gauge.set(len(self.sessions))

    def _close(self, corrid: int) -> None:
        with self.lock:
            if self.sessions.pop(corrid, None) is not None:
                pb_utils.Logger.log_verbose(f"{self.name}: closed sequence {corrid}")

    def _attach(self, call: Call) -> ImageSession | None:
        """The session of a non-START request; None when it waits for its START or was refused."""
        with self.lock:
            session = self.sessions.get(call.corrid)
            opening = self.openings.get(call.corrid)
            if session is None and opening is not None:
                opening.waiting.append(call)  # answered when the START's encoding is in
                return None
        if session is None:
            self._refuse(call, ModelRefusal(NOT_FOUND, "this server does not hold the image session (closed, expired, "
                                                       "never opened, or the server restarted)"))
            return None
        session.last_used = time.monotonic()
        return session

    def _refuse(self, call: Call, refusal: BaseException) -> None:
        if call.end:  # closed before the answer goes out, as in _answer
            self._close(call.corrid)
            self._update_gauge()
        send_final(call.sender, guarded(lambda: _raise(refusal), self.name, f" (sequence {call.corrid})"))

    def _start(self, call: Call) -> None:
        with self.lock:
            self.sessions.pop(call.corrid, None)  # START begins a new sequence under this id
            stale = self.openings.pop(call.corrid, None)
            held = len(self.sessions) + len(self.openings)
            if held < self.max_sessions:
                self.openings[call.corrid] = opening = Opening(call)
        if stale is not None:  # a START again before the first was encoded: the first's waiters
            for waiter in stale.waiting:
                self._refuse(waiter, ModelRefusal(NOT_FOUND, "the image session was restarted"))
        if held >= self.max_sessions:
            self._refuse(call, ModelRefusal(RESOURCE_EXHAUSTED, f"this instance already holds {self.max_sessions} image sessions"))
            return
        if self.async_encode:
            self.encoders.submit(self._open, opening)
        else:
            self._open(opening)

    def _open(self, opening: Opening) -> None:
        """Encode a START's image, keep the session, answer the START and whoever waited for it."""
        call = opening.call
        try:
            # numpy arrays (in process) or the encoder's BLS output Tensors, left on their device (fleet)
            features = self.runner.encode(sam2_transforms.preprocess(call.image, self.image_size))
            session = ImageSession(features, (int(call.image.shape[0]), int(call.image.shape[1])), time.monotonic(),
                                   sum(self.runner.nbytes(v) for v in features.values()))
        except Exception as exc:
            with self.lock:
                if self.openings.get(call.corrid) is opening:
                    del self.openings[call.corrid]
            self._refuse(call, exc)  # a ModelRefusal as it is, anything else INTERNAL (logged)
            for waiter in opening.waiting:
                self._refuse(waiter, ModelRefusal(NOT_FOUND, "the image session could not be opened"))
            return
        with self.lock:
            current = self.openings.get(call.corrid) is opening
            if current:
                del self.openings[call.corrid]
                self.sessions[call.corrid] = session
                waiting, opening.waiting = opening.waiting, []
            else:
                waiting = []  # restarted meanwhile: its waiters were refused by the new START
        self._answer([(c, session) for c in (call, *waiting)])
        self._update_gauge()

    # ------------------------------------------------------------------------------ decoding

    def _answer(self, ready: list[tuple[Call, ImageSession]]) -> None:
        """Answer requests whose session is open: prompts decoded in one call (batched) or one call
        each (solo); requests without a prompt get the image size."""
        prompted = [(c, s) for c, s in ready if c.prompt is not None]
        # An END's session leaves the table (and the gauge) before any answer goes out, so a client
        # that has its END answered never sees the session still held. Its last prompt still decodes:
        # `ready` keeps the session.
        ending = [c for c, _ in ready if c.end]
        for call in ending:
            self._close(call.corrid)
        if ending:
            self._update_gauge()
        for call, session in ready:
            if call.prompt is None:
                self._send(call, lambda c=call, s=session: self._response(image_size(s), c))
        if self.batched:
            shared = [(c, s) for c, s in prompted if c.prompt.rows <= self.max_batch_prompts]
            groups = [shared] if shared else []
            groups += [[(c, s)] for c, s in prompted if c.prompt.rows > self.max_batch_prompts]
        else:
            groups = [[item] for item in prompted]
        for group in groups:
            self._decode_group(group)

    def _decode_group(self, group: list[tuple[Call, ImageSession]]) -> None:
        if len(group) == 1:
            call, session = group[0]
            self._send(call, lambda: self._response(self._outputs(self._decode([call.prompt], [session])[0], call,
                                                                  session), call))
            return
        try:
            decoded = self._decode([c.prompt for c, _ in group], [s for _, s in group])
        except Exception:  # each request is then decoded alone and answered with its own result or error
            pb_utils.Logger.log_warn(f"{self.name}: the batched decode of {len(group)} requests failed; "
                                     f"decoding them one by one\n{traceback.format_exc()}")
            for item in group:
                self._decode_group([item])
            return
        for (call, session), outputs in zip(group, decoded):
            self._send(call, lambda o=outputs, c=call, s=session: self._response(self._outputs(o, c, s), c))

    def _decode(self, prompts: list[batching.Prompt], sessions: list[ImageSession]) -> list[dict[str, np.ndarray]]:
        """One decoder call for every prompt; per request its decoder outputs."""
        feeds, names = batching.feeds(prompts, [s.features for s in sessions], self.low_res, self.runner.gather)
        result = self.runner.decode(feeds, names)
        self.decoder_calls.increment(1)
        self.decoded_requests.increment(len(prompts))
        return [{"logits": logits, "scores": scores, "object": objects}
                for logits, scores, objects in batching.split(prompts, result)]

    @staticmethod
    def _response(outputs: dict[str, np.ndarray], call: Call):
        return pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()
                                           if not call.wanted or k in call.wanted])

    def _outputs(self, decoded: dict[str, np.ndarray], call: Call, session: ImageSession) -> dict[str, np.ndarray]:
        logits = decoded["logits"]
        outputs = {**image_size(session),
                   "SCORES": decoded["scores"][None].astype(np.float32),
                   "OBJECT_SCORE": decoded["object"].reshape(1, -1).astype(np.float32),
                   "LOW_RES_LOGITS": logits[None].astype(np.float32)}
        if not call.wanted or "MASKS_RLE" in call.wanted:
            binary = sam2_transforms.masks_from_logits(logits, session.original_hw, self.mask_threshold)
            counts = [[rle.encode(m)["counts"].encode() for m in prompt] for prompt in binary]
            outputs["MASKS_RLE"] = np.array([counts], dtype=object)
        return outputs

    def _send(self, call: Call, respond) -> None:
        send_final(call.sender, guarded(respond, self.name, f" (sequence {call.corrid})"))


def image_size(session: ImageSession) -> dict[str, np.ndarray]:
    return {"IMAGE_SIZE": np.array([session.original_hw], dtype=np.int32)}


def _raise(exc: BaseException):
    raise exc

