"""The CLI, the orchestrator's and Triton's metrics, and the launcher's failure modes."""
import subprocess
import sys
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image

from segserve.runtime.triton import EmbeddedTriton, TritonLaunchError


def _metrics(url: str) -> str:
    return urllib.request.urlopen(url, timeout=10).read().decode()


def test_segment_cli_writes_mask_and_overlay(stack, client, photo, tmp_path):
    image_path = tmp_path / "photo.png"
    Image.fromarray(photo).save(image_path)
    mask_path, overlay_path = tmp_path / "mask.png", tmp_path / "overlay.png"
    done = subprocess.run(
        [sys.executable, "-m", "segserve.cli", "segment", str(image_path), "--point", "120,150,1", "--box",
         "60,40,330,380", "--out", str(mask_path), "--overlay", str(overlay_path), "--server", stack.address],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"random_weights": true' in done.stdout
    expected = client.mask_from_prompt(image=photo, points=[(120, 150, 1)], boxes=[(60, 40, 330, 380)])
    np.testing.assert_array_equal(np.asarray(Image.open(mask_path)) > 0, expected.objects[0].best.mask)
    overlay = np.asarray(Image.open(overlay_path))
    assert overlay.shape == photo.shape and not np.array_equal(overlay, photo)


def test_segment_cli_reports_bad_input(stack, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    done = subprocess.run([sys.executable, "-m", "segserve.cli", "segment", str(bad), "--point", "1,1",
                           "--server", stack.address], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "INVALID_ARGUMENT" in done.stderr and "image" in done.stderr
    done = subprocess.run([sys.executable, "-m", "segserve.cli", "segment", str(bad), "--point", "1,x"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--point" in done.stderr


def test_orchestrator_metrics(stack, client, photo):
    opened = client.open_image(photo)
    client.mask_from_prompt(image_id=opened.image_id, points=[(5, 5, 1)])
    text = _metrics(f"http://127.0.0.1:{stack.orchestrator.service.settings.metrics_port}/metrics")
    assert 'segserve_open_sessions{kind="image"}' in text
    assert 'segserve_request_latency_seconds_bucket{le="0.005",method="MaskFromPrompt"}' in text
    assert 'segserve_stage_latency_seconds_count{stage="decode_prompt"}' in text
    assert 'segserve_requests_total{code="OK",method="OpenImage"}' in text
    with pytest.raises(grpc.RpcError):
        client.mask_from_prompt(image_id="missing", points=[(1, 1)])
    text = _metrics(f"http://127.0.0.1:{stack.orchestrator.service.settings.metrics_port}/metrics")
    assert 'segserve_requests_total{code="NOT_FOUND",method="MaskFromPrompt"}' in text
    client.close_image(opened.image_id)


def _held_sessions(stack) -> float:
    for line in _metrics(stack.triton.metrics_url).splitlines():
        if line.startswith("segserve_triton_image_sessions{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("segserve_triton_image_sessions missing from Triton's metrics")


def test_close_image_frees_the_embeddings_in_triton(stack, client, photo):
    opened = client.open_image(photo)
    held = _held_sessions(stack)
    client.close_image(opened.image_id)
    client.close_image(client.open_image(photo).image_id)  # the gauge updates on the next execute
    assert _held_sessions(stack) == held - 1
    text = _metrics(stack.triton.metrics_url)
    assert 'nv_inference_request_success{model="sam2_image_session",version="1"}' in text


def test_launcher_refuses_busy_ports_and_missing_repository(stack, tmp_path):
    busy = int(stack.triton.grpc_url.rsplit(":", 1)[1])
    with pytest.raises(TritonLaunchError, match=f"grpc port {busy} is already in use"):
        EmbeddedTriton(stack.triton.model_repository, tmp_path, grpc_port=busy, http_port=0, metrics_port=0).start()
    with pytest.raises(TritonLaunchError, match="does not exist"):
        EmbeddedTriton(tmp_path / "nope", tmp_path).start()


def test_launcher_reports_a_broken_repository(tmp_path):
    from segserve.runtime.triton import free_port

    repository = tmp_path / "repo"
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\n')
    (repository / "broken" / "1" / "model.py").write_text("raise RuntimeError('boom at import')\n")
    triton = EmbeddedTriton(repository, tmp_path / "ws", free_port(), free_port(), free_port())
    with pytest.raises(TritonLaunchError, match="exited|not ready"):
        triton.start(timeout_s=60)


def test_serve_command_runs_the_stack_and_stops_cleanly(embedded_repository, photo, photo_click_matches, tmp_path):
    import signal
    import time

    from segserve.client import SegservClient
    from segserve.runtime.triton import free_port

    ports = {name: free_port() for name in ("port", "metrics-port", "triton-grpc-port", "triton-http-port",
                                            "triton-metrics-port")}
    command = [sys.executable, "-m", "segserve.cli", "serve", "--repository", str(embedded_repository),
               "--workspace", str(tmp_path / "ws"), *[f"--{k}={v}" for k, v in ports.items()]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not lines or "segserve ready" not in lines[-1]:  # log lines (a key warning) may come first
            lines.append(process.stdout.readline())
            assert lines[-1], "".join(lines)
        with SegservClient(f"127.0.0.1:{ports['port']}") as c:
            assert c.healthy()
            photo_click_matches(c.mask_from_prompt(image=photo, points=[(10, 10, 1)]), 10, 10)
        assert "segserve_requests_total" in _metrics(f"http://127.0.0.1:{ports['metrics-port']}/metrics")
    finally:
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    from segserve.runtime.triton import port_is_free
    assert port_is_free(ports["triton-grpc-port"]) and port_is_free(ports["port"])
