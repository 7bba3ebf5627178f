"""Precision is provenance: every family's graphs measured in bf16 (OpenVINO) against fp32 (ONNX
Runtime) by family agreement (masks IoU, matched detections, segments), gated, recorded in the
manifest, reused, and served in fp32 where the gate fails; GetModelInfo says how each graph runs."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from segserve.export import precision
from segserve.export.manifest import Manifest
from segserve.triton_models.graph_runner import cpu_has_native_bf16

needs_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AMX / AVX512-BF16)")
ALL_GRAPHS = [g for graphs in precision.FAMILY_GRAPHS.values() for g in graphs]


def _copy(source: Path, target: Path, keep: set[str] | None = None) -> Path:
    """A linked copy (a manifest save replaces the file, never writes through a link); `keep`: only
    these artifacts (and their records) stay in the copy's manifest."""
    shutil.copytree(source, target, copy_function=os.link)
    if keep is not None:
        manifest = Manifest(target)
        manifest.records = {k: v for k, v in manifest.records.items() if k in keep}
        manifest.precisions = {k: v for k, v in manifest.precisions.items() if k in keep}
        manifest.save()
    return target


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("openvino_cache")


@pytest.fixture(scope="module")
def measured(all_family_artifacts, tmp_path_factory, ov_cache):
    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    out = _copy(all_family_artifacts, tmp_path_factory.mktemp("precision") / "artifacts")
    records = precision.measure(out, threads=2, cache_dir=ov_cache)
    report = {name: {k: r.metrics.get(k) for k in r.gate} | {"status": r.status} for name, r in records.items()}
    print("bf16 vs fp32 agreement (tiny random weights):\n" + json.dumps(report, indent=1))
    return out, records


@needs_bf16
def test_every_graph_measured_on_non_trivial_references(measured):
    out, records = measured
    assert sorted(records) == sorted(ALL_GRAPHS)
    encoder, decoder = records["sam2_image_encoder"].metrics, records["sam2_prompt_decoder"].metrics
    for metrics in (encoder, decoder):
        assert metrics["masks"] == 4 * precision.SAM2_PROMPTS
        assert metrics["reference_nonempty_masks"] == metrics["masks"]  # every prompt gives a mask
        assert 0.0 < metrics["reference_median_area_fraction"] < 1.0
        assert 0.0 <= metrics["min_iou"] <= metrics["median_iou"] <= 1.0
    video = records["sam2_video_decoder"].metrics
    assert video["frames"] == precision.VIDEO_FRAMES and video["objects"] == 3
    assert video["reference_nonempty_masks"] == video["masks"] == 3 * precision.VIDEO_FRAMES
    assert len(video["per_frame_min_iou"]) == precision.VIDEO_FRAMES
    grounding = records["grounding_dino"].metrics
    assert grounding["reference_detections"] >= 1 and grounding["measured_detections"] >= 1
    assert grounding["openvino_fp32_control"]["recall"] >= 0.0
    m2f = records["mask2former"].metrics
    assert m2f["reference_segments"] >= 1 and m2f["semantic_labels_in_reference"] >= 1
    for name, record in records.items():
        assert record.status in ("passed", "failed"), name
        assert record.passed == (not record.failures) == (record.status == "passed")
        assert record.served_precision == ("bf16" if record.passed else "fp32")
        assert record.measured_runtime == "openvino" and record.reference == "onnxruntime fp32"
        assert record.onnx_sha256 == Manifest(out).records[name].sha256
        if not record.passed:
            assert "served in fp32" in record.reason
    # The video graphs only run together: tracked in nested bf16 tiers. A graph passes only where
    # every tier up to the first that holds it passes, so the graphs in bf16 are one measured tier.
    video = {g: records[g] for g in precision.SAM2_VIDEO_GRAPHS}
    tiers = video[precision.VIDEO_ENCODER].metrics["tiers"]
    assert [t["bf16"] for t in tiers] == [list(t) for t in precision.VIDEO_BF16_TIERS]
    for name, record in video.items():
        if record.metrics.get("bf16_offered") is False:  # fp32 in every tier
            assert all(name not in t["bf16"] for t in tiers)
            assert not record.passed and "bf16 not offered" in record.reason
            continue
        own = record.metrics["tier"]
        assert name in tiers[own]["bf16"] and (own == 0 or name not in tiers[own - 1]["bf16"])
        for key in ("median_iou", "min_iou"):
            assert record.metrics[key] == min(t[key] for t in tiers[:own + 1])
    assert {g for g, r in video.items() if r.passed} in [set()] + [set(t) for t in precision.VIDEO_BF16_TIERS]
    assert sorted(records["sam2_video_decoder"].shared_with) == sorted(set(precision.SAM2_VIDEO_GRAPHS) - {
        "sam2_video_decoder"})
    # Written to the manifest, and kept when something else saves it.
    manifest = Manifest(out)
    assert {n: r.status for n, r in manifest.precisions.items()} == {n: r.status for n, r in records.items()}
    manifest.save()
    assert sorted(Manifest(out).precisions) == sorted(ALL_GRAPHS)


@needs_bf16
def test_records_are_reused_not_remeasured(measured, monkeypatch):
    out, records = measured

    def refuse(*args, **kwargs):
        raise AssertionError("re-measured a graph whose record is current")

    monkeypatch.setattr(precision, "MEASURES", {f: refuse for f in precision.MEASURES})
    again = precision.measure(out)
    assert {n: r.created_at for n, r in again.items()} == {n: r.created_at for n, r in records.items()}
    served = precision.graph_precisions(Manifest(out), "bf16")
    assert served == {n: r.served_precision for n, r in records.items()}
    assert precision.graph_precisions(Manifest(out), "fp32") == {n: "fp32" for n in ALL_GRAPHS}



@needs_bf16
def test_a_record_of_an_older_measurement_is_measured_again(measured, tmp_path, monkeypatch):
    out = _copy(measured[0], tmp_path / "artifacts", keep={"mask2former"})
    manifest = Manifest(out)
    assert manifest.precisions["mask2former"].metrics["method"] == precision.METHODS["mask2former"]
    manifest.precisions["mask2former"].metrics["method"] = precision.METHODS["mask2former"] - 1
    manifest.save()
    calls = []

    def counted(*args, **kwargs):
        calls.append(args)
        return precision.measure_mask2former(*args, **kwargs)

    monkeypatch.setitem(precision.MEASURES, "mask2former", counted)
    record = precision.measure(out, ["mask2former"])["mask2former"]
    assert len(calls) == 1 and record.metrics["method"] == precision.METHODS["mask2former"]
    precision.measure(out, ["mask2former"])  # now current: reused
    assert len(calls) == 1


@needs_bf16
def test_failing_gate_serves_fp32(measured, tmp_path, monkeypatch):
    out = _copy(measured[0], tmp_path / "artifacts")
    monkeypatch.setattr(precision, "MEASURES", {})  # a new gate re-judges the stored metrics
    impossible = {"mask2former": {"semantic_pixel_agreement": 1.01}, "sam2": {"min_iou": 1.01}}
    records = precision.measure(out, ["mask2former", "sam2"], gates=impossible)
    for name in ("mask2former", "sam2_image_encoder", "sam2_prompt_decoder"):
        record = Manifest(out).precisions[name]
        assert record.status == "failed" and not record.passed and record.served_precision == "fp32"
        assert "needs >= 1.01" in record.reason and "served in fp32" in record.reason
        assert records[name].gate[next(iter(records[name].gate))]  # the gate it was judged by is recorded
    served = precision.graph_precisions(Manifest(out), "bf16")
    assert served["mask2former"] == served["sam2_image_encoder"] == served["sam2_prompt_decoder"] == "fp32"
    # A trivially loose gate passes the same metrics: served in bf16.
    loose = {"mask2former": {k: ["<=", 2.0] if op == "<=" else [">=", 0.0]
                             for k, (op, _) in precision.GATES["mask2former"].items()}}
    record = precision.measure(out, ["mask2former"], gates=loose)["mask2former"]
    assert record.passed and record.served_precision == "bf16"
    assert precision.graph_precisions(Manifest(out), "bf16")["mask2former"] == "bf16"



@needs_bf16
def test_video_serves_the_largest_passing_tier(measured, tmp_path, monkeypatch):
    """Re-judged with a gate at the encoder-alone run's median IoU: the encoder serves bf16, and so
    does each further tier's graphs while every tier up to it meets that bound."""
    out = _copy(measured[0], tmp_path / "artifacts")
    monkeypatch.setattr(precision, "MEASURES", {})  # a new gate re-judges the stored metrics
    tiers = Manifest(out).precisions[precision.VIDEO_ENCODER].metrics["tiers"]
    bound = tiers[0]["median_iou"]
    expected = set()
    for tier in tiers:
        if tier["median_iou"] < bound:
            break
        expected = set(tier["bf16"])
    precision.measure(out, ["sam2_video"], gates={"sam2_video": {"median_iou": bound, "min_iou": 0.0}})
    served = precision.graph_precisions(Manifest(out), "bf16")
    assert precision.VIDEO_ENCODER in expected
    assert {g for g in precision.SAM2_VIDEO_GRAPHS if served[g] == "bf16"} == expected
    # A gate above the encoder-alone figure: everything in fp32.
    precision.measure(out, ["sam2_video"], gates={"sam2_video": {"median_iou": min(bound + 1e-6, 1.01),
                                                                 "min_iou": 0.0}})
    assert {precision.graph_precisions(Manifest(out), "bf16")[g] for g in precision.SAM2_VIDEO_GRAPHS} == {"fp32"}


def test_cpu_without_bf16_skips_with_reason(all_family_artifacts, tmp_path, monkeypatch):
    out = _copy(all_family_artifacts, tmp_path / "artifacts", keep={"mask2former", "grounding_dino"})
    monkeypatch.setattr(precision, "MEASURES", {})  # nothing may run
    no_bf16 = {"avx512f", "avx2"}
    records = precision.measure(out, flags=no_bf16)
    assert sorted(records) == ["grounding_dino", "mask2former"]
    for record in records.values():
        assert record.status == "skipped" and record.served_precision == "fp32" and not record.metrics
        assert "no native bf16" in record.reason and record.cpu == "no native bf16"
    assert Manifest(out).precisions["mask2former"].status == "skipped"
    assert precision.graph_precisions(Manifest(out), "bf16", flags=no_bf16) == {"grounding_dino": "fp32",
                                                                                "mask2former": "fp32"}
    assert precision.graph_precisions(Manifest(out), "auto", flags=no_bf16) == {"grounding_dino": "fp32",
                                                                                "mask2former": "fp32"}
    with pytest.raises(ValueError, match="unknown precision"):
        precision.graph_precisions(Manifest(out), "fp16")
    with pytest.raises(precision.PrecisionError, match="unknown model families"):
        precision.measure(out, ["sam3"], flags=no_bf16)


def test_judge_and_detection_matching():
    gate = {"median_iou": [">=", 0.98], "max_score_delta": ["<=", 0.05]}
    assert precision.judge({"median_iou": 0.99, "max_score_delta": 0.01}, gate) == []
    failures = precision.judge({"median_iou": 0.5}, gate)
    assert failures == ["median_iou 0.5 (needs >= 0.98)", "max_score_delta not measured"]
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    b = np.array([[21, 20, 31, 30], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    pairs = precision._match(a, b, 0.5)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 1), (1, 0)]



def test_segment_settings_lowered_only_when_the_served_ones_keep_nothing():
    """Random weights at real size score every query about 1/num_labels: at the served thresholds
    the panoptic comparison would compare nothing with nothing."""
    from segserve.common import mask2former_post as post

    rng = np.random.default_rng(3)
    queries, labels, size = 12, 40, (64, 64)
    flat = {"class_queries_logits": rng.normal(0, 0.05, (1, queries, labels + 1)).astype(np.float32),
            "masks_queries_logits": np.full((1, queries, 16, 16), -4.0, np.float32)}
    for k in range(queries):  # each query covers its own 4x4 block of a 4x4 grid
        flat["masks_queries_logits"][0, k, 4 * (k // 4):4 * (k // 4) + 4, 4 * (k % 4):4 * (k % 4) + 4] = 4.0
    flat["class_queries_logits"][..., -1] -= 1.0  # "no object" never wins
    served = {"threshold": 0.5, "mask_threshold": 0.5, "overlap_mask_area_threshold": 0.8}

    def segments(logits, options):
        return post.post_process_panoptic_segmentation(logits["class_queries_logits"], logits["masks_queries_logits"],
                                                       target_sizes=[size], mask_size=16, **options)[0].segments_info

    assert segments(flat, served) == []
    lowered = precision._segment_settings(post, flat, [size], 16, served)
    assert lowered["threshold"] < 0.05 and lowered["mask_threshold"] == lowered["threshold"] / 2
    assert len(segments(flat, lowered)) >= 1
    confident = {**flat, "class_queries_logits": flat["class_queries_logits"].copy()}
    confident["class_queries_logits"][0, :3, 0] += 12.0  # three queries sure of label 0
    assert segments(confident, served) and precision._segment_settings(post, confident, [size], 16, served) is served


@needs_bf16
def test_model_info_json_and_message(measured):
    from segserve.orchestrator.model_info import add_graphs
    from segserve.repository.builder import model_info
    from segserve.v1 import segmentation_pb2 as pb

    out, records = measured
    manifest = Manifest(out)
    runtimes = {n: ("openvino", records[n].served_precision) for n in ALL_GRAPHS}
    info = json.loads(model_info(manifest, graphs=runtimes))
    for name in ALL_GRAPHS:
        assert info[name]["runtime"] == "openvino"
        assert info[name]["precision"] == records[name].served_precision
        assert info[name]["bf16_gate"]["status"] == records[name].status
    plain = json.loads(model_info(manifest))  # no choice given: ONNX Runtime fp32
    assert {plain[n]["runtime"] for n in ALL_GRAPHS} == {"onnxruntime"}
    message = pb.ModelInfo(family="sam2")
    add_graphs(message, info, ["sam2_image_encoder", "sam2_prompt_decoder"])
    assert sorted(message.graphs) == ["sam2_image_encoder", "sam2_prompt_decoder"]
    graph = message.graphs["sam2_prompt_decoder"]
    assert (graph.runtime, graph.precision, graph.bf16_gate) == (
        "openvino", records["sam2_prompt_decoder"].served_precision, records["sam2_prompt_decoder"].status)
    assert graph.bf16_gate_detail
    older = pb.ModelInfo()
    add_graphs(older, {"mask2former": {"sha256": "x"}})  # an older repository's model_info: nothing to add
    assert not older.graphs


@needs_bf16
def test_served_bf16_reports_runtime_and_precision(measured, tmp_path, photo):
    """A bf16 build serves a graph in bf16 only when its gate passed; the gRPC response says how."""
    from segserve.client import SegservClient
    from segserve.orchestrator.settings import Settings
    from segserve.repository.builder import build_repository
    from segserve.runtime.stack import start_stack

    out, records = measured
    artifacts = _copy(out, tmp_path / "artifacts", keep={"mask2former"})
    repository = tmp_path / "repository"
    build_repository(artifacts, repository, "embedded", cpu_runtime="openvino", precision="bf16",
                     options={"graph_cache_dir": str(tmp_path / "ov_cache")})
    expected = records["mask2former"].served_precision
    chosen = json.loads((repository / "repository.json").read_text())["graph_runtimes"]["mask2former"]
    assert chosen == {"runtime": "openvino", "precision": expected}
    with start_stack(repository, tmp_path / "triton", Settings()) as stack, SegservClient(stack.address) as client:
        result = client.segment(photo)
    graph = result.model.graphs["mask2former"]
    assert (graph.runtime, graph.precision, graph.bf16_gate) == ("openvino", expected, records["mask2former"].status)
