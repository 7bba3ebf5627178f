"""Refusals of the Python models cross Triton as typed codes (`segserve.common.status`), driven
directly through the real embedded Triton with `tritonclient.grpc`: the gRPC status of every refusal,
no code prefix in any message, each refusal logged once in Triton's log; the video tracker's total
byte budget; and a refused or cancelled request never changes a session (also checked in process on
the tracker core)."""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from segserve.common import rle, sam2_transforms, status
from segserve.common.synthetic_video import moving_shapes
from segserve.common.video_ops import TrackerOp

HW = (96, 128)
IMAGE_MODEL_CAP = 2  # the image model's own session cap, below Triton's slots (4)
SHORT_TTL_S = 1.5
PREFIX = re.compile(r"^\s*(INVALID_ARGUMENT|NOT_FOUND|RESOURCE_EXHAUSTED|FAILED_PRECONDITION|CANCELLED|INTERNAL|"
                    r"UNAVAILABLE|UNIMPLEMENTED)\b")


def _edit_config(folder: Path, edit) -> None:
    path = folder / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    edit(config)
    path.write_text(text_format.MessageToString(config))


def _refusal(call) -> tuple[str, str]:
    """(gRPC status name, message) of a refused call."""
    with pytest.raises(InferenceServerException) as info:
        call()
    name = str(info.value.status()).rpartition(".")[2]
    message = info.value.message() or ""
    assert not PREFIX.match(message), f"code prefix in {message!r}"
    return name, message


def _tensor(name: str, array: np.ndarray, dtype: str) -> grpcclient.InferInput:
    value = grpcclient.InferInput(name, list(array.shape), dtype)
    value.set_data_from_numpy(array)
    return value


def _log_has(triton, pattern: str, timeout_s: float = 10.0) -> bool:
    """Python-backend log lines reach Triton's log asynchronously."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if re.search(pattern, triton.log_path.read_text(errors="replace")):
            return True
        time.sleep(0.2)
    return False


# ---- image sessions ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_triton(sam2_artifacts, tmp_path_factory):
    """`sam2_image_session` with its own cap (2) below Triton's sequence slots (4), and a copy,
    `sam2_image_session_short`, whose model TTL is 1.5 s (Triton's idle limit stays a margin above)."""
    from segserve.repository.builder import build_repository
    from segserve.runtime.triton import EmbeddedTriton, free_port

    repository = tmp_path_factory.mktemp("errors_repository")
    build_repository(sam2_artifacts, repository, "embedded", session_ttl_s=600, max_sessions=4, intra_op_threads=1)
    short = tmp_path_factory.mktemp("errors_short_ttl")
    build_repository(sam2_artifacts, short, "embedded", session_ttl_s=SHORT_TTL_S, max_sessions=4, intra_op_threads=1)
    shutil.copytree(short / "sam2_image_session", repository / "sam2_image_session_short")

    def rename(config):
        config.name = "sam2_image_session_short"

    def cap(config):
        config.parameters["max_sessions"].string_value = str(IMAGE_MODEL_CAP)

    _edit_config(repository / "sam2_image_session_short", rename)
    _edit_config(repository / "sam2_image_session", cap)
    triton = EmbeddedTriton(repository, tmp_path_factory.mktemp("errors_triton"), grpc_port=free_port(),
                            http_port=free_port(), metrics_port=free_port(), log_verbose=1)
    with triton:
        yield triton


@pytest.fixture()
def image_client(image_triton):
    client = grpcclient.InferenceServerClient(image_triton.grpc_url)
    yield client
    client.close()


def _image_call(client, corrid: int, image: np.ndarray | None = None, points=None, labels=None,
                start: bool = False, end: bool = False, model: str = "sam2_image_session"):
    inputs = []
    if image is not None:
        inputs.append(_tensor("IMAGE", image[None], "UINT8"))
    if points is not None:
        inputs += [_tensor("POINT_COORDS", np.asarray(points, np.float32)[None], "FP32"),
                   _tensor("POINT_LABELS", np.asarray(labels, np.int32)[None], "INT32")]
    outputs = [grpcclient.InferRequestedOutput(n) for n in (["IMAGE_SIZE", "SCORES"] if points is not None else ["IMAGE_SIZE"])]
    return client.infer(model, inputs, outputs=outputs, sequence_id=corrid, sequence_start=start, sequence_end=end)


def _close(client, corrid: int, model: str = "sam2_image_session") -> None:
    try:
        _image_call(client, corrid, end=True, model=model)
    except InferenceServerException:
        pass  # already gone: that is what closing wants


def test_image_session_refusals_are_typed(image_triton, image_client, photo):
    client = image_client
    # IMAGE missing on START: the model's INVALID_ARGUMENT ...
    code, message = _refusal(lambda: _image_call(client, 101, start=True))
    assert code == "INVALID_ARGUMENT" and "IMAGE" in message
    # ... and Triton now holds sequence 101 but the model does not: NOT_FOUND, from the model.
    code, message = _refusal(lambda: _image_call(client, 101, points=[[[10.0, 10.0]]], labels=[[1]]))
    assert code == "NOT_FOUND" and "does not hold" in message
    _close(client, 101)
    # An id Triton never saw started is refused by Triton's sequence batcher itself.
    code, _ = _refusal(lambda: _image_call(client, 102, points=[[[10.0, 10.0]]], labels=[[1]]))
    assert code == "INVALID_ARGUMENT"

    # A bad POINT_COORDS / POINT_LABELS pairing: INVALID_ARGUMENT, and the session is unharmed.
    assert _image_call(client, 103, photo, start=True).as_numpy("IMAGE_SIZE").reshape(-1).tolist() == list(photo.shape[:2])
    code, message = _refusal(lambda: _image_call(client, 103, points=[[[10.0, 10.0], [20.0, 20.0]]], labels=[[1]]))
    assert code == "INVALID_ARGUMENT" and "POINT_LABELS" in message
    assert _image_call(client, 103, points=[[[10.0, 10.0]]], labels=[[1]]).as_numpy("SCORES").size > 0
    # The same on a START: refused before the encoder runs, and no session is left behind.
    code, _ = _refusal(lambda: _image_call(client, 104, photo, points=[[[1.0, 1.0]]], labels=[[1, 1]], start=True))
    assert code == "INVALID_ARGUMENT"
    code, _ = _refusal(lambda: _image_call(client, 104, points=[[[1.0, 1.0]]], labels=[[1]]))
    assert code == "NOT_FOUND"
    _close(client, 104)

    # Too many sessions: RESOURCE_EXHAUSTED travels as UNAVAILABLE (Triton has no such code).
    _image_call(client, 105, photo, start=True)  # 103 and 105 open: the model's cap
    code, message = _refusal(lambda: _image_call(client, 106, photo, start=True))
    assert code == "UNAVAILABLE" and "image sessions" in message
    assert status.code_from_model(code) == status.RESOURCE_EXHAUSTED
    for corrid in (103, 105, 106):
        _close(client, corrid)
    _image_call(client, 107, photo, start=True)  # capacity is back
    _close(client, 107)

    # Each refusal is logged once: capacity at info, client mistakes at verbose.
    assert _log_has(image_triton, r"sam2_image_session \(sequence 106\): refused RESOURCE_EXHAUSTED: this instance")
    assert _log_has(image_triton, r"sam2_image_session \(sequence 101\): refused NOT_FOUND")
    assert _log_has(image_triton, r"sam2_image_session \(sequence 103\): refused INVALID_ARGUMENT: POINT_COORDS")
    log = image_triton.log_path.read_text(errors="replace")
    assert len(re.findall(r"\(sequence 106\): refused RESOURCE_EXHAUSTED", log)) == 1


def test_a_failure_inside_a_model_is_internal_and_logged(image_triton, image_client):
    """ONNX Runtime fails on points and labels of different lengths (the decoder's signature allows
    both): that request is INTERNAL, with the exception's traceback in Triton's log at error level."""
    feeds = {"has_mask_input": np.zeros(1, np.float32), "high_res_feats_0": np.zeros((1, 8, 256, 256), np.float32),
             "high_res_feats_1": np.zeros((1, 16, 128, 128), np.float32),
             "image_embeddings": np.zeros((1, 64, 64, 64), np.float32),
             "mask_input": np.zeros((1, 1, 256, 256), np.float32), "point_coords": np.zeros((1, 2, 2), np.float32),
             "point_labels": np.ones((1, 3), np.int32)}
    inputs = [_tensor(k, v, "INT32" if v.dtype == np.int32 else "FP32") for k, v in feeds.items()]
    code, message = _refusal(lambda: image_client.infer("sam2_prompt_decoder", inputs))
    assert code == "INTERNAL" and message.startswith("sam2_prompt_decoder failed: ")
    assert _log_has(image_triton, r"\nE\d{4} [^\n]*\"sam2_prompt_decoder: internal error\\nTraceback")


def test_expired_session_is_not_found_from_the_model(image_triton, image_client, photo):
    """The model evicts at its TTL; Triton's idle limit is a margin above it, so the next request
    still reaches the model, which answers NOT_FOUND (not Triton's INVALID_ARGUMENT)."""
    from segserve.repository.description import sequence_idle_s

    config = image_client.get_model_config("sam2_image_session_short", as_json=True)["config"]
    assert float(config["parameters"]["session_ttl_s"]["string_value"]) == SHORT_TTL_S
    idle_us = int(config["sequence_batching"]["max_sequence_idle_microseconds"])
    assert idle_us == int(sequence_idle_s(SHORT_TTL_S) * 1e6) and idle_us >= (SHORT_TTL_S + 60) * 1e6
    model = "sam2_image_session_short"
    _image_call(image_client, 201, photo, start=True, model=model)
    time.sleep(SHORT_TTL_S + 1.0)
    code, message = _refusal(lambda: _image_call(image_client, 201, points=[[[5.0, 5.0]]], labels=[[1]], model=model))
    assert code == "NOT_FOUND" and "expired" in message
    _close(image_client, 201, model)
    assert _log_has(image_triton, r"sam2_image_session_short: sequence 201 expired")


# ---- video tracker ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def video_artifacts(family_artifacts) -> Path:
    return family_artifacts("sam2_video")


@pytest.fixture(scope="module")
def clip():
    frames, centres = moving_shapes(6, *HW)
    return frames, centres


def _tracker(video_artifacts, **caps):
    from segserve.export.manifest import Manifest
    from segserve.triton_models.sam2_video_core import OrtGraphs, VideoTracker

    config = Manifest(video_artifacts).records["sam2_video_decoder"].model_config
    return VideoTracker(OrtGraphs.from_artifacts(video_artifacts, threads=1), config, **caps)


def _point(tracker, centre) -> tuple[np.ndarray, np.ndarray]:
    coords = sam2_transforms.to_model_coords(np.array([centre], np.float32), HW, tracker.image_size)
    return coords.astype(np.float32), np.array([1], np.int32)


def _snapshot(session) -> dict:
    """Everything a request could change in a session (by identity for stored outputs)."""
    return {
        "frames": len(session.frames), "bytes": (session.frame_bytes, session.memory_bytes),
        "new_inputs": list(session.new_inputs),
        "objects": [(o.obj_id, {f: (p[0].tolist(), p[1].tolist()) for f, p in o.points.items()}, sorted(o.masks),
                     {f: id(v) for f, v in o.cond.items()}, {f: id(v) for f, v in o.non_cond.items()}, dict(o.tracked))
                    for o in session.objects],
    }


@pytest.fixture(scope="module")
def output_sizes(video_artifacts, clip):
    """Bytes one conditioning / one tracked output adds to a session's memory bank (tiny model)."""
    from segserve.triton_models.sam2_video_core import VideoSession

    frames, centres = clip
    tracker = _tracker(video_artifacts)
    session = VideoSession()
    tracker.add_frames(session, list(frames[:3]))
    tracker.add_prompts(session, 0, [1], [_point(tracker, centres[1][0])])
    cond = session.memory_bytes
    tracker.step(session, 1)
    return cond, session.memory_bytes - cond


def test_tracker_core_refusals_leave_the_session_unchanged(video_artifacts, clip, output_sizes):
    from segserve.common.status import ModelRefusal
    from segserve.triton_models.sam2_video_core import VideoSession

    frames, centres = clip
    cond, tracked = output_sizes
    frame = frames[0].nbytes
    sessions: list[VideoSession] = []
    budget = 4 * frame + 2 * cond + tracked - 1  # room for the frames and two prompts, not for the step after
    tracker = _tracker(video_artifacts, max_total_bytes=budget, held_bytes=lambda: sum(s.held_bytes for s in sessions))
    reference = _tracker(video_artifacts)
    a, ref = VideoSession(), VideoSession()
    sessions.append(a)
    tracker.add_frames(a, list(frames[:4]))
    reference.add_frames(ref, list(frames[:4]))

    def refused(code, call):
        before = _snapshot(a)
        with pytest.raises(ModelRefusal) as info:
            call()
        assert info.value.code == code
        assert _snapshot(a) == before and a.recount() == (a.frame_bytes, a.memory_bytes)
        return info.value.message

    # a refused prompt (frame out of range, bad points, cancelled) changes nothing
    refused(status.INVALID_ARGUMENT, lambda: tracker.add_prompts(a, 4, [1], [_point(tracker, centres[1][0])]))
    refused(status.INVALID_ARGUMENT, lambda: tracker.add_prompts(a, 0, [1], [(np.zeros((1, 3), np.float32), np.ones(1, np.int32))]))
    refused(status.CANCELLED, lambda: tracker.add_prompts(a, 0, [1, 2], [_point(tracker, centres[1][0]),
                                                                         _point(tracker, centres[2][0])], cancelled=lambda: True))
    tracker.add_prompts(a, 0, [1], [_point(tracker, centres[1][0])])
    reference.add_prompts(ref, 0, [1], [_point(tracker, centres[1][0])])
    # a second prompt on another frame fits; the step after it would not
    tracker.add_prompts(a, 2, [1], [_point(tracker, centres[1][2])])
    reference.add_prompts(ref, 2, [1], [_point(tracker, centres[1][2])])
    assert a.recount() == (a.frame_bytes, a.memory_bytes) == (4 * frame, 2 * cond)
    assert "budget" in refused(status.RESOURCE_EXHAUSTED, lambda: tracker.add_frames(a, [frames[4]]))
    assert "budget" in refused(status.RESOURCE_EXHAUSTED, lambda: tracker.step(a, 1))
    # a prompt for a new object: its step is refused, the object and its prompt are not kept
    refused(status.RESOURCE_EXHAUSTED, lambda: tracker.add_prompts(a, 3, [2], [_point(tracker, centres[2][3])]))
    assert [o.obj_id for o in a.objects] == [1]
    refused(status.INVALID_ARGUMENT, lambda: tracker.remove_object(a, 9))  # NOT_FOUND means "no such session"
    # more budget: the same steps now give exactly what a session that was never refused gives
    tracker.max_total_bytes = None
    for index in (1, 3):
        ours, theirs = tracker.step(a, index), reference.step(ref, index)
        assert np.array_equal(ours.low_res_masks, theirs.low_res_masks)
        assert np.array_equal(ours.object_scores, theirs.object_scores)
    assert a.recount() == (a.frame_bytes, a.memory_bytes) == ref.recount()
    tracker.remove_object(a, 1)
    assert a.memory_bytes == 0 and a.recount() == (4 * frame, 0)


@pytest.fixture(scope="module")
def video_triton(video_artifacts, clip, output_sizes, tmp_path_factory):
    """A tracker whose total budget holds 5 frames, one conditioning output and not quite one
    tracked output."""
    from segserve.repository.builder import build_repository
    from segserve.runtime.triton import EmbeddedTriton, free_port

    cond, tracked = output_sizes
    budget = 5 * clip[0][0].nbytes + cond + tracked - 1
    repository = tmp_path_factory.mktemp("errors_video_repository")
    build_repository(video_artifacts, repository, "embedded", session_ttl_s=600, max_sessions=4,
                     options={"max_video_total_bytes": budget, "video_intra_op_threads": 1}, intra_op_threads=1)
    triton = EmbeddedTriton(repository, tmp_path_factory.mktemp("errors_video_triton"), grpc_port=free_port(),
                            http_port=free_port(), metrics_port=free_port(), log_verbose=1)
    with triton:
        yield triton


TRACK_OUTPUTS = ["NUM_FRAMES", "OUT_OBJ_IDS", "OUT_FRAME_INDEX", "OBJECT_SCORES", "MASKS_RLE"]


def _track(client, corrid: int, op: TrackerOp, *, frames=None, frame_index=None, obj_ids=None, points=None, labels=None,
           start=False, end=False, outputs=("NUM_FRAMES",)):
    inputs = [_tensor("OP", np.array([[op]], np.int32), "INT32")]
    if frames is not None:
        inputs.append(_tensor("FRAMES", np.asarray(frames, np.uint8)[None], "UINT8"))
    if frame_index is not None:
        inputs.append(_tensor("FRAME_INDEX", np.array([[frame_index]], np.int32), "INT32"))
    if obj_ids is not None:
        inputs.append(_tensor("OBJ_IDS", np.array([obj_ids], np.int64), "INT64"))
    if points is not None:
        inputs += [_tensor("POINT_COORDS", np.asarray(points, np.float32)[None], "FP32"),
                   _tensor("POINT_LABELS", np.asarray(labels, np.int32)[None], "INT32")]
    return client.infer("sam2_video_tracker", inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in outputs],
                        sequence_id=corrid, sequence_start=start, sequence_end=end)


def test_tracker_refusals_and_total_budget(video_triton, video_artifacts, clip, output_sizes):
    from segserve.triton_models.sam2_video_core import VideoSession

    frames, centres = clip
    client = grpcclient.InferenceServerClient(video_triton.grpc_url)
    config = client.get_model_config("sam2_video_tracker", as_json=True)["config"]["parameters"]
    cond, tracked = output_sizes
    assert int(config["max_total_bytes"]["string_value"]) == 5 * frames[0].nbytes + cond + tracked - 1
    reference = _tracker(video_artifacts)
    point = _point(reference, centres[1][0])
    try:
        # FRAMES missing on START: INVALID_ARGUMENT; the sequence Triton then holds is NOT_FOUND in the model
        code, _ = _refusal(lambda: _track(client, 301, TrackerOp.FRAMES, start=True))
        assert code == "INVALID_ARGUMENT"
        code, message = _refusal(lambda: _track(client, 301, TrackerOp.INFO))
        assert code == "NOT_FOUND" and "does not hold the video session" in message
        _refusal(lambda: _track(client, 301, TrackerOp.INFO, end=True))

        assert _track(client, 302, TrackerOp.FRAMES, frames=frames[:3], start=True).as_numpy("NUM_FRAMES").item() == 3
        assert _track(client, 303, TrackerOp.FRAMES, frames=frames[3:5], start=True).as_numpy("NUM_FRAMES").item() == 2
        # frame out of range
        code, message = _refusal(lambda: _track(client, 302, TrackerOp.PROMPT, frame_index=3, obj_ids=[1],
                                                points=point[0][None], labels=point[1][None]))
        assert code == "INVALID_ARGUMENT" and "frame_index 3" in message
        # an unknown object is INVALID_ARGUMENT: the tracker's only NOT_FOUND is a missing session
        code, _ = _refusal(lambda: _track(client, 302, TrackerOp.REMOVE, obj_ids=[9]))
        assert code == "INVALID_ARGUMENT"
        prompted = _track(client, 302, TrackerOp.PROMPT, frame_index=0, obj_ids=[1], points=point[0][None],
                          labels=point[1][None], outputs=TRACK_OUTPUTS)
        # over the total budget: more frames, and a step that grows the memory bank
        code, message = _refusal(lambda: _track(client, 302, TrackerOp.FRAMES, frames=frames[5:6]))
        assert code == "UNAVAILABLE" and status.code_from_model(code) == status.RESOURCE_EXHAUSTED and "budget" in message
        code, _ = _refusal(lambda: _track(client, 302, TrackerOp.STEP, frame_index=1, outputs=TRACK_OUTPUTS))
        assert code == "UNAVAILABLE"
        assert _track(client, 302, TrackerOp.INFO).as_numpy("NUM_FRAMES").item() == 3
        # another session ends: its bytes are free, and the refused step now runs on an unchanged session
        _track(client, 303, TrackerOp.INFO, end=True)
        stepped = _track(client, 302, TrackerOp.STEP, frame_index=1, outputs=TRACK_OUTPUTS)

        session = VideoSession()
        reference.add_frames(session, list(frames[:3]))
        for result, expected in ((prompted, reference.add_prompts(session, 0, [1], [point])),
                                 (stepped, reference.step(session, 1))):
            binary = sam2_transforms.masks_from_logits(expected.low_res_masks, HW)
            assert [c.decode() for c in result.as_numpy("MASKS_RLE").reshape(-1)] == [rle.encode(m)["counts"] for m in binary]
            assert np.array_equal(result.as_numpy("OBJECT_SCORES").reshape(-1), expected.object_scores)
        _track(client, 302, TrackerOp.INFO, end=True)
        code, _ = _refusal(lambda: _track(client, 302, TrackerOp.INFO))  # ended: Triton refuses a non-START request
        assert code == "INVALID_ARGUMENT"
        assert _log_has(video_triton, r"sam2_video_tracker \(sequence 302\): refused RESOURCE_EXHAUSTED: .*budget")
        assert _log_has(video_triton, r"sam2_video_tracker \(sequence 301\): refused NOT_FOUND")
    finally:
        for corrid in (301, 302, 303):
            try:
                _track(client, corrid, TrackerOp.INFO, end=True)
            except InferenceServerException:
                pass
        client.close()
