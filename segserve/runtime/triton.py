"""Embedded Triton: run the `tritonserver` binary bundled in the nvidia-pytriton wheel.

The wheel ships the server, the Python backend and one backend stub per Python version; the stub
must sit inside the backend directory, so a runnable backend tree is assembled once under the
workspace. Python models run in the stub's embedded interpreter, which is told where this venv's
packages and the project live through PYTHONPATH.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class TritonLaunchError(RuntimeError):
    pass


def _pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TritonLaunchError(
            "nvidia-pytriton is not installed: it provides the embedded tritonserver binary "
            "(pip install nvidia-pytriton==0.7.0, or run `make setup`)"
        ) from exc
    return Path(pytriton.__file__).resolve().parent


def server_binary() -> Path:
    binary = _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonLaunchError(f"tritonserver binary missing at {binary}; reinstall nvidia-pytriton")
    return binary


def prepare_backends(workspace: Path) -> Path:
    """Assemble backends/python with the stub for this interpreter's Python version."""
    dist = _pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonLaunchError(f"no Python backend stub for Python {version} in {stub.parent.parent}")
    backends = workspace / "backends"
    target = backends / "python"
    if not (target / "triton_python_backend_stub").is_file():
        shutil.rmtree(backends, ignore_errors=True)
        shutil.copytree(dist / "backends", backends)
        shutil.copy2(stub, target / "triton_python_backend_stub")
    return backends


def server_env() -> dict[str, str]:
    env = os.environ.copy()
    libs = _pytriton_dir().parent / "nvidia_pytriton.libs"
    # The stub links libpython3.x: prefer the library of the interpreter running us, so the models
    # see the same standard library and the venv's packages.
    lib_dirs = [sysconfig.get_config_var("LIBDIR") or "", str(libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(d for d in lib_dirs if d)
    site_packages = sysconfig.get_paths()["purelib"]
    py_path = [str(PROJECT_ROOT), site_packages, env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = ":".join(p for p in py_path if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    return env


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class EmbeddedTriton:
    """A tritonserver process bound to loopback ports, serving one model repository."""

    model_repository: Path
    workspace: Path
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    log_verbose: int = 0
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.workspace / "tritonserver.log"

    def command(self) -> list[str]:
        return [
            str(server_binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={prepare_backends(self.workspace)}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            "--grpc-address=127.0.0.1",
            "--http-address=127.0.0.1",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--log-verbose={self.log_verbose}",
            # Python-backend stubs talk to the server through /dev/shm regions.
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=16777216",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 180.0) -> "EmbeddedTriton":
        if not self.model_repository.is_dir():
            raise TritonLaunchError(f"model repository {self.model_repository} does not exist; run `segserve build-repo`")
        for name, port in (("grpc", self.grpc_port), ("http", self.http_port), ("metrics", self.metrics_port)):
            if not port_is_free(port):
                raise TritonLaunchError(f"{name} port {port} is already in use; choose another with --{name}-port")
        self.workspace.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True
        )
        log.close()
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        client = grpcclient.InferenceServerClient(self.grpc_url)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise TritonLaunchError(
                        f"tritonserver exited with code {self.process.returncode}; last log lines:\n{self.log_tail()}"
                    )
                with contextlib.suppress(Exception):
                    if client.is_server_ready():
                        return
                time.sleep(0.2)
        finally:
            client.close()
        self.stop()
        raise TritonLaunchError(f"tritonserver not ready after {timeout_s:.0f} s; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # SIGINT asks Triton to unload models and exit; the stubs go with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "EmbeddedTriton":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
