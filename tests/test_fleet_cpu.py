"""Proof on CPU that a fleet pod loads and answers, for every family.

The fleet repository (`build-repo --target fleet`: graphs on Triton's onnxruntime backend, KIND_GPU)
is served by the embedded tritonserver of the fleet image's Triton release, its Python models on the
image's Python (3.10 for NGC 24.10) with exactly requirements/triton.txt and the image's copy of the
segserve runtime (`fleet_image.fleet_python`); only the graph models are swapped for CPU stand-ins of
identical I/O, batching and instance count. Every family is compared end to end, through the
orchestrator's gRPC API, with its PyTorch reference on tiny random checkpoints. What stays unproven
here: the GPU, TensorRT, Triton's own onnxruntime backend and the NGC image itself.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

from segserve.runtime import fleet_image  # noqa: E402
from tests import automask_reference, sam2_reference  # noqa: E402
from tests.conftest import TEST_ID_KEY  # noqa: E402

try:
    FLEET_PYTHON = fleet_image.find_python(fleet_image.release().python)
except fleet_image.FleetEnvironmentError as exc:
    pytest.skip(f"the fleet image's Python is not on this machine, so the fleet cannot be proven here: {exc}",
                allow_module_level=True)

from segserve.common.synthetic_video import moving_shapes  # noqa: E402
from tests.grounding_reference import grounding_detector  # noqa: E402
from tests.sam2_video_reference import compare, run_reference  # noqa: E402
from tests.test_automask import BASE, CASES, assert_same_masks, shapes  # noqa: E402
from tests.test_mask2former_serving import _iou, _scene  # noqa: E402
from tests.test_sam2_e2e import PROMPTS, assert_matches  # noqa: E402
from tests.test_sam2_e2e import reference as sam2_prompt_reference  # noqa: E402
from tests.test_sam2_video import correction_script  # noqa: E402
from tests.test_text_to_mask import CAPTION, IOU_MIN, _thresholds  # noqa: E402
from tests.test_video_prompts import CAPTION as VIDEO_CAPTION  # noqa: E402
from tests.test_video_prompts import HW, mask_script  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

GRAPH_PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan")
PROBE = "fleet_probe"
_PROBE_CONFIG = """name: "fleet_probe"
backend: "python"
input { name: "DUMMY" data_type: TYPE_INT32 dims: 1 }
output { name: "REPORT" data_type: TYPE_STRING dims: 1 }
instance_group { count: 1 kind: KIND_CPU }
"""
# A test-only Python model that reports what a fleet model's Python sees.
_PROBE_PY = '''import importlib.util, json, os, sys
import numpy as np
import triton_python_backend_utils as pb_utils
import segserve
from segserve.triton_models.runtime_check import runtime_digest


class TritonPythonModel:
    def execute(self, requests):
        maps = open("/proc/self/maps").read().split()
        report = {"python": "%d.%d" % sys.version_info[:2], "segserve": segserve.__file__, "numpy": np.__version__,
                  "digest": runtime_digest(), "exe": os.path.realpath("/proc/self/exe"), "prefix": sys.prefix,
                  "libpython": sorted({p for p in maps if "/libpython" in p}),
                  "found": {m: importlib.util.find_spec(m) is not None
                            for m in ("onnxruntime", "torch", "transformers", "scipy", "cupy")}}
        out = pb_utils.Tensor("REPORT", np.array([json.dumps(report)], dtype=object))
        return [pb_utils.InferenceResponse([out]) for _ in requests]
'''


def _configs(root: Path) -> dict[str, mc.ModelConfig]:
    return {p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig()) for p in sorted(root.glob("*/config.pbtxt"))}


def _stats(url: str, model: str) -> tuple[int, int]:
    """(requests, executions) of one model so far."""
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model).model_stats[0]
        return stats.inference_stats.success.count, stats.execution_count
    finally:
        client.close()


def _concurrently(calls):
    """Run the calls at once (a barrier lines them up), results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


# ----------------------------------------------------------------------------- the fleet stack


@pytest.fixture(scope="module")
def fleet_workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fleet")


@pytest.fixture(scope="module")
def fleet_artifacts(all_family_artifacts) -> Path:
    return all_family_artifacts


@pytest.fixture(scope="module")
def fleet_runtime(fleet_env_dir) -> fleet_image.PythonRuntime:
    return fleet_image.fleet_python(fleet_env_dir)


@pytest.fixture(scope="module")
def fleet_repository(fleet_artifacts, fleet_workspace, fleet_env_dir):
    """-> (repository with CPU stand-ins, the configs as `build-repo --target fleet` rendered them)."""
    from segserve.repository.builder import build_repository
    from segserve.repository.standins import replace_graphs_with_cpu_standins

    repository = fleet_workspace / "repository"
    build_repository(fleet_artifacts, repository, "fleet", session_ttl_s=120, max_sessions=8,
                     options={"max_video_objects": 8})
    rendered = _configs(repository)
    graphs = sorted(n for n, c in rendered.items() if c.platform in GRAPH_PLATFORMS)
    assert len(graphs) == 9 and {"sam2_image_encoder", "grounding_dino", "mask2former", "sam2_video_decoder"} <= set(graphs)
    for name in graphs:
        assert rendered[name].platform == "onnxruntime_onnx", name
        assert [g.kind for g in rendered[name].instance_group] == [mc.ModelInstanceGroup.KIND_GPU], name
    assert replace_graphs_with_cpu_standins(repository, fleet_image.standin_libraries(fleet_env_dir)) == graphs
    (repository / PROBE / "1").mkdir(parents=True)
    (repository / PROBE / "config.pbtxt").write_text(_PROBE_CONFIG)
    (repository / PROBE / "1" / "model.py").write_text(_PROBE_PY)
    return repository, rendered


@pytest.fixture(scope="module")
def fleet_stack(fleet_repository, fleet_runtime, fleet_workspace):
    from segserve.orchestrator.settings import Settings
    from segserve.runtime.stack import start_stack

    settings = Settings(max_image_sessions=8, embedding_cache_size=4, max_image_pixels=40_000_000, id_key=TEST_ID_KEY)
    with start_stack(fleet_repository[0], fleet_workspace / "triton", settings, python=fleet_runtime) as running:
        yield running


@pytest.fixture(scope="module")
def fclient(fleet_stack):
    from segserve.client import SegservClient

    with SegservClient(fleet_stack.address) as c:
        yield c


def _new_client(stack):
    from segserve.client import SegservClient

    return SegservClient(stack.address)


# ----------------------------------------------------------------------------- the image's Python


def test_standins_keep_the_fleet_signature(fleet_repository):
    """Only the backend and the instance kind differ from what the fleet pod loads."""
    repository, rendered = fleet_repository
    served = _configs(repository)
    for name, fleet in rendered.items():
        standin = served[name]
        if fleet.platform not in GRAPH_PLATFORMS:
            assert standin == fleet, name
            continue
        assert standin.backend == "python" and not standin.platform
        for field in ("input", "output", "max_batch_size", "dynamic_batching"):
            assert getattr(standin, field) == getattr(fleet, field), (name, field)
        assert [g.count for g in standin.instance_group] == [g.count for g in fleet.instance_group]
        assert {g.kind for g in standin.instance_group} == {mc.ModelInstanceGroup.KIND_CPU}


def test_models_run_on_the_image_python_and_packages(fleet_stack, fleet_runtime, fleet_repository):
    """A Python model of the stack answers from the fleet Python: 3.10 in the 3.10 stub, the venv
    holds exactly requirements/triton.txt, the segserve it imports is the image's copy (not the
    checkout) with the digest the repository was built for, and nothing else is importable."""
    freeze = subprocess.run([str(Path(fleet_runtime.bindir) / "python"), "-m", "pip", "freeze"], capture_output=True,
                            text=True, check=True).stdout.split()
    frozen = dict(line.split("==") for line in freeze)
    assert {k.lower().replace("_", "-"): v for k, v in frozen.items()} == fleet_image.pinned()

    client = grpcclient.InferenceServerClient(fleet_stack.triton.grpc_url)
    try:
        dummy = grpcclient.InferInput("DUMMY", [1], "INT32")
        dummy.set_data_from_numpy(np.zeros(1, np.int32))
        report = json.loads(client.infer(PROBE, [dummy]).as_numpy("REPORT")[0])
    finally:
        client.close()
    assert report["python"] == fleet_image.release().python == "3.10"
    log = " ".join(fleet_stack.triton.log_path.read_text().replace("|", " ").split())
    assert f"server_version {fleet_image.release().triton}" in log  # the image's Triton release
    assert Path(report["prefix"]) == Path(fleet_runtime.bindir).parent  # the venv's site-packages, no other
    assert report["exe"].endswith("backends-py3.10/python/triton_python_backend_stub")
    libdir = Path(fleet_runtime.libdir).resolve()
    assert report["libpython"] and all(Path(p).resolve().parent == libdir for p in report["libpython"])
    assert Path(report["segserve"]).is_relative_to(fleet_runtime.paths[0])
    assert not Path(report["segserve"]).is_relative_to(fleet_image.PROJECT_ROOT)
    assert report["numpy"] == fleet_image.pinned()["numpy"]
    assert report["digest"] == json.loads((fleet_repository[0] / "repository.json").read_text())["segserve_runtime"]
    assert report["found"] == {"onnxruntime": False, "torch": False, "transformers": False, "scipy": False,
                               "cupy": False}


# ----------------------------------------------------------------------------- SAM 2 image prompts


@pytest.mark.parametrize("name, multimask", [("points", False), ("box", False), ("point_and_box", True),
                                             ("two_boxes", False)])
def test_image_prompt_matches_sam2model(fclient, sam2_torch_model, photo, name, multimask):
    expected = sam2_prompt_reference(sam2_torch_model, photo, PROMPTS[name], multimask)
    assert expected[2].any(axis=(-1, -2)).all()
    opened = fclient.open_image(photo)
    try:
        result = fclient.mask_from_prompt(image_id=opened.image_id, multimask=multimask, return_low_res_logits=True,
                                          **PROMPTS[name])
    finally:
        fclient.close_image(opened.image_id)
    assert (result.height, result.width) == photo.shape[:2]
    assert_matches(result, expected)


def test_concurrent_images_match_sam2model(fleet_stack, sam2_torch_model, photo):
    """Three different images at once (the encoder's dynamic batcher may join them), each its own answer."""
    from skimage import data

    cases = [(photo, dict(points=[(120, 150, 1)])),
             (np.ascontiguousarray(photo[::-1, ::-1]), dict(boxes=[(60, 40, 330, 380)])),
             (np.ascontiguousarray(data.coffee()[::2, ::2]), dict(points=[(150, 100, 1), (60, 60, 0)]))]
    expected = [sam2_prompt_reference(sam2_torch_model, image, prompt) for image, prompt in cases]
    assert all(e[2].any() for e in expected)

    def call(image, prompt):
        with _new_client(fleet_stack) as c:
            return c.mask_from_prompt(image=image, return_low_res_logits=True, **prompt)

    results = _concurrently([lambda i=i, p=p: call(i, p) for i, p in cases])
    for result, reference in zip(results, expected):
        assert_matches(result, reference)


def test_automatic_masks_match_reference(fclient, sam2_torch_model):
    image = shapes()
    overrides, min_count = CASES["filters"]
    params = {**BASE, **overrides}
    expected = automask_reference.generate(sam2_torch_model, image, **params)
    assert len(expected) >= min_count
    assert_same_masks(fclient.generate_masks(image=image, **params).masks, expected, min_count)


# ----------------------------------------------------------------------------- text to mask


def test_text_to_mask_matches_pytorch(fleet_stack, fleet_artifacts, sam2_torch_model, photo):
    """Two images at once through the `text_to_mask` ensemble (Grounding DINO batched), each as
    GroundingDinoProcessor + Sam2Model prompted with the boxes give."""
    images = [photo, np.ascontiguousarray(photo[:, ::-1])]
    expected, thresholds = [], []
    for image in images:
        detect, scores = grounding_detector(fleet_artifacts, image, CAPTION)
        thresholds.append(_thresholds(scores, 5))
        boxes, ref_scores, phrases = detect(thresholds[-1], 0.5)
        assert 3 <= len(boxes) < 900 and any(phrases)
        masks = sam2_reference.predict(sam2_torch_model, image, boxes=boxes)[2][:, 0]
        assert all(m.any() for m in masks)
        expected.append((boxes, ref_scores, phrases, masks))

    def call(image, threshold):
        with _new_client(fleet_stack) as c:
            return c.mask_from_text(image, CAPTION, box_threshold=threshold, text_threshold=0.5, max_objects=100,
                                    nms_iou_threshold=1.0)

    results = _concurrently([lambda i=i, t=t: call(i, t) for i, t in zip(images, thresholds)])
    for result, (boxes, ref_scores, phrases, masks) in zip(results, expected):
        assert [o.phrase for o in result.objects] == phrases
        np.testing.assert_allclose([o.detection_score for o in result.objects], ref_scores, rtol=1e-4)
        np.testing.assert_allclose([o.box for o in result.objects], boxes, rtol=1e-3, atol=1e-2)
        for obj, ref in zip(result.objects, masks):
            assert len(obj.masks) == 1 and sam2_reference.iou(obj.best.mask, ref) >= IOU_MIN


# ----------------------------------------------------------------------------- panoptic


@pytest.fixture(scope="module")
def mask2former_reference(fleet_artifacts):
    """image -> transformers' panoptic result (PyTorch model, the processor's post-processing)."""
    import torch
    from PIL import Image
    from transformers import Mask2FormerImageProcessorPil

    from segserve.export.manifest import Manifest
    from segserve.export.mask2former import load_mask2former

    size = Manifest(fleet_artifacts).records["mask2former"].model_config["image_size"]
    model = load_mask2former(fleet_artifacts / "checkpoints" / "mask2former-random-tiny")
    processor = Mask2FormerImageProcessorPil(size={"height": size, "width": size})

    def panoptic(image: np.ndarray):
        pixel_values = processor([Image.fromarray(image)], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            outputs = model(pixel_values=pixel_values)
        return processor.post_process_panoptic_segmentation(outputs, target_sizes=[image.shape[:2]])[0]

    return panoptic


def test_panoptic_matches_transformers(fleet_stack, mask2former_reference, photo):
    """Six different images at once: the batched Mask2Former graph gives each its own segments."""
    images = [photo, *[_scene(seed, h, w) for seed, (h, w) in enumerate([(300, 400), (200, 640), (90, 100),
                                                                          (240, 320), (160, 160)])]]
    expected = [mask2former_reference(image) for image in images]
    assert all(len(e["segments_info"]) >= 1 for e in expected)
    before = _stats(fleet_stack.triton.grpc_url, "mask2former")

    def call(image):
        with _new_client(fleet_stack) as c:
            return c.segment(image, task="panoptic")

    results = _concurrently([lambda i=i: call(i) for i in images])
    after = _stats(fleet_stack.triton.grpc_url, "mask2former")
    for result, reference, image in zip(results, expected, images):
        assert result.segment_map.shape == image.shape[:2]
        ref_map = reference["segmentation"].numpy()
        assert len(result.segments) == len(reference["segments_info"])
        unmatched = {s.id: s for s in result.segments}
        for info in reference["segments_info"]:
            ref_mask = ref_map == info["id"]
            ids, counts = np.unique(result.segment_map[ref_mask], return_counts=True)
            ours = unmatched.pop(int(ids[counts.argmax()]))
            assert ours.label_id == info["label_id"] and ours.score == pytest.approx(info["score"], abs=1e-4)
            assert _iou(result.segment_map == ours.id, ref_mask) >= 0.99
    requests, executions = after[0] - before[0], after[1] - before[1]
    assert requests == len(images) and executions < requests, (requests, executions)


# ----------------------------------------------------------------------------- video


@pytest.fixture(scope="module")
def video_model(fleet_artifacts):
    from transformers import Sam2VideoModel

    return Sam2VideoModel.from_pretrained(fleet_artifacts / "checkpoints" / "sam2-video-random-tiny").eval()


@pytest.fixture(scope="module")
def clip():
    return moving_shapes(8, *HW)


def _box_script(centres):
    (x, y) = centres[2][0]
    box = (x - 14.0, y - 14.0, x + 14.0, y + 14.0)
    return [("prompt", 0, {3: ([box[:2], box[2:], centres[1][0]], [2, 3, 0])}), ("propagate", None, False)]


def _request(prompt) -> dict:
    """A reference prompt as the video API takes it: a mask, clicks, or a box (labels 2, 3) + clicks."""
    if isinstance(prompt, np.ndarray):
        return {"mask": prompt}
    points, labels = prompt
    request = {"points": [(*p, label) for p, label in zip(points, labels) if label in (0, 1)]}
    corners = [p for p, label in zip(points, labels) if label in (2, 3)]
    if corners:
        request["box"] = (*corners[0], *corners[1])
    return request


def _serve_video(stack, frames, script):
    with _new_client(stack) as client:
        video = client.video
        session = video.start_session(list(frames)).session_id
        results = []
        try:
            for action in script:
                if action[0] == "prompt":
                    out = video.add_prompts(session, action[1], {o: _request(p) for o, p in action[2].items()})
                    results.append((out.frame_index, out.masks))
                else:
                    results += [(f.frame_index, f.masks) for f in
                                video.propagate(session, start_frame_index=action[1], reverse=action[2])]
        finally:
            video.end_session(session)
        return results


def _assert_nontrivial(results):
    areas = [m.mean() for _, objects in results for m in objects.values()]
    assert np.mean([a > 0 for a in areas]) >= 0.5 and 0 < np.mean(areas) < 0.95, areas


def test_video_point_box_and_mask_prompts_match_sam2videomodel(fleet_stack, video_model, clip):
    """Three sessions at once (their steps share the tracker's executions and its BLS calls of the
    graphs), prompted with clicks and corrections, a box, and masks: each as Sam2VideoModel tracks it."""
    frames, centres = clip
    scripts = {"points": correction_script(centres), "box": _box_script(centres), "mask": mask_script(centres)}
    references = {name: run_reference(video_model, frames, script) for name, script in scripts.items()}
    for reference in references.values():
        _assert_nontrivial(reference)
    served = _concurrently([lambda s=s: _serve_video(fleet_stack, frames, s) for s in scripts.values()])
    for (name, reference), ours in zip(references.items(), served):
        worst, count = compare(ours, reference)
        assert count >= 9 and worst >= 0.99, (name, worst, count)


def test_video_text_prompt_matches_reference(fclient, fleet_artifacts, video_model, clip):
    """Text on frame 2: Grounding DINO's detections (GroundingDinoProcessor's) become objects, tracked
    as Sam2VideoModel tracks those boxes."""
    frames, centres = clip
    detect, scores = grounding_detector(fleet_artifacts, frames[2], VIDEO_CAPTION)
    box_threshold = float((scores[3] + scores[4]) / 2)
    boxes, ref_scores, phrases = detect(box_threshold, 0.25)
    assert len(boxes) == 4
    video = fclient.video
    sid = video.start_session(list(frames)).session_id
    try:
        first = video.add_prompts(sid, 0, {7: {"points": [(*centres[1][0], 1)]}})
        out = video.add_prompts(sid, 2, text=VIDEO_CAPTION, box_threshold=box_threshold, text_threshold=0.25,
                                max_objects=100, nms_iou_threshold=1.0)
        new_ids = [8, 9, 10, 11]
        assert sorted(out.detections) == new_ids and list(out.masks) == [7, *new_ids]
        got = [out.detections[i] for i in new_ids]
        assert [d["phrase"] for d in got] == phrases
        np.testing.assert_allclose([d["score"] for d in got], ref_scores, rtol=1e-4)
        np.testing.assert_allclose([d["box"] for d in got], boxes, rtol=1e-3, atol=1e-2)
        tracked = [(0, first.masks), (2, out.masks)] + [(f.frame_index, f.masks) for f in video.propagate(sid)]
    finally:
        video.end_session(sid)
    objects = {i: ([d["box"][:2], d["box"][2:]], [2, 3]) for i, d in zip(new_ids, got)}
    reference = run_reference(video_model, frames, [("prompt", 0, {7: ([centres[1][0]], [1])}),
                                                    ("prompt", 2, objects), ("propagate", None, False)])
    _assert_nontrivial(reference)
    worst, count = compare(tracked, reference)
    assert count == 1 + 5 + 5 * 8 and worst >= 0.99, f"worst per-frame IoU {worst:.4f}"


# ----------------------------------------------------------------------------- load-time faults


@pytest.fixture(scope="module")
def sam2_fleet_repository(sam2_artifacts, fleet_workspace) -> Path:
    """The SAM 2 session model alone, as `build-repo --target fleet` writes it: its load-time check
    runs when model.py is imported, before any graph is called."""
    from segserve.repository.builder import build_repository

    repository = fleet_workspace / "sam2-fleet"
    build_repository(sam2_artifacts, repository, "fleet")
    for name in ("sam2_image_encoder", "sam2_prompt_decoder"):
        shutil.rmtree(repository / name)
    return repository


def _without(runtime: fleet_image.PythonRuntime, workspace: Path, distribution: str) -> fleet_image.PythonRuntime:
    """The fleet Python in a venv of its own whose site-packages lacks one distribution (links to the
    rest). A venv, since the stub's interpreter takes sys.prefix from the `python3` on PATH."""
    venv = workspace / f"venv-without-{distribution}"
    subprocess.run([str(FLEET_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{runtime.version}" / "site-packages"
    for entry in Path(runtime.paths[1]).iterdir():
        if not entry.name.lower().startswith(distribution):
            (site / entry.name).symlink_to(entry)
    return fleet_image.PythonRuntime(runtime.version, runtime.libdir, (runtime.paths[0], str(site)), str(venv / "bin"))


@pytest.mark.parametrize("fault", ["missing_package", "no_runtime", "other_runtime"])
def test_fleet_model_fails_at_load_naming_the_fault(sam2_fleet_repository, fleet_runtime, tmp_path, fault):
    from segserve.runtime.triton import EmbeddedTriton, TritonLaunchError, free_port
    from segserve.triton_models.runtime_check import runtime_digest

    repository = tmp_path / "repository"
    shutil.copytree(sam2_fleet_repository, repository)
    runtime = fleet_runtime
    if fault == "missing_package":
        runtime = _without(fleet_runtime, tmp_path, "pycocotools")
        words = ["sam2_image_session", "'pycocotools'", "Python 3.10", "docker/triton.Dockerfile"]
    elif fault == "no_runtime":
        runtime = fleet_image.PythonRuntime(runtime.version, runtime.libdir, runtime.paths[1:], runtime.bindir)
        words = ["sam2_image_session", "cannot import the segserve runtime", "docker/triton.Dockerfile"]
    else:
        model_py = repository / "sam2_image_session" / "1" / "model.py"
        built = runtime_digest()
        assert built in model_py.read_text()
        model_py.write_text(model_py.read_text().replace(built, "0123456789ab" + "0" * 52))
        words = ["sam2_image_session", "built for segserve runtime 0123456789ab", f"imports runtime {built[:12]}"]
    triton = EmbeddedTriton(repository, tmp_path / "triton", free_port(), free_port(), free_port(), python=runtime)
    with pytest.raises(TritonLaunchError):
        triton.start(timeout_s=120)
    log = triton.log_path.read_text(errors="replace")
    assert "failed to load 'sam2_image_session'" in log, log[-3000:]
    for word in words:
        assert word in log, (word, log[-3000:])


@pytest.mark.parametrize("missing", ["record", "file"])
def test_build_repo_fleet_names_the_missing_family(fleet_artifacts, tmp_path, missing):
    """One SAM 2 video graph missing (its manifest record, or its file): `build-repo --target fleet`
    names the family and the export command that makes it."""
    from segserve.cli import main
    from segserve.export.manifest import MANIFEST_NAME

    artifacts = tmp_path / "artifacts"
    shutil.copytree(fleet_artifacts, artifacts, copy_function=os.link)
    if missing == "record":
        manifest = json.loads((artifacts / MANIFEST_NAME).read_text())
        manifest["artifacts"] = [r for r in manifest["artifacts"] if r["name"] != "sam2_video_memory_encoder"]
        (artifacts / MANIFEST_NAME).unlink()  # a hard link to the module's manifest: write a new file
        (artifacts / MANIFEST_NAME).write_text(json.dumps(manifest))
    else:
        (artifacts / "sam2_video_memory_encoder.onnx").unlink()
    with pytest.raises(SystemExit) as error:  # the CLI exits with the message, no traceback
        main(["build-repo", "--artifacts", str(artifacts), "--out", str(tmp_path / "repo"), "--target", "fleet"])
    message = str(error.value)
    assert "sam2_video_memory_encoder" in message and "sam2_video" in message.replace("sam2_video_memory", "")
    assert f"segserve export --families sam2_video --out {artifacts}" in message
