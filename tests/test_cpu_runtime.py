"""The embedded target's runtime choice per graph (issue 14, item 1): ONNX Runtime or OpenVINO, fp32 or
bf16, chosen at build time, rendered into the configs, served end to end; OpenVINO's compiled-model
cache survives a Triton restart; threads never oversubscribe the cores."""
from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from segserve.repository.builder import (
    DEFAULT_GRAPH_CACHE, RepositoryError, build_repository, choose_graph_runtimes, graph_threads, validate_repository)
from segserve.triton_models import graph_runner
from segserve.triton_models.graph_runner import cpu_has_native_bf16, resolve
from tests import sam2_reference

AMX = {"avx512f", "amx_bf16", "amx_tile"}
NO_BF16 = {"avx2", "avx512f"}
SAM2_GRAPHS = ("sam2_image_encoder", "sam2_prompt_decoder")
PROMPTS = {
    "points": dict(points=[(120, 150, 1), (300, 260, 0)]),
    "box": dict(boxes=[(60, 40, 330, 380)]),
    "point_and_box": dict(points=[(200, 200, 1)], boxes=[(60, 40, 330, 380)]),
    "two_boxes": dict(boxes=[(60, 40, 330, 380), (250, 100, 470, 390)]),
}


def _parameters(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


# ----------------------------------------------------------------------------- choice and bad input


def test_unknown_runtime_or_precision_is_refused_naming_the_choices(sam2_artifacts, tmp_path):
    with pytest.raises(ValueError, match="auto, onnxruntime, openvino"):
        resolve("tensorrt")
    with pytest.raises(ValueError, match="fp32, bf16"):
        resolve("openvino", "fp16")
    with pytest.raises(ValueError, match="openvino"):
        resolve("onnxruntime", "bf16")  # ONNX Runtime's CPU provider has no bf16 path
    with pytest.raises(RepositoryError, match="auto, onnxruntime, openvino"):
        build_repository(sam2_artifacts, tmp_path / "repo", cpu_runtime="nope")
    with pytest.raises(RepositoryError, match="fp32, bf16"):
        build_repository(sam2_artifacts, tmp_path / "repo", cpu_runtime="openvino", precision="int8")
    with pytest.raises(RepositoryError, match="sam2_image_encoder.*fp32, bf16"):
        build_repository(sam2_artifacts, tmp_path / "repo", cpu_runtime="openvino",
                         graph_precisions={"sam2_image_encoder": "fp16"})


@pytest.mark.parametrize("flag, value", [("--cpu-runtime", "nope"), ("--precision", "fp16")])
def test_cli_refuses_an_unknown_name(tmp_path, flag, value):
    segserve = Path(sys.executable).parent / "segserve"
    command = [str(segserve)] if segserve.is_file() else [sys.executable, "-m", "segserve.cli"]
    done = subprocess.run([*command, "build-repo", flag, value, "--out", str(tmp_path / "repo")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    choices = ("auto", "onnxruntime", "openvino") if flag == "--cpu-runtime" else ("fp32", "bf16")
    assert f"argument {flag}: invalid choice: '{value}'" in done.stderr, done.stderr
    assert all(repr(c) in done.stderr for c in choices), done.stderr
    assert not (tmp_path / "repo").exists()


def test_auto_picks_openvino_bf16_only_with_native_bf16():
    assert cpu_has_native_bf16(AMX) and cpu_has_native_bf16({"avx512_bf16"}) and not cpu_has_native_bf16(NO_BF16)
    assert resolve("auto", flags=AMX) == ("openvino", "bf16")
    assert resolve("auto", "fp32", flags=AMX) == ("openvino", "fp32")
    assert resolve("auto", flags=NO_BF16) == ("onnxruntime", "fp32")
    assert resolve(flags=AMX) == resolve("auto", flags=AMX)
    assert resolve("onnxruntime", flags=AMX) == ("onnxruntime", "fp32")


@pytest.mark.parametrize("runtime, expected", [("openvino", ("openvino", "fp32")), ("auto", ("onnxruntime", "fp32"))])
def test_bf16_without_native_bf16_falls_back_to_fp32_with_a_warning(caplog, runtime, expected):
    with caplog.at_level(logging.WARNING, logger="segserve.graph_runner"):
        assert resolve(runtime, "bf16", flags=NO_BF16) == expected
    assert any("no native bf16" in r.getMessage() and "fp32" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="segserve.graph_runner"):
        assert resolve(runtime, "bf16", flags=AMX) == ("openvino", "bf16")
    assert not caplog.records


def test_graph_precisions_override_per_graph():
    graphs = ["sam2_image_encoder", "sam2_prompt_decoder", "mask2former"]
    gate = {"sam2_image_encoder": "bf16", "sam2_prompt_decoder": "fp32"}  # the decoder failed its bf16 gate
    assert choose_graph_runtimes(graphs, "openvino", "bf16", gate, flags=AMX) == {
        "sam2_image_encoder": ("openvino", "bf16"), "sam2_prompt_decoder": ("openvino", "fp32"),
        "mask2former": ("openvino", "bf16")}
    assert choose_graph_runtimes(graphs, "openvino", "fp32", gate, flags=AMX)["sam2_image_encoder"] == ("openvino", "bf16")
    # Where the runtime has no bf16 (ONNX Runtime) or the CPU none (with a warning): fp32.
    assert set(choose_graph_runtimes(graphs, "onnxruntime", None, gate, flags=AMX).values()) == {("onnxruntime", "fp32")}
    assert set(choose_graph_runtimes(graphs, "auto", None, gate, flags=NO_BF16).values()) == {("onnxruntime", "fp32")}
    assert set(choose_graph_runtimes(graphs, "openvino", None, gate, flags=NO_BF16).values()) == {("openvino", "fp32")}


# ----------------------------------------------------------------------------- rendering and threads


def test_threads_share_the_cores_between_instances_that_run_graphs():
    assert graph_threads(3, 16) == 5
    assert graph_threads(9, 2) == 1  # never 0: one thread each, the least there is
    assert graph_threads(1, 8) == 8


def test_configs_carry_each_models_graphs_threads_and_cache(sam2_artifacts, tmp_path):
    repo = tmp_path / "repo"
    build_repository(sam2_artifacts, repo, cpu_runtime="openvino", precision="fp32",
                     graph_precisions={"sam2_prompt_decoder": "fp32"}, options={"cpu_cores": 12})
    configs = validate_repository(repo)
    encoder, decoder, session = (_parameters(configs[n]) for n in (*SAM2_GRAPHS, "sam2_image_session"))
    assert json.loads(encoder["graph_runtime"]) == {"sam2_image_encoder": {"runtime": "openvino", "precision": "fp32"}}
    assert json.loads(decoder["graph_runtime"]) == {"sam2_prompt_decoder": {"runtime": "openvino", "precision": "fp32"}}
    # The session runs the decoder in process; the encoder is its own model (BLS, off the click path).
    assert set(json.loads(session["graph_runtime"])) == {"sam2_prompt_decoder"}
    # Three instances run graphs in process (encoder, decoder, session): 12 cores // 3.
    assert {p["graph_threads"] for p in (encoder, decoder, session)} == {"4"}
    assert {p["graph_cache_dir"] for p in (encoder, decoder, session)} == {DEFAULT_GRAPH_CACHE}
    assert json.loads((repo / "repository.json").read_text())["graph_runtimes"]["sam2_image_encoder"] == \
        {"runtime": "openvino", "precision": "fp32"}
    # The explicit thread count overrides; the BLS session runs no graph itself (2 instances left).
    build_repository(sam2_artifacts, repo, intra_op_threads=3, cpu_runtime="openvino", precision="fp32")
    assert {_parameters(c).get("graph_threads") for n, c in validate_repository(repo).items()} == {"3"}
    build_repository(sam2_artifacts, repo, session_runner="bls", options={"cpu_cores": 12})
    configs = validate_repository(repo)
    assert "graph_runtime" not in _parameters(configs["sam2_image_session"])
    assert _parameters(configs["sam2_image_encoder"])["graph_threads"] == "6"
    # ONNX Runtime (the Python API's default) needs no compiled-model cache.
    assert json.loads(_parameters(configs["sam2_image_encoder"])["graph_runtime"]) == {
        "sam2_image_encoder": {"runtime": "onnxruntime", "precision": "fp32"}}
    assert "graph_cache_dir" not in _parameters(configs["sam2_image_encoder"])


def test_python_api_default_stays_onnxruntime_fp32(embedded_repository):
    runtimes = json.loads((embedded_repository / "repository.json").read_text())["graph_runtimes"]
    assert runtimes and set(map(json.dumps, runtimes.values())) == {json.dumps({"runtime": "onnxruntime",
                                                                               "precision": "fp32"})}


# ----------------------------------------------------------------------------- served end to end


def _masks(client, photo, prompt: dict, multimask: bool = False) -> list[np.ndarray]:
    opened = client.open_image(photo)
    try:
        result = client.mask_from_prompt(image_id=opened.image_id, multimask=multimask, **prompt)
    finally:
        client.close_image(opened.image_id)
    return [m.mask for o in result.objects for m in o.masks]


def _prewarm(repository: Path) -> None:
    """Compile every OpenVINO graph of the repository into its compiled-model cache, here, as the
    models will open it (`GraphSettings` from their configs): the tiny encoder takes ~25 s to compile,
    twice at once when Triton loads its graph model and the session together, which on 2 busy cores
    can outlast the start-up deadline. The models then import from the cache."""
    from segserve.triton_models.graph_runner import GraphSettings

    for config in validate_repository(repository).values():
        settings = GraphSettings.from_parameters(_parameters(config), repository)
        for graph in settings.choices:
            if settings.choice(graph)[0] == "openvino":
                settings.open(graph, repository / graph / "1" / "model.onnx")


def _served(repository: Path, workspace: Path):
    from segserve.client import SegservClient
    from segserve.runtime.stack import start_stack

    class Served:
        def __enter__(self):
            self.stack = start_stack(repository, workspace, supervise=False).__enter__()
            self.client = SegservClient(self.stack.address).__enter__()
            return self

        def __exit__(self, *exc):
            self.client.__exit__(*exc)
            self.stack.__exit__(*exc)

    return Served()


def _random_points(photo: np.ndarray, count: int = 10, seed: int = 14) -> list[dict]:
    rng = np.random.default_rng(seed)
    height, width = photo.shape[:2]
    return [dict(points=[(float(rng.uniform(0, width)), float(rng.uniform(0, height)), 1)]) for _ in range(count)]


def test_openvino_fp32_serves_the_masks_of_onnxruntime(sam2_artifacts, client, photo, tmp_path):
    repo = tmp_path / "openvino_fp32"
    build_repository(sam2_artifacts, repo, cpu_runtime="openvino", precision="fp32", intra_op_threads=1)
    _prewarm(repo)
    references = {(name, multimask): _masks(client, photo, prompt, multimask)
                  for name, prompt in PROMPTS.items() for multimask in (False, True)}
    # Random weights: the comparison is between masks that hold something, not two empty ones.
    for key, masks in references.items():
        assert any(0.005 < m.mean() < 0.995 for m in masks), (key, [m.mean() for m in masks])
    with _served(repo, tmp_path / "triton") as served:
        got = {key: _masks(served.client, photo, PROMPTS[key[0]], key[1]) for key in references}
    for key, masks in references.items():
        assert len(got[key]) == len(masks)
        for expected, mask in zip(masks, got[key]):
            assert expected.shape == mask.shape
            if expected.any():  # (an IoU of two empty masks is undefined: those must be equal)
                assert sam2_reference.iou(mask, expected) >= 0.99, key
            assert (mask == expected).mean() >= 0.999, key


def test_bf16_serves_masks_that_agree_with_fp32(sam2_artifacts, client, photo, tmp_path, record_property):
    repo = tmp_path / "openvino_bf16"
    # Both graphs in bf16, whatever the precision gate (export.precision) says of this tiny random model.
    build_repository(sam2_artifacts, repo, cpu_runtime="openvino", precision="bf16", intra_op_threads=1,
                     graph_precisions=dict.fromkeys(SAM2_GRAPHS, "bf16"))
    _prewarm(repo)
    expected = "bf16" if cpu_has_native_bf16() else "fp32"  # without native bf16: fp32, with a warning
    assert {c["precision"] for c in json.loads((repo / "repository.json").read_text())["graph_runtimes"].values()} \
        == {expected}
    prompts = _random_points(photo)
    references = [_masks(client, photo, p)[0] for p in prompts]
    filled = [m for m in references if 0.005 < m.mean() < 0.995]
    assert len(filled) >= 5, [m.mean() for m in references]
    with _served(repo, tmp_path / "triton") as served:
        got = [_masks(served.client, photo, p)[0] for p in prompts]
    # Two empty masks have no IoU: such prompts compare nothing and are left out (>= 5 are filled)
    ious = np.array([sam2_reference.iou(a, b) for a, b in zip(got, references) if a.any() or b.any()])
    same = np.array([(a == b).mean() for a, b in zip(got, references)])
    summary = {"precision": expected, "iou_median": float(np.median(ious)), "iou_min": float(ious.min()),
               "iou": [round(float(x), 4) for x in ious], "identical_pixels_min": float(same.min())}
    record_property("bf16_vs_fp32", json.dumps(summary))
    print(f"\nbf16 vs fp32 masks, 10 random single-point prompts: {json.dumps(summary)}")
    assert np.median(ious) >= 0.98, summary


# ----------------------------------------------------------------------------- compiled-model cache


_LOADED = re.compile(r"(\w+): graph (\w+): openvino (\w+), loaded in ([\d.]+) s(, compiled-model cache hit)?")


def _start_and_stop(repository: Path, workspace: Path) -> tuple[float, list[tuple[str, str, float, bool]]]:
    """Triton's time to READY, and each in-process graph's (model, graph, load seconds, cache hit)."""
    from segserve.runtime.triton import EmbeddedTriton, free_port

    triton = EmbeddedTriton(repository, workspace, grpc_port=free_port(), http_port=free_port(),
                            metrics_port=free_port())
    started = time.perf_counter()
    with triton.start(timeout_s=900):  # the first start compiles (the tiny encoder: ~25 s, twice at once)
        ready_s = time.perf_counter() - started
    loads = [(m, g, float(s), bool(hit)) for m, g, _, s, hit in _LOADED.findall(triton.log_path.read_text())]
    return ready_s, loads


def _cache_entries(cache: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(cache)): (p.stat().st_size, p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file()}


def test_compiled_models_are_cached_across_a_triton_restart(sam2_artifacts, tmp_path, record_property):
    repo = tmp_path / "repo"
    build_repository(sam2_artifacts, repo, cpu_runtime="openvino", precision="fp32", intra_op_threads=1)
    cache = tmp_path / "openvino-cache"  # DEFAULT_GRAPH_CACHE: beside the repository
    assert not cache.exists()
    first_ready, first = _start_and_stop(repo, tmp_path / "triton")
    entries = _cache_entries(cache)
    # Encoder and decoder, each compiled once by its graph model, and the decoder once more by the
    # session (same blob; the session calls the encoder model through BLS).
    assert len(first) == 3 and sorted(g for _, g, _, _ in first) == sorted([*SAM2_GRAPHS, "sam2_prompt_decoder"]), first
    assert len(entries) >= 2, entries
    second_ready, second = _start_and_stop(repo, tmp_path / "triton")
    assert _cache_entries(cache) == entries  # nothing compiled, nothing rewritten
    assert len(second) == 3 and all(hit for *_, hit in second), second
    first_s, second_s = sum(s for _, _, s, _ in first), sum(s for _, _, s, _ in second)
    figures = {"first_load_s": round(first_s, 3), "cached_load_s": round(second_s, 3),
               "first_ready_s": round(first_ready, 2), "cached_ready_s": round(second_ready, 2),
               "cache_entries": len(entries)}
    record_property("openvino_cache", json.dumps(figures))
    print(f"\nOpenVINO compiled-model cache across a restart: {json.dumps(figures)}")
    assert second_s < first_s, figures


def test_open_graph_imports_from_the_cache_faster_than_it_compiles(sam2_artifacts, tmp_path):
    path = sam2_artifacts / "sam2_prompt_decoder.onnx"  # the small graph: the encoder compiles for ~25 s
    cold = [graph_runner.open_graph(path, "openvino", "fp32", 1, tmp_path / f"cold{i}") for i in range(2)]
    warm = [graph_runner.open_graph(path, "openvino", "fp32", 1, tmp_path / "cold0") for _ in range(3)]
    assert not any(r.loaded_from_cache for r in cold) and all(r.loaded_from_cache for r in warm)
    assert min(r.load_s for r in warm) < min(r.load_s for r in cold), ([r.load_s for r in cold],
                                                                        [r.load_s for r in warm])


def test_a_re_exported_graph_of_the_same_size_is_compiled_again(tmp_path):
    """OpenVINO keys a model compiled from a path by path and file size: a re-export at the same
    path that changes only a constant would otherwise import the stale compiled model."""
    import onnx
    from onnx import TensorProto, helper

    from segserve.triton_models.graph_runner import OpenVinoRunner

    def add_constant(value: float) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        constant = helper.make_tensor("c", TensorProto.FLOAT, [1, 4], [value] * 4)
        graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "g", [x], [y], [constant])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    path, cache = tmp_path / "model.onnx", tmp_path / "cache"
    zeros = {"x": np.zeros((1, 4), np.float32)}
    onnx.save(add_constant(1.0), path)
    first = OpenVinoRunner(path, "fp32", cache_dir=cache)
    assert OpenVinoRunner(path, "fp32", cache_dir=cache).loaded_from_cache  # the cache works
    size = path.stat().st_size
    onnx.save(add_constant(2.0), path)
    assert path.stat().st_size == size
    again = OpenVinoRunner(path, "fp32", cache_dir=cache)
    assert not again.loaded_from_cache
    np.testing.assert_array_equal(first.run(zeros)["y"], np.full((1, 4), 1.0, np.float32))
    np.testing.assert_array_equal(again.run(zeros)["y"], np.full((1, 4), 2.0, np.float32))
