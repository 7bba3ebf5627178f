"""The Locust load test (`make load`) in miniature: 2 users for 10 s against the session's real
embedded stack (SAM 2 only there, so the panoptic, text and video users drop out), through loadtests/run.py."""
from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from loadtests import run as loadrun

# Never `import locust` here: it monkey-patches the whole process with gevent (threads, sockets),
# which would break the in-process orchestrator and every later test. Locust runs as a subprocess.
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed"),
    pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout"),
]


@pytest.fixture(scope="module")
def load_summary(stack, tmp_path_factory):
    out = tmp_path_factory.mktemp("load")
    return out, loadrun.run_load(stack, out, users=2, spawn_rate=2, run_time="10s", sample_interval_s=2)


def test_no_request_failed(load_summary):
    _, summary = load_summary
    assert not summary["killed"], "Locust had to be killed (see locust.log)"
    assert summary["failures"] == 0, summary["failure_messages"]
    assert loadrun.problems(summary) == []
    names = {r["name"] for r in summary["rpcs"]}
    # The interactive user opens an image first and clicks on it; the cached user sends bytes.
    assert {"OpenImage", "MaskFromPrompt", "MaskFromPrompt[bytes]"} <= names, names
    assert summary["requests"] >= 5
    for row in summary["rpcs"]:
        assert row["requests"] > 0 and row["p50_ms"] is not None and row["p50_ms"] <= row["p99_ms"]


def test_unserved_users_left_out(load_summary, stack):
    """The session stack serves SAM 2 only: the locustfile asks GetModelInfo and drops the users
    whose family is missing (panoptic, text, video) before spawning any."""
    from segserve.client import SegservClient

    out, _ = load_summary
    with SegservClient(stack.address) as client:
        families = {m.family for m in client.model_info().models}
    needs = {"PanopticUser": "mask2former", "TextToMaskUser": "grounding_dino", "VideoUser": "sam2_video"}
    missing = [user for user, family in needs.items() if family not in families]
    if not missing:
        pytest.skip("this stack serves every family")
    log = (out / "locust.log").read_text()
    left_out = next((line for line in log.splitlines() if "leaving out" in line), "")
    for user in missing:
        assert user in left_out, log
        assert f'"{user}"' not in log, log  # not among the spawned classes


def test_reports_written(load_summary):
    out, summary = load_summary
    for name in ("locust_stats.csv", "locust_failures.csv", "locust_stats.json", "report.html", "summary.json",
                 "resources.csv", "locust.log"):
        assert (out / name).is_file(), name
    assert "<html" in (out / "report.html").read_text()[:2000].lower()
    csv_rows = {r.name for r in loadrun.read_stats(out / "locust_stats.csv")}
    assert "Aggregated" in csv_rows and "OpenImage" in csv_rows
    assert json.loads((out / "summary.json").read_text())["requests"] == summary["requests"]


def test_metrics_scraped(load_summary):
    out, summary = load_summary
    for part in ("orchestrator", "triton"):
        for when in ("start", "end"):
            assert (out / "metrics" / f"{part}_{when}.prom").stat().st_size > 0
    assert summary["series_scraped"] == {"orchestrator": {"segserve_request_latency_seconds": True},
                                         "triton": {"nv_inference_request_success": True}}
    end = (out / "metrics" / "orchestrator_end.prom").read_text()
    assert 'segserve_request_latency_seconds_count{method="MaskFromPrompt"}' in end
    # The server saw the load: every orchestrator call OK, the session model ran in Triton.
    served = summary["server"]["orchestrator_requests"]
    assert served.get("code=OK,method=MaskFromPrompt", 0) > 0
    assert not [k for k in served if not k.startswith("code=OK")], served
    assert summary["server"]["triton_success"].get("model=sam2_image_session", 0) > 0


def test_memory_recorded(load_summary, stack):
    _, summary = load_summary
    memory = summary["memory_mib"]
    assert memory["triton_start"] > 0 and memory["triton_end"] > 0 and memory["orchestrator_end"] > 0
    names = {p["name"] for p in memory["triton_processes_end"]}
    assert "tritonserver" in names and "triton_python_backend_stub" in names
