"""Locust users for segserve over gRPC.

Run through `loadtests/run.py` (`make load`), or by hand against any orchestrator:

    timeout -s KILL 120 locust -f loadtests/locustfile.py --headless -u 8 -r 4 -t 60s \
        --host 127.0.0.1:50051 --stop-timeout 10

`--host` (or SEGSERVE_LOAD_HOST) is the orchestrator's gRPC address, with or without `grpc://`.

The mix models an interactive annotation tool:
- `InteractiveImageUser` (most users): opens an image once (`OpenImage`, the encoder runs once),
  then clicks many times on its image_id (`MaskFromPrompt` with points, boxes, points + box, and
  refinements that send back the previous low-res logits), now and then moves on to the next
  image (`CloseImage` + `OpenImage`), and closes its image when it stops.
- `CachedImageUser`: a stateless client that sends image bytes with every `MaskFromPrompt` (the
  orchestrator's embedding cache by content); it mostly stays on one image.
- `PanopticUser`: whole-image `Segment` (mostly panoptic) with Mask2Former.
- `TextToMaskUser`: an occasional text query (`MaskFromPrompt` with `text`, sometimes `Detect`)
  with Grounding DINO.
- `VideoUser`: short tracking sessions (`StartVideoSession`, `AddPrompts`, the `Propagate` stream
  read whole, `EndSession`) with SAM 2 video.
Users whose model family the server does not list (`GetModelInfo`) are left out of the mix.

Each call is reported to Locust's `events.request` under the RPC's name (request_type "grpc"),
with the response's serialized size as the response length and the gRPC error as the exception.
"""
from __future__ import annotations

# gRPC must be switched to gevent before any channel exists (Locust has already monkey-patched
# the standard library by the time it imports this file).
import grpc
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

import io  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import lru_cache  # noqa: E402

import numpy as np  # noqa: E402
from locust import User, between, events, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402
from PIL import Image  # noqa: E402

from segserve.api import load as load_api  # noqa: E402
from segserve.api import pb, pb_grpc  # noqa: E402

vpb, vpb_grpc = load_api("video")

log = logging.getLogger("segserve.loadtest")

MAX_MESSAGE = 65 << 20
RPC_TIMEOUT_S = float(os.environ.get("SEGSERVE_LOAD_RPC_TIMEOUT", "120"))
# Photos shipped with scikit-image, each at a few sizes (scale factors of the original).
PHOTOS = ("astronaut", "coffee", "chelsea")
SCALES = tuple(float(s) for s in os.environ.get("SEGSERVE_LOAD_SCALES", "0.5,1.0,1.6").split(","))


# ----------------------------------------------------------------------------- test images


@dataclass(frozen=True)
class TestImage:
    name: str
    width: int
    height: int
    data: bytes  # encoded as a client would send it (JPEG or PNG)


@lru_cache(maxsize=1)
def test_images() -> tuple[TestImage, ...]:
    from skimage import data

    images = []
    for i, photo in enumerate(PHOTOS):
        rgb = np.ascontiguousarray(getattr(data, photo)()[..., :3])
        for j, scale in enumerate(SCALES):
            height, width = max(16, round(rgb.shape[0] * scale)), max(16, round(rgb.shape[1] * scale))
            pil = Image.fromarray(rgb).resize((width, height), Image.BILINEAR) if scale != 1.0 else Image.fromarray(rgb)
            buffer = io.BytesIO()
            fmt = "PNG" if (i + j) % 3 == 0 else "JPEG"  # mostly JPEG, like camera uploads
            pil.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            images.append(TestImage(f"{photo}@{width}x{height}.{fmt.lower()}", width, height, buffer.getvalue()))
    return tuple(images)


# ----------------------------------------------------------------------------- random prompts


def random_point(image: TestImage, label: int | None = None) -> pb.Point:
    if label is None:
        label = 1 if random.random() < 0.8 else 0
    return pb.Point(x=random.uniform(0, image.width - 1), y=random.uniform(0, image.height - 1), label=label)


def random_box(image: TestImage) -> pb.Box:
    w = random.uniform(0.1, 0.9) * image.width
    h = random.uniform(0.1, 0.9) * image.height
    x0 = random.uniform(0, image.width - w)
    y0 = random.uniform(0, image.height - h)
    return pb.Box(x0=x0, y0=y0, x1=x0 + w, y1=y0 + h)


def random_prompt(image: TestImage) -> dict:
    """Prompt fields of a MaskFromPromptRequest: mostly clicks, some boxes, a few multi-object."""
    kind = random.choices(("click", "clicks", "box", "point_and_box", "boxes"), (45, 20, 20, 10, 5))[0]
    if kind == "click":
        return {"points": [random_point(image, 1)]}
    if kind == "clicks":
        return {"points": [random_point(image) for _ in range(random.randint(2, 5))]}
    if kind == "box":
        return {"boxes": [random_box(image)]}
    if kind == "point_and_box":
        return {"points": [random_point(image, 1)], "boxes": [random_box(image)]}
    return {"boxes": [random_box(image) for _ in range(random.randint(2, 4))]}


# ----------------------------------------------------------------------------- the gRPC client


class GrpcClient:
    """A channel + stub whose calls are reported to Locust (name = the RPC's name)."""

    def __init__(self, address: str, environment):
        self.address = address.removeprefix("grpc://")
        self.environment = environment
        self.channel = grpc.insecure_channel(self.address, options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                                                    ("grpc.max_send_message_length", MAX_MESSAGE)])
        self.stub = pb_grpc.SegmentationStub(self.channel)
        self.last_error: BaseException | None = None

    def call(self, rpc: str, request, name: str | None = None, check=None, rpc_stub=None, stream: bool = False):
        """Call `rpc` (on `rpc_stub`, default the Segmentation stub), report it, and return the
        response (None when it failed); a server stream (`stream`) is read whole into a list.

        `check(response)` may return an error message: the call is then reported as a failure."""
        start = time.perf_counter()
        response, exception = None, None
        try:
            response = getattr(rpc_stub or self.stub, rpc)(request, timeout=RPC_TIMEOUT_S)
            if stream:
                response = list(response)
            problem = check(response) if check else None
            if problem:
                exception = AssertionError(problem)
        except grpc.RpcError as exc:
            exception = exc
        elapsed_ms = (time.perf_counter() - start) * 1000
        self.last_error = exception
        self.environment.events.request.fire(
            request_type="grpc", name=name or rpc, response_time=elapsed_ms,
            response_length=_size(response),
            response=response, context={}, exception=exception)
        return None if exception is not None else response

    def close(self) -> None:
        self.channel.close()


def _size(response) -> int:
    if response is None:
        return 0
    return sum(m.ByteSize() for m in response) if isinstance(response, list) else response.ByteSize()


def rpc_error_text(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


def _check_masks(expected_objects: int):
    def check(response: pb.MaskFromPromptResponse) -> str | None:
        if len(response.objects) != expected_objects:
            return f"expected {expected_objects} objects, got {len(response.objects)}"
        if any(not obj.masks or not obj.masks[0].rle.counts for obj in response.objects):
            return "an object without an RLE mask"
        return None
    return check


def _objects(prompt: dict) -> int:
    return max(1, len(prompt.get("boxes", ())))


class SegservUser(User):
    abstract = True
    family = "sam2"  # the model family the user needs; users whose family is not served are dropped
    wait_time = between(0.2, 1.0)  # think time between clicks

    def on_start(self):
        host = self.host or os.environ.get("SEGSERVE_LOAD_HOST", "127.0.0.1:50051")
        self.client = GrpcClient(host, self.environment)

    def on_stop(self):
        self.client.close()


# ----------------------------------------------------------------------------- users


class InteractiveImageUser(SegservUser):
    """Open an image once, click on it many times, move on to the next image now and then."""

    weight = 6

    def on_start(self):
        super().on_start()
        self.image: TestImage | None = None
        self.image_id = ""
        self.logits: pb.LowResLogits | None = None
        self.open_next()

    def on_stop(self):
        try:
            self.close_current()
        finally:
            super().on_stop()

    def open_next(self) -> None:
        self.image = random.choice(test_images())
        self.logits = None
        response = self.client.call("OpenImage", pb.OpenImageRequest(image=self.image.data),
                                    check=self._check_open)
        self.image_id = response.image_id if response is not None else ""

    def _check_open(self, response: pb.OpenImageResponse) -> str | None:
        if not response.image_id:
            return "no image_id"
        if (response.width, response.height) != (self.image.width, self.image.height):
            return f"size {response.width}x{response.height}, sent {self.image.width}x{self.image.height}"
        return None

    def close_current(self) -> None:
        if self.image_id:
            self.client.call("CloseImage", pb.CloseImageRequest(image_id=self.image_id))
            self.image_id = ""

    def _ensure_open(self) -> bool:
        if not self.image_id:  # the last OpenImage failed (already reported): try again
            self.open_next()
        return bool(self.image_id)

    @task(20)
    def click(self):
        """A click, clicks, a box or several boxes on the open image."""
        if not self._ensure_open():
            return
        prompt = random_prompt(self.image)
        request = pb.MaskFromPromptRequest(image_id=self.image_id, multimask_output=random.random() < 0.5,
                                           return_low_res_logits=True, **prompt)
        response = self.client.call("MaskFromPrompt", request, check=_check_masks(_objects(prompt)))
        if response is not None and response.objects[0].low_res_logits:
            self.logits = response.objects[0].low_res_logits[0]

    @task(5)
    def refine(self):
        """A corrective click that sends back the previous mask's low-res logits."""
        if not self._ensure_open():
            return
        if self.logits is None:
            return self.click()
        request = pb.MaskFromPromptRequest(image_id=self.image_id, points=[random_point(self.image)],
                                           mask_input=self.logits, return_low_res_logits=True)
        response = self.client.call("MaskFromPrompt", request, name="MaskFromPrompt[refine]",
                                    check=_check_masks(1))
        if response is not None:
            self.logits = response.objects[0].low_res_logits[0]

    @task(1)
    def next_image(self):
        """About one image per 25 prompts: close this one, open another."""
        self.close_current()
        self.open_next()


class CachedImageUser(SegservUser):
    """Stateless client: image bytes with every prompt (the embedding cache path)."""

    weight = 2

    def on_start(self):
        super().on_start()
        self.image = random.choice(test_images())

    @task(10)
    def prompt(self):
        prompt = random_prompt(self.image)
        request = pb.MaskFromPromptRequest(image=self.image.data, multimask_output=random.random() < 0.3, **prompt)
        self.client.call("MaskFromPrompt", request, name="MaskFromPrompt[bytes]", check=_check_masks(_objects(prompt)))

    @task(1)
    def switch_image(self):
        self.image = random.choice(test_images())


TASKS = {"panoptic": pb.SEGMENT_TASK_PANOPTIC, "semantic": pb.SEGMENT_TASK_SEMANTIC,
         "instance": pb.SEGMENT_TASK_INSTANCE}


class PanopticUser(SegservUser):
    """Whole-image Segment (Mask2Former); removed from the mix when the server lacks it."""

    weight = 1
    family = "mask2former"
    wait_time = between(1.0, 3.0)

    @task
    def segment(self):
        image = random.choice(test_images())
        kind = random.choices(("panoptic", "semantic", "instance"), (6, 2, 2))[0]
        request = pb.SegmentRequest(image=image.data, task=TASKS[kind],
                                    label_map_format=random.choice((pb.LABEL_MAP_FORMAT_PNG, pb.LABEL_MAP_FORMAT_RLE)))
        response = self.client.call("Segment", request, name=f"Segment[{kind}]",
                                    check=lambda r: None if (r.width, r.height) == (image.width, image.height)
                                    else f"size {r.width}x{r.height}, sent {image.width}x{image.height}")
        error = self.client.last_error
        if response is None and isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNIMPLEMENTED:
            # The server has no Mask2Former after all: reported once (a failure), then this user stops.
            log.warning("Segment is UNIMPLEMENTED on this server: PanopticUser stops")
            raise StopUser()


class TextToMaskUser(SegservUser):
    """An occasional open-vocabulary query: image bytes + text through the `text_to_mask` ensemble
    (Grounding DINO -> SAM 2); now and then boxes only (`Detect`). Needs Grounding DINO."""

    weight = 1
    wait_time = between(1.0, 3.0)
    family = "grounding_dino"
    QUERIES = ("a person. a cup.", "a cat.", "a rocket. a flag. a helmet.", "an animal. a plant. a chair.")

    @task(4)
    def text_to_mask(self):
        image = random.choice(test_images())
        request = pb.MaskFromPromptRequest(image=image.data, text=random.choice(self.QUERIES), max_objects=5)
        self.client.call("MaskFromPrompt", request, name="MaskFromPrompt[text]", check=self._check_objects)

    @task(1)
    def detect(self):
        image = random.choice(test_images())
        self.client.call("Detect", pb.DetectRequest(image=image.data, text=random.choice(self.QUERIES)))

    @staticmethod
    def _check_objects(response: pb.MaskFromPromptResponse) -> str | None:
        if len(response.objects) > 5:
            return f"max_objects 5, got {len(response.objects)}"
        if any(not obj.phrase or not obj.masks for obj in response.objects):
            return "a detected object without its phrase or mask"
        return None


class VideoUser(SegservUser):
    """A short tracking session: upload a clip, click an object (or two) on the first frame,
    propagate (the whole server stream is reported as one `Propagate` request), end."""

    weight = 1
    wait_time = between(2.0, 5.0)
    family = "sam2_video"
    FRAMES = 6

    def on_start(self):
        super().on_start()
        self.video = vpb_grpc.VideoTrackingStub(self.client.channel)

    @task
    def track(self):
        frames, centres = video_clip(self.FRAMES)
        height, width = frames.shape[1:3]
        messages = [vpb.VideoFrames(frames=[vpb.Frame(raw=vpb.RawFrame(width=width, height=height, rgb=f.tobytes()))
                                            for f in frames])]
        info = self.client.call("StartVideoSession", iter(messages), rpc_stub=self.video,
                                check=lambda r: None if r.num_frames == len(frames) else f"{r.num_frames} frames")
        if info is None:
            return
        try:
            objects = [vpb.ObjectPrompt(object_id=obj_id, points=[pb.Point(x=float(c[0][0]), y=float(c[0][1]), label=1)])
                       for obj_id, c in list(centres.items())[:random.randint(1, 2)]]
            self.client.call("AddPrompts", vpb.AddPromptsRequest(session_id=info.session_id, frame_index=0,
                                                                 objects=objects), rpc_stub=self.video,
                             check=lambda r: None if len(r.objects) == len(objects) else "objects missing")
            self.client.call("Propagate", vpb.PropagateRequest(session_id=info.session_id), rpc_stub=self.video,
                             stream=True, check=lambda frames_: None if len(frames_) == len(frames)
                             else f"{len(frames_)} of {len(frames)} frames")
        finally:
            self.client.call("EndSession", vpb.EndSessionRequest(session_id=info.session_id), rpc_stub=self.video)


@lru_cache(maxsize=4)
def video_clip(frames: int):
    from segserve.common.synthetic_video import moving_shapes

    return moving_shapes(frames)


# ----------------------------------------------------------------------------- the mix


def server_families(address: str) -> set[str] | None:
    """Model families the server reports (None when it cannot be asked)."""
    channel = grpc.insecure_channel(address.removeprefix("grpc://"))
    try:
        reply = pb_grpc.SegmentationStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        return {m.family for m in reply.models}
    except grpc.RpcError as exc:
        log.warning("GetModelInfo failed (%s): keeping the configured user classes", rpc_error_text(exc))
        return None
    finally:
        channel.close()


@events.init.add_listener
def _drop_unserved_users(environment, **_kwargs):
    """Remove users whose model family the server does not report (before any user is spawned)."""
    host = environment.host or os.environ.get("SEGSERVE_LOAD_HOST", "127.0.0.1:50051")
    families = server_families(host)
    if families is None:
        return
    unserved = [cls for cls in environment.user_classes if cls.family not in families]
    if unserved and len(unserved) < len(environment.user_classes):
        log.info("server families %s: leaving out %s", sorted(families), [cls.__name__ for cls in unserved])
        for cls in unserved:
            environment.user_classes.remove(cls)
