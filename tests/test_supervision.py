"""Faults of Triton under the real processes: kill -9, SIGSTOP / SIGCONT, restarts that keep failing,
an orchestrator that dies, and an orchestrator alone whose Triton goes away and comes back.

Each test runs its own Triton (the session-wide `stack` must not be killed), on loopback ports,
and is bounded: every wait has a deadline, and every process is stopped even when an assertion fails.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segserve.client import SegservClient
from segserve.orchestrator import server as orchestrator_server
from segserve.orchestrator.settings import Settings
from segserve.runtime.stack import start_stack
from segserve.runtime.supervisor import RestartPolicy
from segserve.runtime.triton import (SHM_PREFIX_HEAD, EmbeddedTriton, free_port, port_is_free,
                                     remove_orphaned_shm_regions)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RECOVERY_S = 60.0  # kill -9 of Triton -> SERVING again (measured here: ~6 s)
FLIP_S = 3.0  # Triton gone or stopped -> NOT_SERVING (probe every 0.5 s, 1 s probe deadline)

pytestmark = pytest.mark.timeout(300)


def _health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def _wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.05) -> float:
    """Seconds until `condition()` held; fails the test after `timeout_s`."""
    start = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - start
        assert elapsed < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(interval_s)
    return time.monotonic() - start


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (create time checked: a reused pid is another process)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _zombie_triton(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE and process.name() == "tritonserver"
    except psutil.NoSuchProcess:
        return False


def _works(address: str, photo, photo_click_matches) -> None:
    """The stack answers again, and with the right mask (transformers' for the same click)."""
    photo_click_matches.reference(200, 150)  # the PyTorch reference first, outside any deadline
    with SegservClient(address, timeout_s=60) as client:
        image = client.open_image(photo)
        result = client.mask_from_prompt(image_id=image.image_id, points=[(200, 150, 1)])
        photo_click_matches(result, 200, 150)
        client.close_image(image.image_id)


@pytest.fixture(scope="module")
def supervised(embedded_repository, tmp_path_factory):
    """A stack of our own with supervision on; the tests below stop and kill its Triton."""
    settings = Settings(triton_timeout_s=3.0, max_image_sessions=8, embedding_cache_size=2)
    stack = start_stack(embedded_repository, tmp_path_factory.mktemp("supervised"), settings,
                        restart=RestartPolicy(initial_backoff_s=0.1))
    try:
        yield stack
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stack.triton.process.pid, signal.SIGCONT)  # a failed SIGSTOP test must not wedge stop()
        stack.stop()


def test_sigstop_turns_health_not_serving_and_sigcont_recovers_without_restart(supervised, photo, photo_click_matches):
    address, pid = supervised.address, supervised.triton.process.pid
    _wait_for(lambda: _health(address) == SERVING, 30, "SERVING before the test")
    os.kill(pid, signal.SIGSTOP)
    try:
        flipped = _wait_for(lambda: _health(address) == NOT_SERVING, FLIP_S, "NOT_SERVING after SIGSTOP")
        assert _health(address, "segserve.v1.Segmentation") == NOT_SERVING
        assert _health(address, "liveness") == SERVING  # the process itself is fine: no pod restart
        with SegservClient(address, timeout_s=2.0) as client:
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as failure:
                client.mask_from_prompt(image=photo, points=[(200, 150, 1)])
            assert failure.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
            assert time.monotonic() - start < 5.0
    finally:
        os.kill(pid, signal.SIGCONT)
    recovered = _wait_for(lambda: _health(address) == SERVING, 10, "SERVING after SIGCONT")
    _works(address, photo, photo_click_matches)
    assert supervised.triton.process.pid == pid and supervised.supervisor.restarts == 0
    print(f"SIGSTOP -> NOT_SERVING in {flipped:.2f} s; SIGCONT -> SERVING in {recovered:.2f} s")


def test_kill9_triton_is_cleaned_up_and_restarted(supervised, photo, photo_click_matches):
    address, triton = supervised.address, supervised.triton
    _wait_for(lambda: _health(address) == SERVING, 30, "SERVING before the test")
    with SegservClient(address, timeout_s=30) as client:
        open_session = client.open_image(photo).image_id
    old = psutil.Process(triton.process.pid)
    stubs = old.children(recursive=True)
    regions = triton.shm_regions()
    assert any("triton_python_backend_stub" in " ".join(s.cmdline()) for s in stubs), stubs
    assert regions, "the Python backend should hold shm regions under our prefix"

    os.kill(old.pid, signal.SIGKILL)
    start = time.monotonic()
    flipped = _wait_for(lambda: _health(address) == NOT_SERVING, FLIP_S, "NOT_SERVING after kill -9")
    with SegservClient(address, timeout_s=10) as client, pytest.raises(grpc.RpcError) as failure:
        client.mask_from_prompt(image_id=open_session, points=[(200, 150, 1)])
    assert failure.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND), failure.value

    _wait_for(lambda: _health(address) == SERVING, RECOVERY_S, "SERVING after the restart", interval_s=0.1)
    recovered = time.monotonic() - start
    assert supervised.supervisor.restarts == 1 and triton.process.pid != old.pid
    # The dead server's stubs are gone, its zombie reaped, its shm regions removed.
    assert not [s.pid for s in stubs if _alive(s)]
    with pytest.raises(ChildProcessError):
        os.waitpid(old.pid, os.WNOHANG)
    assert not [c.pid for c in psutil.Process().children() if _zombie_triton(c)]
    assert not [p.name for p in regions if p.exists()]
    # A session of the dead server is gone; new ones work.
    with SegservClient(address, timeout_s=30) as client, pytest.raises(grpc.RpcError) as failure:
        client.mask_from_prompt(image_id=open_session, points=[(200, 150, 1)])
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND, failure.value
    _works(address, photo, photo_click_matches)
    print(f"kill -9 -> NOT_SERVING in {flipped:.2f} s, SERVING again in {recovered:.1f} s")


# ---------------------------------------------------------------------------------------------
# `segserve serve` as a process
# ---------------------------------------------------------------------------------------------


def _serve(repository: Path, workspace: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    ports = {"port": port, "metrics-port": free_port(), "triton-grpc-port": free_port(),
             "triton-http-port": free_port(), "triton-metrics-port": free_port()}
    command = [sys.executable, "-m", "segserve.cli", "serve", "--repository", str(repository),
               "--workspace", str(workspace), *[f"--{k}={v}" for k, v in ports.items()], *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT), ports["triton-grpc-port"]


def _read_until(process: subprocess.Popen, marker: str, timeout_s: float) -> str:
    seen = b""
    deadline = time.monotonic() + timeout_s
    while marker.encode() not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0 and process.poll() is None, f"no {marker!r}; output:\n{seen.decode(errors='replace')}"
        if select.select([process.stdout], [], [], min(remaining, 0.5))[0]:
            seen += os.read(process.stdout.fileno(), 65536)
    return seen.decode(errors="replace")


def _triton_of(serve: subprocess.Popen) -> psutil.Process:
    (triton,) = [c for c in psutil.Process(serve.pid).children() if c.name() == "tritonserver"]
    return triton


def _shm_prefix(triton: psutil.Process) -> str:
    (arg,) = [a for a in triton.cmdline() if "shm-region-prefix-name=" in a]
    return arg.split("=", 1)[1]


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)
    process.stdout.close()


def test_serve_exits_nonzero_after_failed_restarts(embedded_repository, tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(embedded_repository, repository)
    serve, _ = _serve(repository, tmp_path / "ws", "--triton-max-restarts=2", "--triton-restart-backoff-s=0.05")
    try:
        _read_until(serve, "segserve ready", 90)
        triton = _triton_of(serve)
        prefix = _shm_prefix(triton)
        # From now on Triton cannot start: the repository holds one model, which fails at import
        # (in a stub that the failed start must not leave behind).
        shutil.rmtree(repository)
        (repository / "broken" / "1").mkdir(parents=True)
        (repository / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\n')
        (repository / "broken" / "1" / "model.py").write_text("raise RuntimeError('broken on purpose')\n")
        triton.kill()
        output = serve.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        _end(serve)
    assert serve.returncode not in (0, None), output
    assert "failed to restart 2 times" in output and "could not be restarted" in output, output
    # Nothing of any of the three Tritons is left: no process with the prefix, no shm region.
    assert not [p.pid for p in psutil.process_iter() if _alive(p) and prefix in " ".join(_cmdline(p))]
    assert not list(Path("/dev/shm").glob(f"{prefix}*"))


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def test_triton_dies_with_a_killed_serve_and_its_regions_are_swept(embedded_repository, tmp_path, supervised):
    serve, triton_port = _serve(embedded_repository, tmp_path / "ws")
    triton, stubs = None, []
    try:
        _read_until(serve, "segserve ready", 90)
        triton = _triton_of(serve)
        stubs = triton.children(recursive=True)
        prefix = _shm_prefix(triton)
        serve.kill()  # as the forged-id request did: the orchestrator dies without stopping anything
        serve.wait(10)
        # PR_SET_PDEATHSIG: Triton goes with it; its stubs notice their parent is gone.
        _wait_for(lambda: not _alive(triton), 10, "Triton to die with serve")
        _wait_for(lambda: not [s for s in stubs if _alive(s)], 10, "the stubs to exit")
        _wait_for(lambda: port_is_free(triton_port), 10, "Triton's gRPC port to be free")
    finally:
        _end(serve)
        for process in [triton, *stubs] if triton is not None else []:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    # Its stubs exit on their own and here unlink their regions; whatever a harder death (an OOM kill
    # of the whole group) leaves is an orphan that the next start sweeps, never a live Triton's region.
    left = sorted(Path("/dev/shm").glob(f"{prefix}*"))
    print(f"regions left by the Triton killed with serve: {len(left)}")
    # A region of a Triton SIGKILLed together with its stubs: nothing refers to its prefix any more.
    dead = Path("/dev/shm") / f"{SHM_PREFIX_HEAD}{os.getpid()}_{os.urandom(4).hex()}_{os.urandom(8).hex()}"
    dead.write_bytes(b"\0" * 4096)
    live = supervised.triton.shm_regions()
    assert live
    removed = remove_orphaned_shm_regions()
    assert dead in removed and set(left) <= set(removed) and not dead.exists()
    assert not set(live) & set(removed) and all(p.exists() for p in live)


def test_orchestrator_alone_follows_a_remote_triton(embedded_repository, tmp_path, photo, photo_click_matches):
    triton = EmbeddedTriton(embedded_repository, tmp_path / "ws", free_port(), free_port(), free_port())
    triton.start(timeout_s=90)
    running = None
    try:
        running = orchestrator_server.start(Settings(triton_url=triton.grpc_url, grpc_port=0, metrics_port=-1,
                                                     triton_timeout_s=5.0))
        # Loopback unless told otherwise: the listening socket itself is bound to 127.0.0.1.
        listening = [c.laddr for c in psutil.Process().net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == running.port]
        def loopback(ip: str) -> bool:  # gRPC may listen on an IPv6 socket: ::ffff:127.0.0.1
            address = ipaddress.ip_address(ip)
            return (getattr(address, "ipv4_mapped", None) or address).is_loopback

        assert listening and all(loopback(a.ip) for a in listening), listening
        assert _health(running.address) == SERVING
        triton.stop()
        flipped = _wait_for(lambda: _health(running.address) == NOT_SERVING, FLIP_S, "NOT_SERVING without Triton")
        # Calls while Triton is away are UNAVAILABLE (GetModelInfo used to say INTERNAL).
        with SegservClient(running.address) as client, pytest.raises(grpc.RpcError) as failure:
            client.model_info()
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE, failure.value.details()
        triton.start(timeout_s=90)  # same ports: Triton came back
        recovered = _wait_for(lambda: _health(running.address) == SERVING, RECOVERY_S, "SERVING by itself",
                              interval_s=0.1)
        _works(running.address, photo, photo_click_matches)
        print(f"Triton gone -> NOT_SERVING in {flipped:.2f} s; back -> SERVING in {recovered:.1f} s")
    finally:
        if running is not None:
            running.stop(grace_s=0)
        triton.stop()
