"""The fleet's video tracker code path on the CPU: the tracker reaching its five graphs through BLS
(`graphs: bls`; here the graphs are Python models running ONNX Runtime, the fleet's are GPU models),
served end to end against the in-process tracker and transformers' `Sam2VideoModel`; and the
tracker core's array namespace: numpy with reused output buffers, CuPy on a GPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.gpu_check_video_state import compare_on_gpu, run_raw, session_script, state_arrays
from segserve.common.synthetic_video import moving_shapes
from tests.sam2_video_reference import compare, iou, run_reference
from tests.video_tracker_run import run_tracker
from tests.test_video_prompts import served

HW = (96, 128)
FRAMES = 8
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def video_artifacts(family_artifacts) -> Path:
    return family_artifacts("sam2_video")


@pytest.fixture(scope="module")
def config(video_artifacts) -> dict:
    from segserve.export.manifest import Manifest

    return Manifest(video_artifacts).records["sam2_video_decoder"].model_config


@pytest.fixture(scope="module")
def clip():
    return moving_shapes(FRAMES, *HW)


@pytest.fixture(scope="module")
def script(clip):
    return session_script(clip[1], HW)


@pytest.fixture(scope="module")
def graphs(video_artifacts):
    from segserve.triton_models.sam2_video_core import OrtGraphs

    return OrtGraphs.from_artifacts(video_artifacts, threads=1)


# ---- the array-namespace core ------------------------------------------------------------------

class ReusedBuffers:
    """The graphs' outputs written into one buffer per output, overwritten by the next call and
    handed out as read-only views (as a runtime that reuses its output memory would)."""

    def __init__(self, graphs):
        self.graphs = graphs
        self.buffers: dict[tuple[str, str], np.ndarray] = {}

    def run(self, name: str, feeds: dict) -> dict:
        views = {}
        for key, value in self.graphs.run(name, feeds).items():
            buffer = self.buffers.get((name, key))
            if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                buffer = self.buffers[(name, key)] = np.empty_like(value)
            buffer[...] = value
            view = buffer.view()
            view.flags.writeable = False
            views[key] = view
        return views


def test_graph_outputs_are_the_exported_ones(graphs):
    from segserve.triton_models.sam2_video_core import GRAPH_NAMES, GRAPH_OUTPUTS

    assert set(GRAPH_OUTPUTS) == set(GRAPH_NAMES)
    for name in GRAPH_NAMES:
        assert tuple(o.name for o in graphs.sessions[name].get_outputs()) == GRAPH_OUTPUTS[name], name


def test_outputs_as_reused_views_give_identical_results(graphs, config, clip, script):
    """Nothing the tracker keeps aliases a graph's output memory, and it never writes into one."""
    from segserve.triton_models.sam2_video_core import VideoTracker

    frames, _ = clip
    fresh, fresh_session = run_raw(VideoTracker(graphs, config), frames, script)
    reused, session = run_raw(VideoTracker(ReusedBuffers(graphs), config), frames, script)
    assert len(fresh) == len(reused) == 2 + FRAMES
    for a, b in zip(fresh, reused):
        assert a[:2] == b[:2]
        np.testing.assert_array_equal(a[2], b[2])
        np.testing.assert_array_equal(a[3], b[3])
    assert all(type(a) is np.ndarray for a in state_arrays(session))
    assert (session.frame_bytes, session.memory_bytes) == session.recount() == fresh_session.recount()


@pytest.mark.gpu
def test_state_stays_on_the_gpu(video_artifacts):
    """The same session with graph outputs on the GPU: the memory bank is CuPy, the masks equal numpy's."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, or no device
        pytest.skip(f"no CUDA device: {exc}")
    if devices == 0:
        pytest.skip("no CUDA device")
    report = compare_on_gpu(video_artifacts, FRAMES)
    assert report["state_on_gpu"] and report["results_on_host"], report
    assert report["ok"] and not report["mismatched_steps"], report


def test_bls_tracker_never_imports_onnxruntime(config):
    """In the fleet image there is no onnxruntime: the tracker with `graphs: bls` must not need it."""
    code = f"""
import json, sys
from unittest import mock
sys.modules["onnxruntime"] = None  # any import of it fails
sys.modules["triton_python_backend_utils"] = mock.MagicMock()
from segserve.triton_models import sam2_video_tracker
params = {{"graphs": "bls", "video_config": {json.dumps(config)!r}}}
model = sam2_video_tracker.TritonPythonModel()
model.initialize({{"model_name": "sam2_video_tracker", "model_instance_name": "sam2_video_tracker_0",
                   "model_repository": "/nonexistent/sam2_video_tracker",
                   "model_config": json.dumps({{"parameters": {{k: {{"string_value": v}} for k, v in params.items()}}}})}})
print(type(model.tracker.graphs).__name__)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["BlsGraphs"]


# ---- served: the tracker calls its graphs through BLS -------------------------------------------

@pytest.fixture(scope="module")
def bls_stack(video_artifacts, tmp_path_factory):
    from segserve.orchestrator.settings import Settings
    from segserve.repository.builder import build_repository
    from segserve.runtime.stack import start_stack

    repository = tmp_path_factory.mktemp("bls_video_repository")
    build_repository(video_artifacts, repository, "embedded", session_runner="bls", session_ttl_s=120, max_sessions=4,
                     intra_op_threads=1, options={"max_video_objects": 8, "video_intra_op_threads": 1})
    assert 'string_value: "bls"' in (repository / "sam2_video_tracker" / "config.pbtxt").read_text()
    with start_stack(repository, tmp_path_factory.mktemp("bls_video_triton"), Settings()) as running:
        yield running


def _inference_counts(stack) -> dict[str, int]:
    import tritonclient.grpc as grpcclient

    triton = grpcclient.InferenceServerClient(stack.triton.grpc_url)
    try:
        return {m.name: m.inference_count for m in triton.get_inference_statistics().model_stats}
    finally:
        triton.close()


def test_bls_tracker_matches_in_process_and_reference(bls_stack, video_artifacts, config, clip, script):
    from transformers import Sam2VideoModel

    from segserve.client import SegservClient
    from segserve.triton_models.sam2_video_core import GRAPH_NAMES, OrtGraphs, VideoTracker

    frames, _ = clip
    model = Sam2VideoModel.from_pretrained(video_artifacts / "checkpoints" / "sam2-video-random-tiny").eval()
    reference = run_reference(model, frames, script)
    # The comparison means something: every object has a mask of its own on every step.
    assert [f for f, _ in reference] == [0, 2, *range(FRAMES)]
    for frame, objects in reference:
        assert all(m.any() for m in objects.values()), (frame, {k: int(m.sum()) for k, m in objects.items()})
        masks = list(objects.values())
        assert all(not np.array_equal(a, b) for i, a in enumerate(masks) for b in masks[i + 1:]), frame
    assert {k for _, objects in reference for k in objects} == {1, 2, 3, 4}

    # The graph models (`onnx_model`) run ONNX Runtime at its default optimization level, one thread:
    # the in-process tracker on the same arithmetic must give the very same masks.
    in_process = run_tracker(VideoTracker(OrtGraphs.from_artifacts(video_artifacts, threads=1, optimization="all"),
                                          config), frames, script)
    before = _inference_counts(bls_stack)
    with SegservClient(bls_stack.address) as client:
        got = served(client, frames, script)
    after = _inference_counts(bls_stack)

    worst, count = compare(got, in_process)
    assert count == 3 + 4 + 4 * FRAMES and worst == 1.0, worst
    worst, _ = compare(got, reference)
    assert worst >= 0.99, f"worst per-frame IoU against Sam2VideoModel {worst:.4f}"
    # The tracker really called the five graph models.
    assert all(after[name] > before.get(name, 0) for name in GRAPH_NAMES), (before, after)
    for frame, objects in got:
        masks = list(objects.values())
        assert all(iou(a, b) < 1.0 for i, a in enumerate(masks) for b in masks[i + 1:]), frame
