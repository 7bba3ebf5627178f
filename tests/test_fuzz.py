"""A property-based fuzz of every RPC (issue 11): random and adversarial fields through the raw gRPC
stubs, against the real embedded stack serving every family (SAM 2, SAM 2 video, Grounding DINO,
Mask2Former; tiny random weights).

Properties, per call (each call has a client deadline, so a hang fails instead of blocking CI):
- the answer is OK or a documented status: INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED,
  FAILED_PRECONDITION, UNIMPLEMENTED, OUT_OF_RANGE (DEADLINE_EXCEEDED only where the test chose a
  short deadline on purpose); never INTERNAL, UNKNOWN, or a transport failure;
- error details are under 2 kB (an id is quoted truncated: a 100 kB id echoed into `grpc-message`
  breaks the client's metadata limit and the client sees "Stream removed" instead of the status);
- a request that breaks a documented rule (tagged by the strategies: tests/fuzz_strategies.py) does
  not succeed; a made-up, altered, stale or other-kind id never succeeds; a request built only from
  valid values succeeds; a genuine live session is never reported NOT_FOUND.
After the run (`test_after_the_fuzz...`): gRPC health says SERVING, a valid OpenImage + MaskFromPrompt
works, no session the test did not open is held (white box: the orchestrator's registries and its
replica load counters; black box: the full session quota can still be opened), and resident memory
grew less than the bounds below.

Requests, per RPC: valid ones (a real photo, points inside it, a live id ...); valid ones with exactly
one fault, each fault in turn (`one_fault_at_a_time`: an out-of-range value, a forged id, a broken
image ...), so that every documented rule is exercised on its own; fully random ones (several faults,
adversarial values everywhere); and two fixed catalogues, every adversarial id on every id field and
every image (valid in many encodings and shapes, truncated, bombs, garbage) on every image field.
The raw stubs send anything, bytes that are no valid message included (`test_fuzz_the_wire`).

Each test collects every distinct violation (keyed by RPC, kind, status and the details with numbers
and quoted ids stripped), keeps the smallest request that showed it, and fails at its end listing
them all: one run reports every distinct bug with a reproducer, instead of one shrunk example.
Hypothesis runs derandomized with no example database: the same examples on every run of the same
code (the genuine ids differ, as the server signs them with a per-process key).

SEGSERVE_FUZZ_ARTIFACTS=<dir> reuses an artifacts folder holding all four families (skips the ~45 s
of exports); SEGSERVE_FUZZ_REPORT=<file.json> writes every finding there.
"""
from __future__ import annotations

import gc
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pytest  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from segserve.api import load, pb, pb_grpc  # noqa: E402
from tests import fuzz_strategies as fz  # noqa: E402
from tests.fuzz_strategies import IdSpec, Tagged, bad_of, mostly  # noqa: E402

apb, apb_grpc = load("automask")
vpb, vpb_grpc = load("video")

pytestmark = pytest.mark.usefixtures("one_thread")

Code = grpc.StatusCode
ALLOWED = {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED, Code.FAILED_PRECONDITION,
           Code.UNIMPLEMENTED, Code.OUT_OF_RANGE}
DEADLINE_S = 20.0          # every call; reaching it is a hang, reported as such (then that RPC is skipped)
SHORT_DEADLINE_S = 0.25    # chosen on purpose for some streams: DEADLINE_EXCEEDED is then allowed
MAX_DETAILS = 2048
# What a client sees when the transport, not the server, ended the call.
CLIENT_SIDE = re.compile(r"Stream removed|metadata size exceeds|Received message larger than max|"
                         r"Exception serializing|Socket closed|failed to connect", re.I)

# The stack's limits (small, so the fuzz reaches every cap cheaply).
MAX_IMAGE_SESSIONS = 8
CACHE_SIZE = 2
MAX_PIXELS = 4_000_000
MAX_AUTOMASK_POINTS = 1024
# The image session model's own cap (`build_repository(max_sessions=...)`): the orchestrator's explicit
# sessions, its cache's implicit ones, and GenerateMasks' per-crop sessions (one at a time per request).
TRITON_IMAGE_SLOTS = MAX_IMAGE_SESSIONS + CACHE_SIZE + 2
MAX_VIDEO_SESSIONS = 4
MAX_VIDEO_OBJECTS = 8
MAX_VIDEO_FRAMES = 48
# Memory may grow this much over the whole fuzz (~1,250 requests), measured from a baseline taken
# after a warm-up that ran every RPC at the largest shapes the fuzz sends. What still grows after
# that is allocation that plateaus: ONNX Runtime keeps an arena per graph that grows with each new
# input shape (text_to_mask on images of new sizes and box counts: ~0.4 GB in Triton on the first
# pass; measured, a second and a third pass of the same examples add ~1 MB each), glibc keeps freed
# pages. A leak of 1 MB per request (one frame, one mask, one session's state) would add over 1 GB.
# Triton: proportional set size (PSS) over its process tree, so that the Python backend's shared
# memory counts once and not once per stub; the orchestrator: this process's RSS (it runs in-process,
# next to pytest and Hypothesis, which add a few MB).
ORCHESTRATOR_GROWTH_MB = 300
TRITON_GROWTH_MB = 1000

PHOTO_HW = (80, 96)  # the real photo, downscaled: prompts on it are cheap
FRAME_HW = (32, 40)  # video frames
VIDEO_FRAMES = 6


# ============================================================================ the stack


@pytest.fixture(scope="module")
def fuzz_artifacts(request, tmp_path_factory) -> Path:
    """SAM 2, SAM 2 video, Grounding DINO and Mask2Former, tiny and random, in one folder: the
    session's `all_family_artifacts` (exported once, shared with the fleet suites)."""
    given_dir = os.environ.get("SEGSERVE_FUZZ_ARTIFACTS")
    if given_dir:
        return Path(given_dir)
    return request.getfixturevalue("all_family_artifacts")  # the session's export of every family


@pytest.fixture(scope="module")
def fuzz_stack(fuzz_artifacts, tmp_path_factory):
    from segserve.orchestrator.settings import Settings
    from segserve.repository.builder import build_repository
    from segserve.runtime.stack import start_stack

    repository = tmp_path_factory.mktemp("fuzz_repository")
    build_repository(fuzz_artifacts, repository, "embedded", session_ttl_s=600, max_sessions=TRITON_IMAGE_SLOTS,
                     options={"max_video_sessions": MAX_VIDEO_SESSIONS, "max_video_objects": MAX_VIDEO_OBJECTS,
                              "max_video_frames": MAX_VIDEO_FRAMES, "video_intra_op_threads": 1})
    settings = Settings(max_image_sessions=MAX_IMAGE_SESSIONS, embedding_cache_size=CACHE_SIZE,
                        max_image_pixels=MAX_PIXELS, max_automask_points=MAX_AUTOMASK_POINTS)
    with start_stack(repository, tmp_path_factory.mktemp("fuzz_triton"), settings) as running:
        yield running


@pytest.fixture(scope="module")
def fuzz(fuzz_stack, fuzz_artifacts, photo):
    """The fuzzer: channel, stubs, the World (live ids), the findings, and the memory baseline."""
    from PIL import Image

    from segserve.common.synthetic_video import moving_shapes
    from segserve.export.manifest import Manifest

    small = np.asarray(Image.fromarray(photo).resize(PHOTO_HW[::-1], Image.BILINEAR))
    channel = grpc.insecure_channel(fuzz_stack.address, options=[("grpc.max_receive_message_length", 64 << 20),
                                                                 ("grpc.max_send_message_length", 64 << 20)])
    records = Manifest(fuzz_artifacts).records
    num_labels = int(records["mask2former"].model_config["num_labels"]) if "mask2former" in records else 1
    clip, _ = moving_shapes(VIDEO_FRAMES, *FRAME_HW)
    fuzzer = Fuzzer(channel, fuzz_stack, small, clip, num_labels)
    fuzzer.warm_up()
    fuzzer.baseline = fuzzer.memory()
    yield fuzzer
    fuzzer.world.close_all()
    report = os.environ.get("SEGSERVE_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps([f.__dict__ for f in fuzzer.findings.values()], indent=1))
    channel.close()


@pytest.fixture()
def fuzzer(fuzz):
    """The module's fuzzer, its record of violations restarted for this test (which ends with
    `fuzzer.assert_no_findings()`)."""
    fuzz.begin()
    return fuzz


# ============================================================================ cases and oracle


@dataclass
class Target:
    spec: IdSpec
    value: str
    genuine: bool  # a live session of the kind the field expects


@dataclass
class Case:
    rpc: str                        # "Service/Method"
    request: Any                    # a message; a list of messages (client stream); bytes (raw wire)
    bad: str | None = None          # the documented rule it breaks: it must not succeed
    targets: tuple = ()             # ids it carries
    valid: bool = False             # built only from valid values: it must succeed
    deadline: float = DEADLINE_S
    note: str = ""
    size: tuple = (0, 0)            # (width, height) of the image it refers to, when known


@dataclass
class Finding:
    signature: str
    rpc: str
    code: str
    details: str
    reproducer: str
    count: int = 1


def _short(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit // 2]!r}…({len(text)} chars)"


def describe(message, names: dict) -> str:
    """A request as one bounded line: long bytes and strings summarised, repeated fields by count."""
    if isinstance(message, bytes):
        return f"raw {len(message)} bytes {message[:48]!r}{'…' if len(message) > 48 else ''}"
    if isinstance(message, list):
        return "stream[" + ", ".join(describe(m, names) for m in message[:3]) + (
            f", … {len(message)} messages" if len(message) > 3 else "") + "]"

    def value(v):
        if hasattr(v, "ListFields"):
            return describe(v, names)
        if isinstance(v, bytes):
            return names.get(v) or (repr(v) if len(v) <= 24 else f"<{len(v)} bytes {v[:8]!r}…>")
        if isinstance(v, str):
            return _short(v)
        return repr(v)

    parts = []
    for f, v in message.ListFields():
        if f.is_repeated:
            items = list(v)
            same = len(items) > 2 and all(i == items[0] for i in items)
            shown = ", ".join(value(i) for i in items[:1 if same else 2])
            parts.append(f"{f.name}=[{shown}{f' ×{len(items)}' if same else (f', … {len(items)} in all' if len(items) > 2 else '')}]")
        else:
            parts.append(f"{f.name}={value(v)}")
    return f"{type(message).__name__}({', '.join(parts)})"


def _normalise(details: str) -> str:
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "<q>", details)
    text = re.sub(r"0x[0-9a-f]+|[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "#", text, flags=re.I)
    return text[:90]


class World:
    """Live ids the strategies refer to (genuine ids differ per run), recreated when a case ended
    them, and the bookkeeping of every session the test opened."""

    def __init__(self, fuzzer: "Fuzzer"):
        self.f = fuzzer
        self.image: str | None = None
        self.video: str | None = None
        self.video_frames = 0
        self.video_objects: set[int] = set()
        self.fresh: str | None = None  # a video session with frames and no prompt yet
        self.live_images: set[str] = set()
        self.live_videos: set[str] = set()
        self.opened_images = 0
        self.opened_videos = 0
        self.closed_image = self._open_image()
        self._close_image(self.closed_image)
        self.ended_video = self._start_video()
        self._end_video(self.ended_video)

    # ---- genuine sessions -------------------------------------------------------------
    def _open_image(self) -> str:
        try:
            image_id = self.f.seg.OpenImage(pb.OpenImageRequest(image=self.f.photo_png), timeout=DEADLINE_S).image_id
        except grpc.RpcError as exc:
            pytest.fail(f"cannot open the test's own image session: {exc.code().name} {exc.details()}")
        self.live_images.add(image_id)
        self.opened_images += 1
        return image_id

    def _close_image(self, image_id: str) -> None:
        self.live_images.discard(image_id)
        self.f.seg.CloseImage(pb.CloseImageRequest(image_id=image_id), timeout=DEADLINE_S)

    def _start_video(self) -> str:
        frames = [vpb.Frame(raw=vpb.RawFrame(width=FRAME_HW[1], height=FRAME_HW[0], rgb=f.tobytes())) for f in self.f.clip]
        rpc = "VideoTracking/StartVideoSession"
        if rpc in self.f.hung:
            pytest.fail(f"no video session can be started: {rpc} hung earlier on {self.f.hung[rpc]}")
        try:
            info = self.f.video.StartVideoSession(iter([vpb.VideoFrames(frames=frames)]), timeout=DEADLINE_S)
        except grpc.RpcError as exc:
            if exc.code() == Code.DEADLINE_EXCEEDED:
                self.f.hung.setdefault(rpc, "a valid 6-frame clip (the test's own session)")
            pytest.fail(f"cannot start the test's own video session: {exc.code().name} {exc.details()}")
        self.live_videos.add(info.session_id)
        self.opened_videos += 1
        return info.session_id

    def _end_video(self, session_id: str) -> None:
        self.live_videos.discard(session_id)
        self.f.video.EndSession(vpb.EndSessionRequest(session_id=session_id), timeout=DEADLINE_S)

    def image_id(self) -> str:
        if self.image is None:
            self.image = self._open_image()
        return self.image

    def video_id(self) -> str:
        if self.video is not None and (self.video_frames > 30 or not 0 < len(self.video_objects) <= 4):
            self._drop_video(self.video, end=True)
        if self.video is None:
            self.video, self.video_frames, self.video_objects = self._start_video(), VIDEO_FRAMES, {1}
            # one prompted object, so that a valid Propagate has something to track
            self.f.video.AddPrompts(vpb.AddPromptsRequest(session_id=self.video, frame_index=0, objects=[
                vpb.ObjectPrompt(object_id=1, points=[pb.Point(x=12, y=11, label=1)])]), timeout=DEADLINE_S)
        return self.video

    def fresh_id(self) -> str:
        if self.fresh is None:
            self.fresh = self._start_video()
        return self.fresh

    def frames_of(self, session_id: str) -> int:
        return self.video_frames if session_id == self.video else VIDEO_FRAMES

    def _drop_video(self, session_id: str, end: bool) -> None:
        if end:
            try:
                self._end_video(session_id)
            except grpc.RpcError:
                pass
        self.live_videos.discard(session_id)
        if session_id == self.video:
            self.video = None
        if session_id == self.fresh:
            self.fresh = None

    def _drop_image(self, image_id: str) -> None:
        self.live_images.discard(image_id)
        if image_id == self.image:
            self.image = None

    # ---- ids for the strategies -----------------------------------------------------------
    def resolve(self, spec: IdSpec) -> str:
        kind = spec.kind
        if kind == "valid_image":
            return self.image_id()
        if kind == "valid_video":
            return self.video_id()
        if kind == "fresh_video":
            return self.fresh_id()
        if kind == "closed_image":
            return self.closed_image
        if kind == "ended_video":
            return self.ended_video
        if kind == "empty":
            return ""
        if kind == "random":
            return spec.text
        if kind == "long":
            return ("A" * spec.n)
        if kind == "old_format":
            return fz.old_format_id(spec.fields, self.f.triton_url)
        genuine = self.image_id() if kind.endswith("_image") else self.video_id()
        if kind.startswith("tampered_"):
            return fz.tamper(genuine, *spec.fields)
        if kind.startswith("flipped_"):
            return fz.flip(genuine, spec.n, spec.char)
        if kind.startswith("padded_"):
            return genuine + spec.text
        if kind.startswith("noncanonical_"):
            return fz.noncanonical(genuine)
        raise AssertionError(kind)

    def target(self, spec: IdSpec, expects: str) -> Target:
        genuine = spec.kind == f"valid_{expects}" or (expects == "video" and spec.kind == "fresh_video")
        return Target(spec, self.resolve(spec), genuine)

    # ---- after each call --------------------------------------------------------------------
    def after(self, case: Case, code: Code, response) -> None:
        method = case.rpc.split("/")[1]
        ids = [t.value for t in case.targets]
        if code == Code.NOT_FOUND:
            for t in case.targets:  # forget a session the server says is gone (it is reported too)
                if t.genuine and method != "RemoveObject":
                    self._drop_image(t.value) if t.spec.kind == "valid_image" else self._drop_video(t.value, end=False)
        if method == "AddFrames" and code != Code.OK and self.video in ids:
            self._refresh_frames()  # a stream that failed late has added its first messages' frames
        if code != Code.OK:
            return
        if method in ("CloseImage", "EndSession") and any(not t.genuine for t in case.targets):
            # a made-up id closed something (reported): maybe the genuine session it was derived from
            if self.image is not None and any(t.spec.kind.endswith("_image") for t in case.targets):
                try:
                    self._close_image(self.image)
                except grpc.RpcError:
                    pass
                self._drop_image(self.image)
            if self.video is not None and any(t.spec.kind.endswith("_video") for t in case.targets):
                self._drop_video(self.video, end=True)
        if method == "CloseImage":
            for i in ids:
                self._drop_image(i)
        elif method == "EndSession":
            for i in ids:
                self._drop_video(i, end=False)
        elif method == "OpenImage":
            self.opened_images += 1
            self.live_images.add(response.image_id)
            self._release(case, self._close_image, response.image_id)
        elif method == "StartVideoSession":
            self.opened_videos += 1
            self.live_videos.add(response.session_id)
            self._release(case, self._end_video, response.session_id)
        elif method == "AddPrompts":
            for i in ids:
                if i == self.video:
                    self.video_objects |= {o.object_id for o in response.objects}
                elif i == self.fresh:
                    self._drop_video(i, end=True)  # not fresh any more
        elif method == "AddFrames" and ids and ids[0] == self.video:
            self.video_frames = response.num_frames
        elif method == "RemoveObject" and ids and ids[0] == self.video:
            self.video_objects = set(response.object_ids)

    def _release(self, case: Case, release, session_id: str) -> None:
        """Close a session a case just opened; that must work (the id was just issued)."""
        try:
            release(session_id)
        except grpc.RpcError as exc:
            closing = Case(case.rpc.split("/")[0] + ("/CloseImage" if "Image" in case.rpc else "/EndSession"),
                           session_id, note=f"the id {case.rpc} just returned")
            self.f.judge(closing, exc.code(), exc.details() or "", None)
            self.f.judge(Case(closing.rpc, session_id, valid=True, note=closing.note), exc.code(),
                         exc.details() or "", None)

    def _refresh_frames(self) -> None:
        listed = self.f.video.ListSessions(vpb.ListSessionsRequest(), timeout=DEADLINE_S).sessions
        count = next((s.num_frames for s in listed if s.session_id == self.video), None)
        if count is None:
            self._drop_video(self.video, end=True)
        else:
            self.video_frames = count

    def close_all(self) -> None:
        for image_id in list(self.live_images):
            try:
                self._close_image(image_id)
            except grpc.RpcError:
                pass
        for session_id in list(self.live_videos):
            self._drop_video(session_id, end=True)
        self.image = self.video = self.fresh = None


class Fuzzer:
    def __init__(self, channel, stack, photo: np.ndarray, clip: np.ndarray, num_labels: int):
        self.channel, self.stack, self.photo, self.clip, self.num_labels = channel, stack, photo, clip, num_labels
        self.seg = pb_grpc.SegmentationStub(channel)
        self.auto = apb_grpc.AutoMaskStub(channel)
        self.video = vpb_grpc.VideoTrackingStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.triton_url = stack.triton.grpc_url
        self.catalogue = fz.image_catalogue(photo, MAX_PIXELS)
        self.photo_png = self.catalogue[0].data
        self.names = {s.data: f"<{s.name}>" for s in self.catalogue if s.data}
        self.findings: dict[str, Finding] = {}
        self.calls = 0
        self.stats: dict[tuple[str, str], int] = {}
        self.hung: dict[str, str] = {}  # rpc -> the reproducer of its first hang
        self.seen: set[str] = set()     # signatures seen since the current test started
        self.world = World(self)
        self.baseline: dict[str, float] = {}
        self._methods = {}
        for service, stub in (("segserve.v1.Segmentation", self.seg), ("segserve.v1.AutoMask", self.auto),
                              ("segserve.v1.VideoTracking", self.video)):
            for name in dir(stub):
                if not name.startswith("_"):
                    self._methods[f"{service.split('.')[-1]}/{name}"] = getattr(stub, name)
        ident = lambda b: b  # noqa: E731
        self._raw = {
            "unary": lambda path: channel.unary_unary(path, request_serializer=ident, response_deserializer=ident),
            "unary_stream": lambda path: channel.unary_stream(path, request_serializer=ident, response_deserializer=ident),
            "stream_unary": lambda path: channel.stream_unary(path, request_serializer=ident, response_deserializer=ident),
        }

    # ---- one call -----------------------------------------------------------------------------
    def call(self, case: Case) -> tuple[Code, str, Any]:
        service, method = case.rpc.split("/")
        if case.rpc in self.hung:  # one hang is reported; waiting out the deadline again teaches nothing
            key = (case.rpc, "SKIPPED_AFTER_A_HANG")
            self.stats[key] = self.stats.get(key, 0) + 1
            return Code.DEADLINE_EXCEEDED, "skipped: this RPC hung before", None
        self.calls += 1
        response = None
        try:
            if isinstance(case.request, bytes) or (isinstance(case.request, list) and case.request
                                                     and isinstance(case.request[0], bytes)):
                kind = RAW_KINDS[method]
                stub = self._raw[kind](f"/segserve.v1.{service}/{method}")
                response = self._invoke(kind, stub, case)
            else:
                response = self._invoke(KINDS.get(method, "unary"), self._methods[case.rpc], case)
            code, details = Code.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        key = (case.rpc, code.name)
        self.stats[key] = self.stats.get(key, 0) + 1
        self.judge(case, code, details, response)
        if method == "ListSessions" and code == Code.OK:
            unknown = {s.session_id for s in response.sessions} - self.world.live_videos
            if unknown:
                self.judge(Case(case.rpc, case.request, "lists sessions the test does not hold", valid=False,
                                note=f"listed {sorted(unknown)[:3]}"), Code.OK, "", response)
        self.world.after(case, code, response)
        return code, details, response

    @staticmethod
    def _invoke(kind: str, stub, case: Case):
        if kind == "unary_stream":
            responses = list(stub(case.request, timeout=case.deadline))
            return responses[-1] if responses else None
        if kind == "stream_unary":
            return stub(iter(case.request), timeout=case.deadline)
        return stub(case.request, timeout=case.deadline)

    def judge(self, case: Case, code: Code, details: str, response) -> None:
        allowed = ALLOWED | ({Code.DEADLINE_EXCEEDED} if case.deadline < DEADLINE_S else set())
        problems = []
        if code == Code.DEADLINE_EXCEEDED and case.deadline >= DEADLINE_S:
            self.hung.setdefault(case.rpc, describe(case.request, self.names))
        if code not in allowed:
            what = "hang (client deadline reached)" if code == Code.DEADLINE_EXCEEDED else "undocumented status"
            problems.append((f"{what}: {code.name}: {_normalise(details)}", code))
        if len(details.encode()) >= MAX_DETAILS:
            problems.append((f"details of {len(details.encode()) // 1024} kB or more (ids must be quoted truncated)", code))
        if code != Code.DEADLINE_EXCEEDED and CLIENT_SIDE.search(details):
            problems.append((f"transport failure seen by the client: {code.name}: {_normalise(details)}", code))
        made_up = [t for t in case.targets if not t.genuine]
        if code == Code.OK and made_up:
            problems += [(f"succeeded with a made-up id ({t.spec.kind})", code) for t in made_up]
        elif code == Code.OK and case.bad:
            problems.append((f"accepted although {_normalise(case.bad)}", code))
        method = case.rpc.split("/")[1]
        if case.valid and code != Code.OK:
            problems.append((f"refused a valid request: {code.name}: {_normalise(details)}", code))
        elif code == Code.NOT_FOUND and method != "RemoveObject" and not case.bad and case.targets \
                and all(t.genuine for t in case.targets):
            problems.append((f"NOT_FOUND for a live session: {_normalise(details)}", code))
        for text, c in problems:
            signature = f"{case.rpc}: {text}"
            reproducer = f"{case.rpc} {describe(case.request, self.names)}" + (f"  [{case.note}]" if case.note else "")
            self.seen.add(signature)
            old = self.findings.get(signature)
            if old is None:
                self.findings[signature] = Finding(signature, case.rpc, c.name, details[:300], reproducer)
            else:
                old.count += 1
                if len(reproducer) < len(old.reproducer):
                    old.reproducer, old.details = reproducer, details[:300]

    # ---- a Hypothesis run over one strategy of cases ----------------------------------------
    def run(self, cases: st.SearchStrategy, examples: int) -> None:
        stats = dict(self.stats)
        start, calls = time.perf_counter(), self.calls
        self.generate(cases, examples)
        self.report(calls, start, stats)

    def run_rpc(self, rpc: str, random: st.SearchStrategy, valid: int, per_fault: int, random_examples: int) -> None:
        """Valid requests, then each mutation of them in turn (one fault per request), then fully
        random requests. (Hypothesis choosing among a dozen mutations itself leaves some out.)"""
        stats = dict(self.stats)
        start, calls = time.perf_counter(), self.calls
        valid_cases, mutations = one_fault_at_a_time(self)[rpc]
        self.generate(valid_cases, valid)
        for mutation in mutations:
            self.generate(mutated(valid_cases, mutation), per_fault)
        self.generate(random, random_examples)
        self.report(calls, start, stats)

    def generate(self, cases: st.SearchStrategy, examples: int) -> None:
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
        @given(cases)
        def each(case):
            self.call(case)

        each()

    def run_all(self, cases: list) -> None:
        """Cases in order; a callable is built just before its call (ids resolved then: an earlier
        case may have closed the session a prepared id was derived from)."""
        stats = dict(self.stats)
        start, calls = time.perf_counter(), self.calls
        for case in cases:
            self.call(case() if callable(case) else case)
        self.report(calls, start, stats)

    def report(self, calls: int, start: float, stats: dict) -> None:
        """Calls and answers per RPC (with -s): how much got past validation."""
        memory = self.memory()
        print(f"\n{self.calls - calls} calls in {time.perf_counter() - start:.1f} s; RSS MB now " +
              ", ".join(f"{k} {v:.0f}" for k, v in memory.items()))
        for rpc in sorted({r for r, _ in self.stats}):
            codes = {c: n - stats.get((r, c), 0) for (r, c), n in self.stats.items() if r == rpc}
            codes = {c: n for c, n in codes.items() if n}
            if codes:
                print(f"  {rpc}: " + ", ".join(f"{c} {n}" for c, n in sorted(codes.items(), key=lambda kv: -kv[1])))

    def begin(self) -> None:
        self.seen = set()

    def assert_no_findings(self) -> None:
        """Every distinct violation seen by this test (counts and smallest reproducers over the module)."""
        seen = [self.findings[s] for s in sorted(self.seen)]
        assert not seen, f"{len(seen)} distinct violations:\n" + "\n".join(
            f"- [{f.count}x] {f.signature}\n    reproducer: {f.reproducer}\n    got: {f.code} {f.details!r}" for f in seen)

    # ---- warm-up and measurements ----------------------------------------------------------
    def warm_up(self) -> None:
        """Every RPC once, at the largest shapes the fuzz sends, so that the allocations that grow to a
        plateau (ONNX Runtime's arenas keep their peak per graph and shape: ~1 GB in Triton for the
        longest captions and the biggest decoder batches) are in the memory baseline; what the fuzz
        adds on top is then per-request garbage or a leak."""
        w = self.world
        image_id = w.image_id()
        box = pb.Box(x0=0, y0=0, x1=PHOTO_HW[1], y1=PHOTO_HW[0])
        long_caption = "a cat. a person. " * 40  # ~200 tokens, under the 256 limit
        calls = [
            lambda: self.seg.MaskFromPrompt(pb.MaskFromPromptRequest(
                image_id=image_id, boxes=[box] * 32, multimask_output=True, return_low_res_logits=True,
                mask_format=pb.MASK_FORMAT_RLE_AND_PNG), timeout=DEADLINE_S * 3),
            lambda: self.seg.MaskFromPrompt(pb.MaskFromPromptRequest(
                image_id=image_id, boxes=[box] * 32, points=[pb.Point(x=40, y=30, label=1)] * 64,
                mask_input=pb.LowResLogits(height=256, width=256, float32_data=bytes(256 * 256 * 4)),
                multimask_output=True, return_low_res_logits=True), timeout=DEADLINE_S * 3),
            lambda: self.seg.MaskFromPrompt(pb.MaskFromPromptRequest(
                image=self.photo_png, points=[pb.Point(x=40, y=30, label=1)]), timeout=DEADLINE_S),
            lambda: self.seg.MaskFromPrompt(pb.MaskFromPromptRequest(
                image=self.photo_png, text=long_caption, box_threshold=0, text_threshold=0, max_objects=100,
                nms_iou_threshold=1), timeout=DEADLINE_S * 3),
            lambda: self.seg.Detect(pb.DetectRequest(image=self.photo_png, text=long_caption, box_threshold=0,
                                                     max_objects=100), timeout=DEADLINE_S * 3),
            *[lambda task=task: self.seg.Segment(pb.SegmentRequest(image=self.photo_png, task=task), timeout=DEADLINE_S)
              for task in (1, 2, 3)],
            lambda: self.seg.GetModelInfo(pb.GetModelInfoRequest(), timeout=DEADLINE_S),
            # the fuzz's biggest decoder batch: 6x6 points in one call (see AUTOMASK_FIELDS)
            lambda: list(self.auto.GenerateMasks(apb.GenerateMasksRequest(image_id=image_id, parameters=apb.AutoMaskParameters(
                points_per_side=6, points_per_batch=256)), timeout=DEADLINE_S * 3)),
            lambda: list(self.auto.GenerateMasks(apb.GenerateMasksRequest(image=self.photo_png, parameters=apb.AutoMaskParameters(
                points_per_side=2, crop_n_layers=1)), timeout=DEADLINE_S * 3)),
            lambda: list(self.video.Propagate(vpb.PropagateRequest(session_id=w.video_id()), timeout=DEADLINE_S)),
            lambda: self.video.AddPrompts(vpb.AddPromptsRequest(session_id=w.fresh_id(), text=vpb.TextPrompt(
                text=long_caption, box_threshold=0, max_objects=4)), timeout=DEADLINE_S * 3),
            lambda: self.video.ListSessions(vpb.ListSessionsRequest(), timeout=DEADLINE_S),
        ]
        for call in calls:
            try:
                call()
            except grpc.RpcError as exc:  # the fuzz reports what fails; the warm-up only allocates
                print(f"warm-up call failed: {exc.code().name} {(exc.details() or '')[:200]}")
        if w.fresh is not None:
            w._drop_video(w.fresh, end=True)  # prompted now: not fresh any more

    def memory(self) -> dict[str, float]:
        gc.collect()
        me = psutil.Process()
        triton = getattr(self.stack.triton, "process", None)
        tree = []
        if triton is not None:
            root = psutil.Process(triton.pid)
            tree = [root, *root.children(recursive=True)]
        total = 0
        for p in tree:  # proportional set size: the Python backend's shared memory counted once, not per stub
            try:
                total += p.memory_full_info().pss
            except psutil.Error:
                pass
        return {"orchestrator_mb": me.memory_info().rss / 2**20, "triton_mb": total / 2**20}


# Streaming shapes of the methods (for raw-wire calls).
KINDS = {"GenerateMasks": "unary_stream", "Propagate": "unary_stream", "StartVideoSession": "stream_unary",
         "AddFrames": "stream_unary"}
RAW_KINDS = {**{m: "unary" for m in ("OpenImage", "MaskFromPrompt", "CloseImage", "Detect", "Segment",
                                     "GetModelInfo", "AddPrompts", "RemoveObject", "EndSession", "ListSessions")},
             **KINDS}


# ============================================================================ strategies per request


def _points(draw, width: int, height: int, usual=(0, 1, 1, 2, 3), huge=(64, 65, 500, 3000), max_points: int = 64,
            labels=(0, 1)):
    """Points: a few drawn one by one, repeated up to the drawn count. -> (list[pb.Point], bad)."""
    n = draw(fz.count(list(usual), list(huge)))
    templates, bad = [], None
    for _ in range(min(n, 3)):
        x, y = draw(fz.coordinate(width, "point x")), draw(fz.coordinate(height, "point y"))
        label = draw(fz.int32(fz.pick(labels), lambda v: v in labels, "point label"))
        templates.append(pb.Point(x=x.value, y=y.value, label=label.value))
        bad = bad or bad_of(x, y, label)
    points = [templates[i % len(templates)] for i in range(n)] if templates else []
    if n > max_points:
        bad = f"more than {max_points} points"
    return points, bad


def _valid_points(draw, width: int, height: int, n: int) -> list:
    return [pb.Point(x=draw(st.floats(0, width, width=32)), y=draw(st.floats(0, height, width=32)),
                     label=draw(fz.pick([0, 1, 1]))) for _ in range(n)]


def _valid_box(draw, width: int, height: int) -> "pb.Box":
    x0, x1 = sorted(draw(st.floats(0, width, width=32)) for _ in range(2))
    y0, y1 = sorted(draw(st.floats(0, height, width=32)) for _ in range(2))
    return pb.Box(x0=x0, y0=y0, x1=x1, y1=y1)


def _box(draw, width: int, height: int):
    x0, y0 = draw(fz.coordinate(width, "box x0")), draw(fz.coordinate(height, "box y0"))
    x1, y1 = draw(fz.coordinate(width, "box x1")), draw(fz.coordinate(height, "box y1"))
    box = pb.Box(x0=x0.value, y0=y0.value, x1=x1.value, y1=y1.value)
    if draw(fz.pick([True] * 5 + [False])):  # mostly ordered corners; else as drawn
        box.x0, box.x1 = sorted((box.x0, box.x1), key=lambda v: (v != v, v))
        box.y0, box.y1 = sorted((box.y0, box.y1), key=lambda v: (v != v, v))
    bad = bad_of(x0, y0, x1, y1)
    if not bad and (box.x0 > box.x1 or box.y0 > box.y1):
        bad = "box with x0 > x1 or y0 > y1"
    return box, bad


def _mask_input(draw):
    """LowResLogits: valid 256x256 logits, or any size / byte count / non-finite data."""
    kind = draw(fz.pick(["zeros", "random", "nan", "odd"]))
    if kind != "odd":
        data = {"zeros": np.zeros(256 * 256, "<f4"), "nan": np.full(256 * 256, np.nan, "<f4"),
                "random": np.random.default_rng(draw(st.integers(0, 9))).normal(0, 5, 256 * 256).astype("<f4")}[kind]
        return pb.LowResLogits(height=256, width=256, float32_data=data.tobytes()), (
            "mask_input not finite" if kind == "nan" else None)
    height = draw(fz.pick([0, 1, 64, 255, 256, 257, -1, 2**31 - 1]))
    width = draw(fz.pick([0, 1, 64, 256, -1, 2**31 - 1]))
    size = draw(fz.pick([0, 12, 256 * 256 * 4 - 1, 256 * 256 * 4, 64 * 64 * 4]))
    bad = None if (height, width, size) == (256, 256, 256 * 256 * 4) else "mask_input not 256x256 float32"
    return pb.LowResLogits(height=height, width=width, float32_data=bytes(size)), bad


def _text_fields(draw, request, what: str = ""):
    """Caption, thresholds, max_objects, NMS threshold on any message with Detect's fields."""
    text = draw(fz.caption())
    request.text = text.value
    bads = [text.bad]
    for name in ("box_threshold", "text_threshold", "nms_iou_threshold"):
        t = draw(fz.unit_threshold(what + name))
        if t.value is not None:
            setattr(request, name, t.value)
        bads.append(t.bad)
    max_objects = draw(fz.int32(st.integers(0, 20), lambda v: 0 <= v <= 100, what + "max_objects"))
    request.max_objects = max_objects.value
    bads.append(max_objects.bad)
    return next((b for b in bads if b), None)


def _image_source(draw, fuzzer: Fuzzer, valid_only: bool):
    sample = draw(fz.valid_images(fuzzer.catalogue) if valid_only else
                  mostly(fz.valid_images(fuzzer.catalogue), fz.images(fuzzer.catalogue), 2))
    return sample


def mask_from_prompt(fuzzer: Fuzzer, valid_only: bool = False) -> st.SearchStrategy:
    world, photo_w, photo_h = fuzzer.world, PHOTO_HW[1], PHOTO_HW[0]

    @st.composite
    def build(draw):
        request, bads, targets, notes = pb.MaskFromPromptRequest(), [], (), []
        source = draw(fz.pick(["id", "bytes"] if valid_only else ["id"] * 4 + ["bytes"] * 4 + ["none"]))
        width, height = photo_w, photo_h
        if source == "id":
            spec = IdSpec("valid_image") if valid_only else draw(fz.id_specs("image"))
            target = world.target(spec, "image")
            request.image_id, targets = target.value, (target,)
            notes.append(f"image_id: {spec.kind} {spec.fields or ''}".strip())
        elif source == "bytes":
            sample = _image_source(draw, fuzzer, valid_only)
            request.image = sample.data
            width, height = sample.size or (photo_w, photo_h)
            bads.append(sample.bad)
        else:
            bads.append("no image_id or image")
        use_text = not valid_only and draw(fz.pick([False] * 4 + [True]))
        if use_text:
            bads.append(_text_fields(draw, request))
            if source != "bytes":
                bads.append("text with an image_id")
        # prompts
        if valid_only:
            kind = draw(fz.pick(["points", "box", "both"]))
            if kind != "box":
                request.points.extend(_valid_points(draw, width, height, draw(st.integers(1, 3))))
            if kind != "points":
                request.boxes.append(_valid_box(draw, width, height))
        else:
            points, bad = _points(draw, width, height)
            request.points.extend(points)
            bads.append(bad)
            n_boxes = draw(fz.count([0, 0, 1, 2], [32, 33, 100, 2000]))
            boxes = [_box(draw, width, height) for _ in range(min(n_boxes, 2))]
            if boxes:
                request.boxes.extend(boxes[i % len(boxes)][0] for i in range(n_boxes))
            bads += [b for _, b in boxes]
            if n_boxes > 32:
                bads.append("more than 32 boxes")
            if draw(fz.pick([False, False, False, True])):
                mask, bad = _mask_input(draw)
                request.mask_input.CopyFrom(mask)
                bads.append(bad)
            if not request.points and not request.boxes and not request.HasField("mask_input") and not use_text:
                bads.append("no prompt")
            if use_text and (request.points or request.boxes or request.HasField("mask_input")):
                bads.append("text combined with other prompts")
        request.multimask_output = draw(st.booleans())
        request.return_low_res_logits = draw(st.booleans())
        if use_text and (request.multimask_output or request.return_low_res_logits):
            bads.append("text with multimask_output or return_low_res_logits")
        mask_format = draw(fz.enum_value((0, 1, 2), "mask_format")) if not valid_only else Tagged(draw(fz.pick([0, 1, 2])))
        request.mask_format = mask_format.value
        bads.append(mask_format.bad)
        return Case("Segmentation/MaskFromPrompt", request, next((b for b in bads if b), None), targets,
                    valid=valid_only, note="; ".join(notes), size=(width, height))

    return build()


def open_image(fuzzer: Fuzzer) -> st.SearchStrategy:
    def case(sample):
        return Case("Segmentation/OpenImage", pb.OpenImageRequest(image=sample.data), sample.bad,
                    valid=bool(sample.size and not sample.bad))
    return mostly(fz.valid_images(fuzzer.catalogue), fz.images(fuzzer.catalogue), 1).map(case)


def close_image(fuzzer: Fuzzer) -> st.SearchStrategy:
    def case(spec):
        target = fuzzer.world.target(spec, "image")
        return Case("Segmentation/CloseImage", pb.CloseImageRequest(image_id=target.value),
                    None if target.genuine else "not a live image id", (target,), note=f"image_id: {spec.kind} {spec.fields or ''}")
    return fz.id_specs("image").map(case)


def detect(fuzzer: Fuzzer) -> st.SearchStrategy:
    @st.composite
    def build(draw):
        sample = _image_source(draw, fuzzer, False)
        request = pb.DetectRequest(image=sample.data)
        bad = _text_fields(draw, request)
        return Case("Segmentation/Detect", request, sample.bad or bad)
    return build()


def segment(fuzzer: Fuzzer) -> st.SearchStrategy:
    labels = fuzzer.num_labels

    @st.composite
    def build(draw):
        sample = _image_source(draw, fuzzer, False)
        request = pb.SegmentRequest(image=sample.data)
        bads = [sample.bad]
        task = draw(fz.enum_value((0, 1, 2, 3), "task"))
        request.task = task.value
        bads.append(task.bad)
        for name in ("threshold", "mask_threshold", "overlap_mask_area_threshold"):
            t = draw(fz.unit_threshold(name))
            if t.value is not None:
                setattr(request, name, t.value)
            bads.append(t.bad)
        n = draw(fz.count([0, 0, 1, 2], [50, 3000]))
        fuse = [draw(fz.int32(st.integers(0, labels - 1), lambda v: 0 <= v < labels, "label_ids_to_fuse"))
                for _ in range(min(n, 3))]
        if fuse:
            request.label_ids_to_fuse.extend(fuse[i % len(fuse)].value for i in range(n))
        bads += [t.bad for t in fuse]
        fmt = draw(fz.enum_value((0, 1, 2), "label_map_format"))
        request.label_map_format = fmt.value
        bads.append(fmt.bad)
        bad = next((b for b in bads if b), None)
        return Case("Segmentation/Segment", request, bad, valid=bool(sample.size and not bad))
    return build()


# (field, valid draws, documented range check) — automask.proto. Valid draws keep a request at 36
# points or fewer. (A batch of 1024 prompts, the limit once, took 30 s and ~14 GB in Triton with the
# tiny model; the limit is 256 prompts a call since.)
AUTOMASK_FIELDS = [
    ("points_per_side", st.integers(1, 6), lambda v: 1 <= v <= 256),
    ("points_per_batch", fz.pick([1, 7, 64, 256]), lambda v: 1 <= v <= 256),
    ("pred_iou_thresh", st.floats(0, 1, width=32), lambda v: 0 <= v <= 1),
    ("stability_score_thresh", st.floats(0, 1, width=32), lambda v: 0 <= v <= 1),
    ("stability_score_offset", st.floats(0.0625, 100, width=32), lambda v: 0 < v <= 100),
    ("box_nms_thresh", st.floats(0, 1, width=32), lambda v: 0 <= v <= 1),
    ("crop_n_layers", fz.pick([0, 0, 0, 1]), lambda v: 0 <= v <= 4),
    ("crop_nms_thresh", st.floats(0, 1, width=32), lambda v: 0 <= v <= 1),
    ("crop_overlap_ratio", st.floats(0, 0.875, width=32), lambda v: 0 <= v < 1),
    ("crop_n_points_downscale_factor", st.integers(1, 4), lambda v: 1 <= v <= 16),
    ("min_mask_region_area", fz.pick([0, 5, 100]), lambda v: True),  # no documented bound
    ("mask_threshold", st.floats(-100, 100, width=32), lambda v: abs(v) <= 100),
]


def _not_heavy(points_per_side: int) -> bool:
    """Refused (over the point limit or out of range), or at most 6x6 points."""
    return not 6 < points_per_side <= 32


def generate_masks(fuzzer: Fuzzer, valid_only: bool = False) -> st.SearchStrategy:
    world = fuzzer.world

    @st.composite
    def build(draw):
        request, bads, targets, notes = apb.GenerateMasksRequest(), [], (), []
        source = draw(fz.pick(["id", "bytes"] if valid_only else ["id"] * 4 + ["bytes"] * 4 + ["none"]))
        if source == "id":
            spec = IdSpec("valid_image") if valid_only else draw(fz.id_specs("image"))
            target = world.target(spec, "image")
            request.image_id, targets = target.value, (target,)
            notes.append(f"image_id: {spec.kind} {spec.fields or ''}".strip())
        elif source == "bytes":
            sample = _image_source(draw, fuzzer, valid_only)
            request.image = sample.data
            bads.append(sample.bad)
        else:
            bads.append("no image_id or image")
        params = request.parameters
        for name, valid, ok in AUTOMASK_FIELDS:
            if valid_only:
                value = draw(st.one_of(st.none(), valid)) if name != "points_per_side" else draw(valid)
                if name == "crop_n_layers" and source == "id":
                    value = None  # crops need image bytes
                if name == "crop_n_points_downscale_factor":
                    value = None  # may leave no point in a crop layer: refused, and rightly
            else:
                kind_float = name not in ("points_per_side", "points_per_batch", "crop_n_layers",
                                          "crop_n_points_downscale_factor", "min_mask_region_area")
                adversarial = fz.any_float() if kind_float else st.one_of(
                    fz.pick(fz.SPECIAL_INT32 + ([64, 257] if name == "points_per_side" else [2, 5])),
                    st.integers(*fz.INT32))
                if name == "points_per_side":
                    adversarial = adversarial.filter(_not_heavy)
                value = draw(fz.weighted((2, st.none()), (2, valid), (1, adversarial)))
                if name == "points_per_side" and value is None:
                    value = draw(st.integers(1, 6))  # the default (32: 1024 points) is drawn explicitly only
            if value is None:
                continue
            setattr(params, name, value)
            value = getattr(params, name)  # as stored (float32)
            if not (isinstance(value, int) or math.isfinite(value)) or not ok(value):
                bads.append(f"parameters.{name} outside its documented range")
        if params.crop_n_layers > 0 and source == "id":
            bads.append("crop_n_layers > 0 with an image_id")
        if params.points_per_side > 0 and params.crop_n_layers >= 0 and not any(bads):
            total = sum((params.points_per_side // (params.crop_n_points_downscale_factor ** i or 1)) ** 2 * 4 ** i
                        for i in range(min(params.crop_n_layers, 4) + 1))
            if total > MAX_AUTOMASK_POINTS and params.crop_n_points_downscale_factor >= 1:
                bads.append(f"more than {MAX_AUTOMASK_POINTS} points per request")
        request.max_masks = draw(fz.pick([0, 1, 5])) if valid_only else draw(
            fz.int32(fz.pick([0, 1, 5]))).value
        request.stream = draw(st.booleans())
        deadline = DEADLINE_S if valid_only else draw(fz.pick([DEADLINE_S] * 5 + [SHORT_DEADLINE_S]))
        bad = next((b for b in bads if b), None)
        return Case("AutoMask/GenerateMasks", request, bad, targets, valid=valid_only, deadline=deadline,
                    note="; ".join(notes))

    return build()


# ---- video ---------------------------------------------------------------------------------------


def _raw_frame(width: int, height: int, fill: int = 90, size: int | None = None) -> "vpb.Frame":
    n = width * height * 3 if size is None else size
    return vpb.Frame(raw=vpb.RawFrame(width=width, height=height, rgb=bytes([fill]) * max(n, 0)))


def _frame(draw, fuzzer: Fuzzer, width: int, height: int, valid_only: bool):
    """(Frame, bad, size) for a video of width x height: `bad` for a frame broken in itself, `size`
    (width, height) for a well-formed one (None: broken, or undocumented like a truncated image).
    Whether its size matches the video's is the caller's to judge (see `_frames_bad`)."""
    options = ["raw", "raw", "raw", "encoded"] if valid_only else [
        "raw", "raw", "raw", "encoded", "other_size", "wrong_bytes", "odd_dims", "image", "unset"]
    kind = draw(fz.pick(options))
    if kind == "raw":
        return _raw_frame(width, height, draw(st.integers(0, 255))), None, (width, height)
    if kind == "encoded":
        from segserve.common.image import encode_png
        image = encode_png(np.full((height, width, 3), draw(st.integers(0, 255)), np.uint8))
        return vpb.Frame(image=image), None, (width, height)
    if kind == "other_size":
        w, h = draw(fz.pick([(width + 1, height), (width, height + 1), (1, 1), (height, width)]))
        return _raw_frame(w, h), None, (w, h)
    if kind == "wrong_bytes":
        delta = draw(fz.pick([-1, 1, -width * height * 3, 5000]))
        return _raw_frame(width, height, size=width * height * 3 + delta), "raw frame with the wrong byte count", None
    if kind == "odd_dims":
        w = draw(fz.pick([0, -1, -40, 2**31 - 1, 70_000]))
        h = draw(fz.pick([0, -1, 1, 2**31 - 1, 70_000]))
        return _raw_frame(w, h, size=draw(fz.pick([0, 3, 12]))), "raw frame with impossible dimensions", None
    if kind == "image":
        sample = draw(fz.images(fuzzer.catalogue))
        return vpb.Frame(image=sample.data), sample.bad, None if sample.bad else sample.size
    return vpb.Frame(), "frame with neither image nor raw", None


def _frames_bad(frames: list[tuple], video_size: tuple | None = None) -> str | None:
    """The documented rule a list of (bad, size) frames breaks: a broken frame, or one whose size
    differs from the video's (given, or the first frame's). After a frame of unknown fate (a
    truncated image that may decode), sizes are not judged."""
    reference, unknown = video_size, False
    for bad, size in frames:
        if bad:
            return bad
        if size is None:
            unknown = True
        elif reference is None and not unknown:
            reference = size
        elif reference is not None and size != reference and not unknown:
            return "frame of another size"
    return None


def start_video(fuzzer: Fuzzer, valid_only: bool = False) -> st.SearchStrategy:
    @st.composite
    def build(draw):
        width, height = draw(fz.pick([(FRAME_HW[1], FRAME_HW[0]), (1, 1), (3, 1), (16, 64)]))
        n_messages = draw(fz.pick([1, 1, 2]) if valid_only else fz.count([1, 1, 2], [0, 3]))
        messages, bads, judged, total = [], [], [], 0
        for _ in range(n_messages):
            many = not valid_only and draw(fz.pick([False] * 9 + [True]))
            n_frames = MAX_VIDEO_FRAMES + 2 if many else draw(
                fz.pick([1, 2]) if valid_only else fz.count([1, 2], [0, 3]))
            frames = []
            for _ in range(min(n_frames, 3)):
                frame, bad, size = _frame(draw, fuzzer, width, height, valid_only)
                frames.append(frame)
                judged.append((bad, size))
            frames = [frames[i % len(frames)] for i in range(n_frames)] if frames else []
            total += n_frames
            message = vpb.VideoFrames(frames=frames)
            if not valid_only and draw(fz.pick([False] * 5 + [True])):
                message.session_id = draw(st.text(max_size=12))  # AddFrames only: ignored here
            messages.append(message)
        bads.append(_frames_bad(judged))
        if total == 0:
            bads.append("no frames")
        if total > MAX_VIDEO_FRAMES:
            bads.append(f"more than {MAX_VIDEO_FRAMES} frames")
        bad = next((b for b in bads if b), None)
        return Case("VideoTracking/StartVideoSession", messages, bad, valid=valid_only)
    return build()


def add_frames(fuzzer: Fuzzer) -> st.SearchStrategy:
    world = fuzzer.world

    @st.composite
    def build(draw):
        spec = draw(fz.id_specs("video"))
        target = world.target(spec, "video")
        n_messages = draw(fz.count([1, 1, 2], [0, 3]))
        messages, bads, judged = [], [] if target.genuine else ["not a live session id"], []
        for m in range(n_messages):
            frames = []
            for _ in range(draw(fz.count([1, 2], [0, 3]))):
                frame, bad, size = _frame(draw, fuzzer, FRAME_HW[1], FRAME_HW[0], False)
                frames.append(frame)
                judged.append((bad, size))
            sid = target.value if m == 0 else draw(fz.pick(["", target.value, "vs-other"]))
            messages.append(vpb.VideoFrames(session_id=sid, frames=frames))
        bads.append(_frames_bad(judged, FRAME_HW[::-1]))
        if not messages:
            bads.append("no message")
        bad = next((b for b in bads if b), None)
        return Case("VideoTracking/AddFrames", messages, bad, (target,), valid=False, note=f"session_id: {spec.kind}")
    return build()


def _mask_prompt(draw, fuzzer: Fuzzer):
    """(pb.Mask, bad) at the frame size, or broken."""
    from segserve.common import rle as rle_codec
    from segserve.common.image import encode_png

    h, w = FRAME_HW
    kind = draw(fz.mostly(fz.pick(["rle", "png"]), fz.pick(
        ["rle_size", "rle_counts", "png_size", "png_garbage", "both", "neither", "png_bomb"]), 2))
    mask = np.zeros(FRAME_HW, np.uint8)
    mask[draw(st.integers(0, h - 1)):, draw(st.integers(0, w - 1)):] = 1
    counts = rle_codec.encode(mask.astype(bool))["counts"]
    counts = counts.decode() if isinstance(counts, bytes) else counts
    if kind == "rle":
        return pb.Mask(rle=pb.Rle(size=[h, w], counts=counts)), None
    if kind == "png":
        return pb.Mask(png=encode_png(mask * 255)), None
    if kind == "rle_size":
        size = draw(fz.pick([[w, h], [h], [], [h, w, 1], [0, 0], [-h, -w], [2**31 - 1, 2**31 - 1]]))
        return pb.Mask(rle=pb.Rle(size=size, counts=counts)), "mask rle of another size"
    if kind == "rle_counts":
        bad_counts = draw(fz.pick(["", "!!!", "zzzzzzzzzzzzzzzzzzzz", "0", "\x00", "1" * 10_000, "PX1",
                                           "é"]) | st.text(max_size=20))
        return pb.Mask(rle=pb.Rle(size=[h, w], counts=bad_counts)), None  # some strings are valid counts
    if kind == "png_size":
        return pb.Mask(png=encode_png(np.ones((h + 1, w), np.uint8))), "mask png of another size"
    if kind == "png_garbage":
        return pb.Mask(png=draw(st.binary(min_size=1, max_size=40))), "mask png that is not an image"
    if kind == "png_bomb":
        return pb.Mask(png=fz.png_header_only(100_000, 100_000)), "mask png of another size"
    if kind == "both":
        return pb.Mask(rle=pb.Rle(size=[h, w], counts=counts), png=encode_png(mask * 255)), "mask with both rle and png"
    return pb.Mask(score=0.5), "mask with neither rle nor png"


def _object_prompt(draw, fuzzer: Fuzzer, valid_only: bool):
    h, w = FRAME_HW
    object_id = draw(st.integers(1, 4) if valid_only else mostly(st.integers(1, 4), fz.pick(fz.SPECIAL_INT64)))
    obj = vpb.ObjectPrompt(object_id=object_id)
    valid_kinds = fz.pick(["points", "box", "points+box", "mask"])
    kind = draw(valid_kinds if valid_only else fz.mostly(valid_kinds, fz.pick(["nothing", "mask+points",
                                                                                      "mask+box"]), 6))
    bads = []
    if "points" in kind:
        if valid_only:
            obj.points.extend(_valid_points(draw, w, h, draw(st.integers(1, 2))))
        else:
            points, bad = _points(draw, w, h, usual=(1, 2, 3), huge=(64, 65, 500))
            obj.points.extend(points)
            bads.append(bad)
    if "box" in kind:
        if valid_only:
            obj.box.CopyFrom(_valid_box(draw, w, h))
        elif draw(st.booleans()):
            obj.box.CopyFrom(pb.Box(x0=-1e6, y0=-1e6, x1=1e6, y1=1e6))
            bads.append("box outside the frame")
        else:
            box, bad = _box(draw, w, h)
            obj.box.CopyFrom(box)
            bads.append(bad)
    if "mask" in kind:
        mask, bad = _mask_prompt(draw, fuzzer) if not valid_only else (None, None)
        if valid_only:
            from segserve.common.image import encode_png
            m = np.zeros(FRAME_HW, np.uint8)
            m[4:20, 5:25] = 255
            mask = pb.Mask(png=encode_png(m))
        obj.mask.CopyFrom(mask)
        bads.append(bad)
        if kind != "mask":
            bads.append("mask combined with points or a box")
    if kind == "nothing":
        bads.append("object without points, box or mask")
    if "points" in kind and len(obj.points) > 64:
        bads.append("more than 64 points per object")
    return obj, next((b for b in bads if b), None)


def add_prompts(fuzzer: Fuzzer, valid_only: bool = False) -> st.SearchStrategy:
    world = fuzzer.world

    @st.composite
    def build(draw):
        spec = IdSpec("valid_video") if valid_only else draw(fz.id_specs("video"))
        target = world.target(spec, "video")
        n = world.frames_of(target.value) if target.genuine else VIDEO_FRAMES
        request = vpb.AddPromptsRequest(session_id=target.value)
        bads = [] if target.genuine else ["not a live session id"]
        # draws never depend on the world's state (Hypothesis replays choice sequences): a session
        # has at least VIDEO_FRAMES frames; n, its real count, only decides the tag
        frame = draw(st.integers(0, VIDEO_FRAMES - 1)) if valid_only else draw(
            fz.int32(st.integers(0, VIDEO_FRAMES - 1))).value
        request.frame_index = frame
        if not 0 <= frame < n:
            bads.append("frame_index out of range")
        count = draw(fz.pick([1, 2]) if valid_only else fz.count([0, 1, 1, 2, 3], [9, 65, 100]))
        objects = [_object_prompt(draw, fuzzer, valid_only) for _ in range(min(count, 3))]
        if objects:
            prompts = [objects[i % len(objects)][0] for i in range(count)]
            if count > 3:  # distinct ids beyond the templates
                prompts = [vpb.ObjectPrompt(object_id=1000 + i, points=p.points, box=p.box if p.HasField("box") else None)
                           for i, p in enumerate(prompts)]
            request.objects.extend(prompts)
            bads += [b for _, b in objects[:count]]
        ids = [o.object_id for o in request.objects]
        if len(set(ids)) != len(ids):
            if valid_only:
                for i, o in enumerate(request.objects):
                    o.object_id = i + 1
            else:
                bads.append("an object_id twice")
        if count > 64:
            bads.append("more than 64 objects")
        use_text = not valid_only and draw(fz.pick([False, False, False, True]))
        if use_text:
            bads.append(_text_fields(draw, request.text, "text."))
            if draw(st.booleans()):
                request.text.first_object_id = draw(mostly(st.integers(5, 50), fz.pick(fz.SPECIAL_INT64)))
        if not request.objects and not use_text:
            bads.append("no object and no text")
        fmt = draw(fz.enum_value((0, 1, 2), "mask_format")) if not valid_only else Tagged(0)
        request.mask_format = fmt.value
        bads.append(fmt.bad)
        bad = next((b for b in bads if b), None)
        return Case("VideoTracking/AddPrompts", request, bad, (target,), valid=valid_only,
                    note=f"session_id: {spec.kind}")
    return build()


def propagate(fuzzer: Fuzzer, valid_only: bool = False) -> st.SearchStrategy:
    world = fuzzer.world

    @st.composite
    def build(draw):
        spec = IdSpec("valid_video") if valid_only else draw(fz.id_specs("video"))
        target = world.target(spec, "video")
        n = world.frames_of(target.value) if target.genuine else VIDEO_FRAMES
        request = vpb.PropagateRequest(session_id=target.value, reverse=draw(st.booleans()))
        bads = [] if target.genuine else ["not a live session id"]
        if valid_only:
            request.start_frame_index = draw(st.integers(0, VIDEO_FRAMES - 1))
        elif draw(st.booleans()):
            start = draw(fz.int32(st.integers(0, VIDEO_FRAMES - 1))).value
            request.start_frame_index = start
            bads.append(None if 0 <= start < n else "start_frame_index out of range")
        if draw(st.booleans()):
            most = draw(st.integers(1, VIDEO_FRAMES) if valid_only else
                        fz.int32(st.integers(1, VIDEO_FRAMES), lambda v: v >= 1, "max_frames"))
            request.max_frames = most if valid_only else most.value
            bads.append(None if valid_only else most.bad)
        fmt = draw(fz.enum_value((0, 1, 2), "mask_format")) if not valid_only else Tagged(draw(fz.pick([0, 1, 2])))
        request.mask_format = fmt.value
        bads.append(fmt.bad)
        deadline = DEADLINE_S if valid_only else draw(fz.pick([DEADLINE_S] * 5 + [SHORT_DEADLINE_S / 5]))
        bad = next((b for b in bads if b), None)
        return Case("VideoTracking/Propagate", request, bad, (target,), valid=valid_only, deadline=deadline,
                    note=f"session_id: {spec.kind}")
    return build()


def remove_object(fuzzer: Fuzzer) -> st.SearchStrategy:
    @st.composite
    def build(draw):
        spec = draw(fz.id_specs("video"))
        target = fuzzer.world.target(spec, "video")
        object_id = draw(mostly(st.integers(1, 4), fz.pick(fz.SPECIAL_INT64)))
        return Case("VideoTracking/RemoveObject", vpb.RemoveObjectRequest(session_id=target.value, object_id=object_id),
                    None if target.genuine else "not a live session id", (target,), note=f"session_id: {spec.kind}")
    return build()


def end_session(fuzzer: Fuzzer) -> st.SearchStrategy:
    def case(spec):
        target = fuzzer.world.target(spec, "video")
        return Case("VideoTracking/EndSession", vpb.EndSessionRequest(session_id=target.value),
                    None if target.genuine else "not a live session id", (target,), note=f"session_id: {spec.kind}")
    return fz.id_specs("video").map(case)


# ---- the wire: bytes that are not a valid message ----------------------------------------------------


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    def varint(n):
        out = b""
        while True:
            low, n = n & 0x7F, n >> 7
            out += bytes([low | (0x80 if n else 0)])
            if not n:
                return out
    return varint(number << 3 | 2) + varint(len(payload)) + payload


NOT_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"a\x80b", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"]


def wire(fuzzer: Fuzzer) -> st.SearchStrategy:
    """A valid message with a string field replaced by bytes that are not UTF-8 (a proto3 `string`),
    or random bytes, for every method that has string fields."""
    photo = fuzzer.photo_png
    point = pb.Point(x=1, y=1, label=1)
    # (method, a valid body, the path of a string field as nested field numbers)
    bodies = [
        ("Segmentation/MaskFromPrompt", pb.MaskFromPromptRequest(points=[point]).SerializeToString(), (1,)),
        ("Segmentation/MaskFromPrompt", pb.MaskFromPromptRequest(image=photo).SerializeToString(), (9,)),
        ("Segmentation/CloseImage", b"", (1,)),
        ("Segmentation/Detect", pb.DetectRequest(image=photo).SerializeToString(), (2,)),
        ("AutoMask/GenerateMasks", b"", (1,)),
        ("VideoTracking/StartVideoSession", b"", (1,)),
        ("VideoTracking/AddFrames", b"", (1,)),
        ("VideoTracking/AddPrompts", vpb.AddPromptsRequest(objects=[vpb.ObjectPrompt(
            object_id=1, points=[point])]).SerializeToString(), (1,)),
        ("VideoTracking/AddPrompts", b"", (5, 1)),
        ("VideoTracking/AddPrompts", b"", (3, 4, 1, 2)),  # objects[0].mask.rle.counts
        ("VideoTracking/Propagate", b"", (1,)),
        ("VideoTracking/RemoveObject", b"", (1,)),
        ("VideoTracking/EndSession", b"", (1,)),
    ]

    @st.composite
    def build(draw):
        rpc, body, path = draw(fz.pick(bodies))
        if draw(fz.pick([True, True, True, False])):
            payload = draw(fz.pick(NOT_UTF8))
            for number in reversed(path):
                payload = _field(number, payload)
            request, bad, note = body + payload, "a string field that is not UTF-8", f"field path {path}"
        else:
            request, bad, note = draw(st.binary(min_size=1, max_size=48)), None, "random bytes"
        method = rpc.split("/")[1]
        if KINDS.get(method) == "stream_unary":
            request = [request]
        return Case(rpc, request, bad, note=note)
    return build()


# ============================================================================ one fault at a time
#
# The random strategies above mix many faults per request, so a rule is seldom the only one broken,
# and "a request that breaks a documented rule does not succeed" is then tested weakly. Here a valid
# request gets exactly one mutation: every documented rule is exercised in isolation.


def mutated(valid: st.SearchStrategy, mutation) -> st.SearchStrategy:
    """A valid case with one mutation applied: mutation(draw, case) edits case.request and sets
    case.bad (None when the API does not document the outcome) and case.targets."""
    @st.composite
    def build(draw):
        case = draw(valid)
        case.valid, case.bad = False, None
        mutation(draw, case)
        case.note = (case.note + "; " if case.note else "") + f"mutation: {mutation.__name__}"
        return case
    return build()


def _forged(world: World, kind: str, field_name: str):
    def forged_id(draw, case):
        spec = draw(fz.forged_ids(kind))
        target = world.target(spec, kind)
        message = case.request[0] if isinstance(case.request, list) else case.request
        setattr(message, field_name, target.value)
        case.targets, case.bad = (target,), "not a live session id"
        case.note = f"{field_name}: {spec.kind} {spec.fields or spec.text or ''}".strip()
    return forged_id


def _unknown_mask_format(draw, case):
    case.request.mask_format = draw(fz.unknown_enum((0, 1, 2)))
    case.bad = f"unknown mask_format value {case.request.mask_format}"


def _image_mutations(fuzzer: Fuzzer) -> list:
    def broken_image(draw, case):
        sample = draw(fz.images(fuzzer.catalogue).filter(lambda s: not s.size))
        case.request.image = sample.data
        case.bad, case.targets = sample.bad, ()
    return [broken_image]


def mask_from_prompt_mutations(fuzzer: Fuzzer) -> list:
    def point_outside(draw, case):
        w, h = case.size
        p = case.request.points.add(x=draw(fz.outside(w)), y=draw(st.floats(0, h, width=32)), label=1)
        if draw(st.booleans()):
            p.x, p.y = draw(st.floats(0, w, width=32)), draw(fz.outside(h))
        case.bad = "point outside the image or not finite"

    def point_label(draw, case):
        case.request.points.add(x=0, y=0, label=draw(st.integers(*fz.INT32).filter(lambda v: v not in (0, 1))))
        case.bad = "point label not 0 or 1"

    def many_points(draw, case):
        n = draw(fz.pick([65, 500, 3000]))
        case.request.points.extend([pb.Point(x=1, y=1, label=1)] * n)
        case.bad = "more than 64 points"

    def box_outside(draw, case):
        w, h = case.size
        values = [draw(st.floats(0, w, width=32)), draw(st.floats(0, h, width=32))] * 2
        values[draw(fz.pick(range(4)))] = draw(fz.outside(max(w, h)) | fz.pick([-1e6, 1e6]))
        box = case.request.boxes.add(x0=values[0], y0=values[1], x1=values[2], y1=values[3])
        ok = all(math.isfinite(v) for v in values) and 0 <= box.x0 <= w and 0 <= box.x1 <= w \
            and 0 <= box.y0 <= h and 0 <= box.y1 <= h
        case.bad = None if ok else "box outside the image or not finite"
        if ok and (box.x0 > box.x1 or box.y0 > box.y1):
            case.bad = "box with x0 > x1 or y0 > y1"

    def box_inverted(draw, case):
        w, h = case.size
        if w < 1 and h < 1:
            return
        case.request.boxes.add(x0=w, y0=h, x1=0, y1=0)
        case.bad = "box with x0 > x1 or y0 > y1"

    def many_boxes(draw, case):
        case.request.boxes.extend([pb.Box(x0=0, y0=0, x1=1, y1=1)] * draw(fz.pick([33, 100, 2000])))
        case.bad = "more than 32 boxes"

    def bad_mask_input(draw, case):
        mask, bad = _mask_input(draw)
        case.request.mask_input.CopyFrom(mask)
        case.bad = bad

    def no_source(draw, case):
        case.request.ClearField("image_id")
        case.request.ClearField("image")
        case.targets, case.bad = (), "no image_id or image"

    def no_prompt(draw, case):
        case.request.ClearField("points")
        case.request.ClearField("boxes")
        case.bad = "no prompt"

    def text_with_other_prompts(draw, case):
        case.request.text = "a cat."
        case.bad = "text combined with an image_id or other prompts"

    def text_thresholds(draw, case):
        """The text path on image bytes, with one threshold or max_objects out of range."""
        case.request.ClearField("points")
        case.request.ClearField("boxes")
        case.request.multimask_output = case.request.return_low_res_logits = False
        if case.request.WhichOneof("source") != "image":
            case.request.image, case.targets = fuzzer.photo_png, ()
        case.request.text = draw(fz.pick(["a cat.", "person. ball."]))
        name = draw(fz.pick(["box_threshold", "text_threshold", "nms_iou_threshold", "max_objects"]))
        if name == "max_objects":
            case.request.max_objects = draw(st.integers(*fz.INT32).filter(lambda v: not 0 <= v <= 100))
        else:
            setattr(case.request, name, draw(fz.outside(1.0)))
        case.bad = f"{name} out of range"

    def odd_text(draw, case):
        """The text path with any caption: only a documented status is required."""
        case.request.ClearField("points")
        case.request.ClearField("boxes")
        case.request.multimask_output = case.request.return_low_res_logits = False
        if case.request.WhichOneof("source") != "image":
            case.request.image, case.targets = fuzzer.photo_png, ()
        text = draw(fz.caption())
        case.request.text, case.bad = text.value, text.bad

    return [_unknown_mask_format, point_outside, point_label, many_points, box_outside, box_inverted, many_boxes,
            bad_mask_input, _forged(fuzzer.world, "image", "image_id"), no_source, no_prompt, text_with_other_prompts,
            text_thresholds, odd_text] + _image_mutations(fuzzer)


def detect_mutations(fuzzer: Fuzzer) -> list:
    def threshold(draw, case):
        name = draw(fz.pick(["box_threshold", "text_threshold", "nms_iou_threshold"]))
        setattr(case.request, name, draw(fz.outside(1.0)))
        case.bad = f"{name} outside [0, 1]"

    def max_objects(draw, case):
        case.request.max_objects = draw(st.integers(*fz.INT32).filter(lambda v: not 0 <= v <= 100))
        case.bad = "max_objects outside [0, 100]"

    def text(draw, case):
        t = draw(fz.caption())
        case.request.text, case.bad = t.value, t.bad

    return [threshold, max_objects, text] + _image_mutations(fuzzer)


def segment_mutations(fuzzer: Fuzzer) -> list:
    labels = fuzzer.num_labels

    def task(draw, case):
        case.request.task = draw(fz.unknown_enum((0, 1, 2, 3)))
        case.bad = "unknown task"

    def label_map_format(draw, case):
        case.request.label_map_format = draw(fz.unknown_enum((0, 1, 2)))
        case.bad = "unknown label_map_format"

    def threshold(draw, case):
        name = draw(fz.pick(["threshold", "mask_threshold", "overlap_mask_area_threshold"]))
        setattr(case.request, name, draw(fz.outside(1.0)))
        case.bad = f"{name} outside [0, 1]"

    def label_id(draw, case):
        case.request.label_ids_to_fuse.append(draw(st.integers(*fz.INT32).filter(lambda v: not 0 <= v < labels)))
        case.bad = "label_ids_to_fuse not a label id"

    def many_label_ids(draw, case):
        case.request.label_ids_to_fuse.extend([0] * draw(fz.pick([100, 5000])))  # undocumented: any status

    return [task, label_map_format, threshold, label_id, many_label_ids] + _image_mutations(fuzzer)


def generate_masks_mutations(fuzzer: Fuzzer) -> list:
    def parameter(draw, case):
        name, _, ok = draw(fz.pick([f for f in AUTOMASK_FIELDS if f[0] != "min_mask_region_area"]))
        params = case.request.parameters
        before = getattr(params, name) if params.HasField(name) else None
        is_int = isinstance(getattr(apb.AutoMaskParameters(), name), int)
        value = draw(st.integers(*fz.INT32).filter(_not_heavy if name == "points_per_side" else lambda v: True)
                     if is_int else fz.any_float())
        setattr(params, name, value)
        value = getattr(params, name)
        case.bad = None if (is_int or math.isfinite(value)) and ok(value) else f"parameters.{name} out of range"
        if case.bad is None:  # a valid value after all: back to the valid case's (bounded cost)
            params.ClearField(name) if before is None else setattr(params, name, before)

    def too_many_points(draw, case):
        case.request.parameters.points_per_side = draw(fz.pick([33, 64, 256]))
        case.bad = f"more than {MAX_AUTOMASK_POINTS} points"

    def crops_with_image_id(draw, case):
        if case.request.WhichOneof("source") != "image_id":
            return
        case.request.parameters.crop_n_layers = draw(st.integers(1, 4))
        case.bad = "crop_n_layers > 0 with an image_id"

    def crops(draw, case):
        """Crops on image bytes (valid, slow): each crop is a session of its own."""
        case.request.image, case.targets = draw(fz.pick([fuzzer.photo_png, fuzzer.catalogue[6].data])), ()
        case.request.parameters.points_per_side = 2
        case.request.parameters.crop_n_layers = 1  # 5 crops: 5 encoder runs
        case.request.parameters.crop_n_points_downscale_factor = 1

    def max_masks(draw, case):
        case.request.max_masks = draw(st.integers(*fz.INT32))  # negative: undocumented, any status

    def short_deadline(draw, case):
        case.deadline = SHORT_DEADLINE_S
        case.request.stream = draw(st.booleans())

    return [parameter, too_many_points, crops_with_image_id, crops, max_masks, short_deadline,
            _forged(fuzzer.world, "image", "image_id")] + _image_mutations(fuzzer)


def add_prompts_mutations(fuzzer: Fuzzer) -> list:
    h, w = FRAME_HW

    def frame_index(draw, case):
        n = fuzzer.world.frames_of(case.request.session_id)
        case.request.frame_index = draw(fz.pick([-1, 1000, 2**31 - 1, -(2**31)]) | st.integers(*fz.INT32))
        case.bad = None if 0 <= case.request.frame_index < n else "frame_index out of range"

    def box_outside(draw, case):
        obj = case.request.objects[0]
        obj.ClearField("mask")
        b = draw(fz.pick([(-1e6, -1e6, 1e6, 1e6), (0, 0, w + 1, h), (-1, 0, 5, 5), (0, 0, 5, 1e6)]))
        obj.box.CopyFrom(pb.Box(x0=b[0], y0=b[1], x1=b[2], y1=b[3]))
        case.bad = "box outside the frame"

    def box_not_finite(draw, case):
        obj = case.request.objects[0]
        obj.ClearField("mask")
        obj.box.CopyFrom(pb.Box(x0=0, y0=0, x1=draw(fz.pick([math.nan, math.inf, -math.inf])), y1=5))
        case.bad = "box not finite"

    def point_outside(draw, case):
        obj = case.request.objects[0]
        obj.ClearField("mask")
        obj.points.add(x=draw(fz.outside(w)), y=1, label=1)
        case.bad = "point outside the frame"

    def point_label(draw, case):
        obj = case.request.objects[0]
        obj.ClearField("mask")
        obj.points.add(x=1, y=1, label=draw(st.integers(*fz.INT32).filter(lambda v: v not in (0, 1))))
        case.bad = "point label not 0 or 1"

    def many_points(draw, case):
        obj = case.request.objects[0]
        obj.ClearField("mask")
        obj.points.extend([pb.Point(x=1, y=1, label=1)] * draw(fz.pick([65, 1000])))
        case.bad = "more than 64 points on an object"

    def object_id(draw, case):
        case.request.objects[0].object_id = draw(fz.pick(fz.SPECIAL_INT64))  # any id: undocumented range

    def duplicate_ids(draw, case):
        case.request.objects.append(case.request.objects[0])
        case.bad = "an object_id twice"

    def many_objects(draw, case):
        n = draw(fz.pick([9, 20, 65, 200]))
        template = case.request.objects[0]
        case.request.ClearField("objects")
        case.request.objects.extend(vpb.ObjectPrompt(object_id=100 + i, points=[pb.Point(x=1, y=1, label=1)])
                                    for i in range(n))
        case.bad = "more than 64 objects" if n > 64 else None  # over the session's cap: RESOURCE_EXHAUSTED
        del template

    def mask_with_points(draw, case):
        obj = case.request.objects[0]
        obj.mask.CopyFrom(pb.Mask(rle=pb.Rle(size=[h, w], counts=f"{h * w}")))
        obj.points.add(x=1, y=1, label=1)
        case.bad = "mask combined with points"

    def bad_mask(draw, case):
        mask, bad = _mask_prompt(draw, fuzzer)
        obj = case.request.objects[0]
        obj.ClearField("points")
        obj.ClearField("box")
        obj.mask.CopyFrom(mask)
        case.bad = bad

    def nothing(draw, case):
        case.request.ClearField("objects")
        case.bad = "no object and no text"

    def empty_object(draw, case):
        obj = case.request.objects[0]
        for name in ("points", "box", "mask"):
            obj.ClearField(name)
        case.bad = "object without points, box or mask"

    def text_prompt(draw, case):
        """Grounding DINO on the frame (valid unless a field is out of range)."""
        if draw(st.booleans()):
            case.request.ClearField("objects")
        bad = _text_fields(draw, case.request.text, "text.")
        if draw(st.booleans()):
            case.request.text.first_object_id = draw(fz.pick(fz.SPECIAL_INT64) | st.integers(1, 20))
        case.bad = bad

    def other_kind_of_frame(draw, case):
        case.request.session_id = fuzzer.world.fresh_id()
        case.targets = (Target(IdSpec("fresh_video"), case.request.session_id, True),)
        case.request.frame_index = min(case.request.frame_index, VIDEO_FRAMES - 1)

    return [_forged(fuzzer.world, "video", "session_id"), frame_index, _unknown_mask_format, box_outside, box_not_finite,
            point_outside, point_label, many_points, object_id, duplicate_ids, many_objects, mask_with_points, bad_mask,
            nothing, empty_object, text_prompt, other_kind_of_frame]


def propagate_mutations(fuzzer: Fuzzer) -> list:
    def start(draw, case):
        n = fuzzer.world.frames_of(case.request.session_id)
        case.request.start_frame_index = draw(fz.pick([-1, 1000, 2**31 - 1, -(2**31)]))
        case.bad = None if 0 <= case.request.start_frame_index < n else "start_frame_index out of range"

    def max_frames(draw, case):
        case.request.max_frames = draw(fz.pick([0, -1, -(2**31)]) | st.integers(*fz.INT32).filter(lambda v: v < 1))
        case.bad = "max_frames below 1"

    def huge_max_frames(draw, case):
        case.request.max_frames = 2**31 - 1  # to the end: valid

    def no_prompts(draw, case):
        case.request.session_id = fuzzer.world.fresh_id()
        case.targets = (Target(IdSpec("fresh_video"), case.request.session_id, True),)
        case.request.ClearField("start_frame_index")  # nothing prompted: any documented status

    def short_deadline(draw, case):
        case.deadline = SHORT_DEADLINE_S / 5

    return [_forged(fuzzer.world, "video", "session_id"), start, max_frames, huge_max_frames, no_prompts, short_deadline,
            _unknown_mask_format]


def video_frames_mutations(fuzzer: Fuzzer, size_of) -> list:
    """StartVideoSession / AddFrames: one frame broken; `size_of(case)` -> the video's (w, h)."""
    def bad_frame(draw, case):
        w, h = size_of(case)
        frame, bad, size = _frame(draw, fuzzer, w, h, False)
        case.request[-1].frames.append(frame)
        case.bad = _frames_bad([(bad, size)], (w, h))

    def no_message(draw, case):
        case.request[:] = []
        case.bad = "no message"

    def only_empty_messages(draw, case):
        case.request[:] = [vpb.VideoFrames(session_id=m.session_id) for m in case.request]
        # StartVideoSession needs a frame; AddFrames adding none is a no-op (undocumented)
        case.bad = "no frames" if case.rpc.endswith("StartVideoSession") else None

    def too_many_frames(draw, case):
        w, h = size_of(case)
        case.request[-1].frames.extend([_raw_frame(w, h)] * (MAX_VIDEO_FRAMES + 1))
        case.bad = f"more than {MAX_VIDEO_FRAMES} frames"

    return [bad_frame, no_message, only_empty_messages, too_many_frames]


def valid_detect(fuzzer: Fuzzer) -> st.SearchStrategy:
    @st.composite
    def build(draw):
        request = pb.DetectRequest(image=draw(fz.valid_images(fuzzer.catalogue)).data,
                                   text=draw(fz.pick(fz.TEXTS[:3])), max_objects=draw(st.integers(0, 20)))
        for name in ("box_threshold", "text_threshold", "nms_iou_threshold"):
            if draw(st.booleans()):
                setattr(request, name, draw(st.floats(0, 1, width=32)))
        return Case("Segmentation/Detect", request, valid=True)
    return build()


def valid_segment(fuzzer: Fuzzer) -> st.SearchStrategy:
    @st.composite
    def build(draw):
        request = pb.SegmentRequest(image=draw(fz.valid_images(fuzzer.catalogue)).data, task=draw(fz.pick(range(4))),
                                    label_map_format=draw(fz.pick(range(3))))
        for name in ("threshold", "mask_threshold", "overlap_mask_area_threshold"):
            if draw(st.booleans()):
                setattr(request, name, draw(st.floats(0, 1, width=32)))
        request.label_ids_to_fuse.extend(draw(st.lists(st.integers(0, fuzzer.num_labels - 1), max_size=3)))
        return Case("Segmentation/Segment", request, valid=True)
    return build()


def valid_add_frames(fuzzer: Fuzzer) -> st.SearchStrategy:
    @st.composite
    def build(draw):
        target = fuzzer.world.target(IdSpec("valid_video"), "video")
        frames = [_raw_frame(FRAME_HW[1], FRAME_HW[0], draw(st.integers(0, 255))) for _ in range(draw(st.integers(1, 2)))]
        return Case("VideoTracking/AddFrames", [vpb.VideoFrames(session_id=target.value, frames=frames)],
                    targets=(target,), valid=True, note="session_id: valid_video")
    return build()


def _video_size(case: Case) -> tuple[int, int]:
    """(width, height) of the first frame of a StartVideoSession case."""
    from PIL import Image

    frame = next(f for m in case.request for f in m.frames)
    if frame.WhichOneof("data") == "raw":
        return frame.raw.width, frame.raw.height
    return Image.open(io.BytesIO(frame.image)).size


def one_fault_at_a_time(fuzzer: Fuzzer) -> dict[str, tuple[st.SearchStrategy, list]]:
    """Per RPC: (a strategy of valid cases, its mutations)."""
    return {
        "MaskFromPrompt": (mask_from_prompt(fuzzer, valid_only=True), mask_from_prompt_mutations(fuzzer)),
        "Detect": (valid_detect(fuzzer), detect_mutations(fuzzer)),
        "Segment": (valid_segment(fuzzer), segment_mutations(fuzzer)),
        "GenerateMasks": (generate_masks(fuzzer, valid_only=True), generate_masks_mutations(fuzzer)),
        "AddPrompts": (add_prompts(fuzzer, valid_only=True), add_prompts_mutations(fuzzer)),
        "Propagate": (propagate(fuzzer, valid_only=True), propagate_mutations(fuzzer)),
        "StartVideoSession": (start_video(fuzzer, valid_only=True), video_frames_mutations(fuzzer, _video_size)),
        "AddFrames": (valid_add_frames(fuzzer), video_frames_mutations(fuzzer, lambda case: FRAME_HW[::-1])
                      + [_forged(fuzzer.world, "video", "session_id")]),
    }


# ============================================================================ the tests

# Examples per property (about 2 minutes in all on 2 shared CPU cores, after ~1 minute of exports
# and start-up).


def test_fuzz_open_and_close_image(fuzzer):
    fuzzer.run(st.one_of(open_image(fuzzer), close_image(fuzzer)), examples=60)
    fuzzer.assert_no_findings()


def test_fuzz_mask_from_prompt(fuzzer):
    fuzzer.run_rpc("MaskFromPrompt", mask_from_prompt(fuzzer), valid=30, per_fault=6, random_examples=60)
    fuzzer.assert_no_findings()


def test_fuzz_detect(fuzzer):
    fuzzer.run_rpc("Detect", detect(fuzzer), valid=12, per_fault=6, random_examples=20)
    fuzzer.assert_no_findings()


def test_fuzz_segment_and_model_info(fuzzer):
    fuzzer.call(Case("Segmentation/GetModelInfo", pb.GetModelInfoRequest(), valid=True))
    fuzzer.run_rpc("Segment", segment(fuzzer), valid=12, per_fault=6, random_examples=20)
    fuzzer.assert_no_findings()


def test_fuzz_generate_masks(fuzzer):
    fuzzer.run_rpc("GenerateMasks", generate_masks(fuzzer), valid=10, per_fault=4, random_examples=20)
    fuzzer.assert_no_findings()


def test_fuzz_add_frames_end_and_list(fuzzer):
    fuzzer.call(Case("VideoTracking/ListSessions", vpb.ListSessionsRequest(), valid=True))
    fuzzer.run(end_session(fuzzer), examples=20)
    fuzzer.run_rpc("AddFrames", add_frames(fuzzer), valid=10, per_fault=5, random_examples=25)
    fuzzer.assert_no_findings()


def test_fuzz_add_prompts(fuzzer):
    fuzzer.run_rpc("AddPrompts", add_prompts(fuzzer), valid=25, per_fault=6, random_examples=40)
    fuzzer.assert_no_findings()


def test_fuzz_propagate_and_remove_object(fuzzer):
    fuzzer.run(remove_object(fuzzer), examples=20)
    fuzzer.run_rpc("Propagate", propagate(fuzzer), valid=12, per_fault=5, random_examples=20)
    fuzzer.assert_no_findings()


def test_fuzz_the_wire(fuzzer):
    """Bytes that are no valid request message: strings that are not UTF-8, random bytes."""
    fuzzer.run(wire(fuzzer), examples=60)
    fuzzer.assert_no_findings()


def test_every_adversarial_id_on_every_rpc(fuzzer):
    """Not left to chance: each kind of forged, stale, altered and other-kind id on every field that
    takes an id, with an otherwise valid request."""
    w = fuzzer.world
    point = pb.Point(x=10, y=10, label=1)
    specs = [IdSpec("empty"), IdSpec("random", text="nope"), IdSpec("long", n=100_000), IdSpec("long", n=4096),
             IdSpec("old_format", fields=("triton", "ffff", "4294967296", "4294967296", "1")),
             IdSpec("old_format", fields=("triton", "f" * 40, "48", "64", "1")),
             IdSpec("old_format", fields=("triton", "0", "48", "64", "1")),
             IdSpec("old_format", fields=("evil.example:8001", "ffff", "48", "64", "1"))]
    cases = []
    for kind in ("image", "video"):
        other = "video" if kind == "image" else "image"
        kinds = specs + [IdSpec(f"valid_{other}"), IdSpec("closed_image" if kind == "image" else "ended_video"),
                         IdSpec(f"tampered_{kind}", fields=(4800, 6400)), IdSpec(f"tampered_{kind}", fields=(1, 1)),
                         IdSpec(f"flipped_{kind}", n=5, char="Q"), IdSpec(f"flipped_{kind}", n=-1, char="B"),
                         IdSpec(f"padded_{kind}", text="=="), IdSpec(f"padded_{kind}", text="\n"),
                         IdSpec(f"noncanonical_{kind}")]
        for spec in kinds:
            def make(rpc, build, spec=spec, kind=kind):
                def case():
                    target = w.target(spec, kind)
                    return Case(rpc, build(target.value), "not a live id" if not target.genuine else None, (target,),
                                note=f"id: {spec.kind} {spec.fields or spec.text or ''}".strip())
                return case
            if kind == "image":
                cases += [
                    make("Segmentation/MaskFromPrompt", lambda i: pb.MaskFromPromptRequest(image_id=i, points=[point])),
                    make("AutoMask/GenerateMasks", lambda i: apb.GenerateMasksRequest(
                        image_id=i, parameters=apb.AutoMaskParameters(points_per_side=2))),
                    make("Segmentation/CloseImage", lambda i: pb.CloseImageRequest(image_id=i)),
                ]
            else:
                frames = [_raw_frame(FRAME_HW[1], FRAME_HW[0])]
                cases += [
                    make("VideoTracking/AddPrompts", lambda i: vpb.AddPromptsRequest(
                        session_id=i, objects=[vpb.ObjectPrompt(object_id=1, points=[point])])),
                    make("VideoTracking/Propagate", lambda i: vpb.PropagateRequest(session_id=i)),
                    make("VideoTracking/AddFrames", lambda i, f=frames: [vpb.VideoFrames(session_id=i, frames=f)]),
                    make("VideoTracking/RemoveObject", lambda i: vpb.RemoveObjectRequest(session_id=i, object_id=1)),
                    make("VideoTracking/EndSession", lambda i: vpb.EndSessionRequest(session_id=i)),
                ]
    cases += [Case("VideoTracking/StartVideoSession", [], "no frames", note="zero messages"),
              Case("VideoTracking/AddFrames", [], "no message", note="zero messages"),
              Case("VideoTracking/StartVideoSession", [vpb.VideoFrames()], "no frames", note="one empty message")]
    fuzzer.run_all(cases)
    fuzzer.assert_no_findings()


def test_every_image_on_every_image_rpc(fuzzer):
    """Every catalogue image (valid ones of many shapes and encodings, truncated, bombs, garbage) on
    every RPC that decodes an image."""
    def mask_prompt_case(png: bytes, frame_sized: bool) -> Case:
        target = fuzzer.world.target(IdSpec("valid_video"), "video")
        return Case("VideoTracking/AddPrompts", vpb.AddPromptsRequest(session_id=target.value, objects=[
            vpb.ObjectPrompt(object_id=1, mask=pb.Mask(png=png))]),
            None if frame_sized else "mask png that is not a frame-sized image", (target,))

    cases = []
    point = pb.Point(x=0, y=0, label=1)
    for sample in fuzzer.catalogue:
        valid = bool(sample.size and not sample.bad)
        frame_ok = valid and sample.size == (FRAME_HW[1], FRAME_HW[0])
        cases += [
            Case("Segmentation/OpenImage", pb.OpenImageRequest(image=sample.data), sample.bad, valid=valid),
            Case("Segmentation/MaskFromPrompt", pb.MaskFromPromptRequest(image=sample.data, points=[point]), sample.bad,
                 valid=valid),
            Case("Segmentation/Detect", pb.DetectRequest(image=sample.data, text="a cat."), sample.bad, valid=valid),
            Case("Segmentation/Segment", pb.SegmentRequest(image=sample.data), sample.bad, valid=valid),
            Case("AutoMask/GenerateMasks", apb.GenerateMasksRequest(image=sample.data, parameters=apb.AutoMaskParameters(
                points_per_side=2)), sample.bad, valid=valid),
            Case("VideoTracking/StartVideoSession", [vpb.VideoFrames(frames=[vpb.Frame(image=sample.data)])],
                 sample.bad, valid=valid),
            lambda data=sample.data, ok=frame_ok: mask_prompt_case(data, ok),
        ]
    fuzzer.run_all(cases)
    fuzzer.assert_no_findings()


def test_fuzz_start_video_session(fuzzer):
    """Last of the video tests: a START the tracker refuses has, so far, leaked its Triton sequence slot,
    and a few of those leave every later StartVideoSession waiting in Triton's backlog."""
    fuzzer.run_rpc("StartVideoSession", start_video(fuzzer), valid=12, per_fault=6, random_examples=30)
    fuzzer.assert_no_findings()


def test_after_the_fuzz_server_is_healthy_and_bounded(fuzz, fuzz_stack):
    for service in ("", "segserve.v1.Segmentation"):
        status = fuzz.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE_S).status
        assert status == health_pb2.HealthCheckResponse.SERVING, (service, status)
    opened = fuzz.seg.OpenImage(pb.OpenImageRequest(image=fuzz.photo_png), timeout=DEADLINE_S)
    result = fuzz.seg.MaskFromPrompt(pb.MaskFromPromptRequest(image_id=opened.image_id, points=[
        pb.Point(x=40, y=30, label=1)]), timeout=DEADLINE_S)
    assert (result.height, result.width) == PHOTO_HW and result.objects[0].masks
    fuzz.seg.CloseImage(pb.CloseImageRequest(image_id=opened.image_id), timeout=DEADLINE_S)

    # Nothing held but what the test opened: close all of that, then nothing may be left.
    fuzz.world.close_all()
    service = fuzz_stack.orchestrator.service
    problems = []
    explicit, implicit, adopted = _image_sessions(service)
    if explicit or adopted:
        problems.append(f"{explicit + adopted} image sessions registered after every genuine one was closed "
                        f"(the test opened {fuzz.world.opened_images} and closed them all), {adopted} of them "
                        "adopted under an id string the service never issued")
    if implicit > CACHE_SIZE:
        problems.append(f"{implicit} cached (implicit) image sessions, the cache holds {CACHE_SIZE}")
    videos = _video_sessions(service)
    if videos:
        problems.append(f"{videos} video sessions held after every genuine one was ended")
    load = _replica_load(service)
    if load is not None and load not in (explicit + implicit + videos, explicit + implicit + videos + adopted):
        problems.append(f"replica load counters say {load} sessions, {explicit + implicit + videos} are held "
                        "(a claim never released)")
    listed = fuzz.video.ListSessions(vpb.ListSessionsRequest(), timeout=DEADLINE_S).sessions
    if listed:
        problems.append(f"ListSessions shows {len(listed)} sessions after all were ended")
    # Black box: with the cache full, the whole quota of explicit sessions is still there, and one
    # more is RESOURCE_EXHAUSTED (not a wait in Triton's backlog).
    for i in range(CACHE_SIZE):
        fuzz.seg.MaskFromPrompt(pb.MaskFromPromptRequest(image=fz.solid_png(8 + i), points=[pb.Point(x=1, y=1, label=1)]),
                                timeout=DEADLINE_S)
    ids = []
    try:
        for _ in range(MAX_IMAGE_SESSIONS):
            ids.append(fuzz.seg.OpenImage(pb.OpenImageRequest(image=fuzz.photo_png), timeout=DEADLINE_S).image_id)
    except grpc.RpcError as exc:
        problems.append(f"OpenImage #{len(ids) + 1} of {MAX_IMAGE_SESSIONS} refused after the fuzz (cache full): "
                        f"{exc.code().name} {exc.details()[:200]}")
    if len(ids) == MAX_IMAGE_SESSIONS:
        try:
            ids.append(fuzz.seg.OpenImage(pb.OpenImageRequest(image=fuzz.photo_png), timeout=DEADLINE_S).image_id)
            problems.append(f"OpenImage #{MAX_IMAGE_SESSIONS + 1} accepted over the limit of {MAX_IMAGE_SESSIONS}")
        except grpc.RpcError as exc:
            if exc.code() != Code.RESOURCE_EXHAUSTED:
                problems.append(f"OpenImage over the quota: {exc.code().name} {exc.details()[:200]} "
                                "(RESOURCE_EXHAUSTED expected)")
    for image_id in ids:
        fuzz.seg.CloseImage(pb.CloseImageRequest(image_id=image_id), timeout=DEADLINE_S)
    sessions = []
    try:
        for _ in range(MAX_VIDEO_SESSIONS):
            sessions.append(fuzz.video.StartVideoSession(iter([vpb.VideoFrames(frames=[_raw_frame(8, 8)])]),
                                                         timeout=DEADLINE_S).session_id)
    except grpc.RpcError as exc:
        problems.append(f"StartVideoSession #{len(sessions) + 1} of {MAX_VIDEO_SESSIONS} refused after the fuzz: "
                        f"{exc.code().name} {exc.details()[:200]}")
    if len(sessions) == MAX_VIDEO_SESSIONS:
        try:
            sessions.append(fuzz.video.StartVideoSession(iter([vpb.VideoFrames(frames=[_raw_frame(8, 8)])]),
                                                         timeout=DEADLINE_S).session_id)
            problems.append(f"StartVideoSession #{MAX_VIDEO_SESSIONS + 1} accepted over the limit")
        except grpc.RpcError as exc:
            if exc.code() != Code.RESOURCE_EXHAUSTED:
                problems.append(f"StartVideoSession over the quota: {exc.code().name} {exc.details()[:200]} "
                                "(RESOURCE_EXHAUSTED expected)")
    for session_id in sessions:
        fuzz.video.EndSession(vpb.EndSessionRequest(session_id=session_id), timeout=DEADLINE_S)

    now = fuzz.memory()
    growth = {k: now[k] - fuzz.baseline[k] for k in now}
    print(f"\n{fuzz.calls} fuzz calls; memory baseline {fuzz.baseline}, now {now}")
    if growth["orchestrator_mb"] > ORCHESTRATOR_GROWTH_MB:
        problems.append(f"orchestrator RSS grew {growth['orchestrator_mb']:.0f} MB (bound {ORCHESTRATOR_GROWTH_MB})")
    if growth["triton_mb"] > TRITON_GROWTH_MB:
        problems.append(f"Triton RSS grew {growth['triton_mb']:.0f} MB (bound {TRITON_GROWTH_MB})")
    assert not problems, "\n".join(problems)


def _image_sessions(service) -> tuple[int, int, int]:
    """(explicit, implicit, adopted) image sessions in the orchestrator's registry; adopted: registered
    from an id another replica (or a client) presented, not opened here."""
    images = service.images
    sessions = getattr(images, "_sessions", None)
    if sessions is None:
        sessions = getattr(images, "sessions", None)
    assert sessions is not None, "cannot find the image session registry (service.images._sessions)"
    values = list(sessions.values())
    implicit = sum(1 for s in values if getattr(s, "implicit", False))
    adopted = sum(1 for s in values if getattr(s, "adopted", False) and not getattr(s, "implicit", False))
    return len(values) - implicit - adopted, implicit, adopted


def _video_sessions(service) -> int:
    video = getattr(service, "video", None)
    sessions = getattr(video, "_sessions", None)
    return len(sessions) if sessions is not None else 0


def _replica_load(service) -> int | None:
    replicas = getattr(service.pool, "_replicas", None)
    if not replicas:
        return None
    counts = [getattr(r, "sessions", None) for r in replicas.values()]
    return None if any(c is None for c in counts) else sum(counts)
