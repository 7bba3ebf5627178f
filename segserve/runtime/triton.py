"""Embedded Triton: run the `tritonserver` binary bundled in the nvidia-pytriton wheel.

The wheel ships the server, the Python backend and one backend stub per Python version; the stub
must sit inside the backend directory, so a runnable backend tree is assembled once under the
workspace. Python models run in the stub's embedded interpreter, which is told where this venv's
packages and the project live through PYTHONPATH.

Lifetime: Triton runs in its own process group (its Python-backend stubs join it) and is told to
die with this process (PR_SET_PDEATHSIG), so a crashed orchestrator never leaves it holding the
ports. Its stubs exchange tensors through /dev/shm regions named from a prefix unique to this
instance, so the regions a killed Triton leaves behind can be removed without touching another
Triton on the same machine.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

from .fleet_image import PythonRuntime

SHM_DIR = Path("/dev/shm")


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


def prepare_backends(workspace: Path, version: str | None = None) -> Path:
    """Assemble backends/python with the stub for Python `version` (default: this interpreter's)."""
    dist = _pytriton_dir() / "tritonserver"
    version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonLaunchError(f"no Python backend stub for Python {version} in {stub.parent.parent}")
    backends = workspace / f"backends-py{version}"
    target = backends / "python"
    if not (target / "triton_python_backend_stub").is_file():
        shutil.rmtree(backends, ignore_errors=True)
        shutil.copytree(dist / "backends", backends)
        shutil.copy2(stub, target / "triton_python_backend_stub")
    return backends


def server_env(python: PythonRuntime | None = None) -> dict[str, str]:
    """The server's environment. By default the Python models see this interpreter's venv and the
    project; with `python` (e.g. the fleet image's Python and packages) they see that and nothing
    inherited, so a model importing anything beyond it fails as it would in the image."""
    env = os.environ.copy()
    libs = _pytriton_dir().parent / "nvidia_pytriton.libs"
    inherited_path = [] if python else [env.get("PYTHONPATH", "")]
    python = python or PythonRuntime.current()
    # The stub links libpython3.x: the library of that Python first, so the models see its
    # standard library.
    lib_dirs = [python.libdir, str(libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(d for d in lib_dirs if d)
    env["PYTHONPATH"] = ":".join(p for p in [*python.paths, *inherited_path] if p)
    env.pop("PYTHONHOME", None)
    env["PATH"] = f"{python.bindir}:{env.get('PATH', '')}" if python.bindir else env.get("PATH", "")
    env.update(python.extra_env)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    return env


# Resolved before any fork: the child may only make this one foreign call between fork and exec.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int):
    def preexec() -> None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


_spawn_requests: queue.SimpleQueue = queue.SimpleQueue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _spawner_loop() -> None:
    while True:
        task, future = _spawn_requests.get()
        try:
            future.set_result(task())
        except BaseException as exc:  # handed to the caller, which raises it
            future.set_exception(exc)


def _in_process_lifetime_thread(task):
    """Run `task` (a fork) in a daemon thread that lives as long as this process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: a Triton
    forked from a supervisor's or a caller's short-lived thread would be killed with that thread.
    """
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(target=_spawner_loop, name="segserve-triton-spawner", daemon=True)
            _spawner.start()
    future: Future = Future()
    _spawn_requests.put((task, future))
    return future.result()


# Only the regions of our Python backends carry this head: the sweep below never looks at others.
SHM_PREFIX_HEAD = "segserve_pybe_"


def _unique_shm_prefix() -> str:
    return f"{SHM_PREFIX_HEAD}{os.getpid()}_{secrets.token_hex(4)}_"


def orphaned_shm_regions() -> list[Path]:
    """Regions of embedded Tritons that no running process refers to any more.

    A region is in use only by its Triton (whose command line carries the prefix) and its stubs
    (whose command lines carry the region's name). Regions are listed before the processes are, so
    a region created meanwhile belongs to a process that the scan sees.
    """
    try:
        regions = [p for p in SHM_DIR.iterdir() if p.name.startswith(SHM_PREFIX_HEAD)]
    except OSError:
        return []
    if not regions:
        return []
    command_lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            command_lines.append(cmdline.read_bytes())
    in_use = b"\0".join(command_lines)

    def prefix(name: str) -> bytes:  # HEAD + "<pid>_<token>_<uuid>" -> HEAD + "<pid>_<token>_"
        pid, token = (name[len(SHM_PREFIX_HEAD):].split("_", 2) + ["", ""])[:2]
        return f"{SHM_PREFIX_HEAD}{pid}_{token}_".encode()

    return sorted(p for p in regions if prefix(p.name) not in in_use)


def remove_orphaned_shm_regions() -> list[Path]:
    """Remove what a Triton killed with its orchestrator (which then could not clean up) left behind.

    In a pod, /dev/shm is an emptyDir that outlives a container restart: without this sweep, each
    crash would leave up to hundreds of MiB counted against the pod's memory.
    """
    removed = orphaned_shm_regions()
    for path in removed:
        with contextlib.suppress(FileNotFoundError, PermissionError):
            path.unlink()
    return removed


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
    # The Python the models run on (default: this interpreter and venv; `fleet_image.fleet_python`
    # for the fleet image's).
    python: PythonRuntime | None = None
    process: subprocess.Popen | None = None
    # Names every Python-backend shm region of this instance (and of its restarts): the pid says
    # whose it is when one is found in /dev/shm, the random part keeps instances of one process apart.
    shm_prefix: str = field(default_factory=_unique_shm_prefix)

    def __post_init__(self) -> None:
        # Serialises stop() and reap(): whichever runs first kills the group and reaps.
        self._exit_lock = threading.Lock()

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
            f"--model-repository={self.model_repository.resolve()}",
            f"--backend-directory={prepare_backends(self.workspace.resolve(), self.python and self.python.version)}",
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
            # A stub starting on a loaded machine (importing numpy/OpenVINO, compiling graphs) can miss
            # the backend's 30 s default and the model fails to load as "not healthy".
            "--backend-config=python,stub-timeout-seconds=120",
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=16777216",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 600.0) -> "EmbeddedTriton":
        # Generous: OpenVINO compiles a graph at load (a minute for the SAM 2 encoder on 2 busy cores).
        if not self.model_repository.is_dir():
            raise TritonLaunchError(f"model repository {self.model_repository} does not exist; run `segserve build-repo`")
        for name, port in (("grpc", self.grpc_port), ("http", self.http_port), ("metrics", self.metrics_port)):
            if not port_is_free(port):
                raise TritonLaunchError(f"{name} port {port} is already in use; choose another with --{name}-port")
        self.workspace.mkdir(parents=True, exist_ok=True)
        remove_orphaned_shm_regions()
        if self.log_path.exists():  # keep the log of the previous run (a crash's) beside the new one
            self.log_path.replace(self.log_path.with_suffix(".previous.log"))
        command, env = self.command(), server_env(self.python)
        with open(self.log_path, "wb") as log:
            self.process = _in_process_lifetime_thread(lambda: subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                # The stubs' interpreters put the working directory on sys.path: with a Python of its
                # own, Triton must not run from the checkout, whose segserve would shadow the runtime's.
                cwd=self.workspace if self.python else None,
                preexec_fn=_die_with_parent(os.getpid())))
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        client = grpcclient.InferenceServerClient(self.grpc_url)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.exited():
                    code = self.reap()
                    raise TritonLaunchError(
                        f"tritonserver exited with code {code}; last log lines:\n{self.log_tail()}"
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

    def exited(self, block: bool = False) -> bool:
        """Whether Triton has exited, without reaping it (`block`: wait until it has).

        Until it is reaped, its pid (which is also its process group id) cannot be reused, so
        signalling the group afterwards reaches its own stubs and nothing else.
        """
        if self.process is None or self.process.returncode is not None:
            return True
        flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
        try:
            return os.waitid(os.P_PID, self.process.pid, flags) is not None
        except ChildProcessError:  # reaped meanwhile by another thread
            return True

    def reap(self) -> int | None:
        """After Triton exited: kill what is left of its group, reap it, remove its shm regions.

        A SIGKILLed Triton cannot stop its Python-backend stubs, and they keep running (they watch
        a parent that, as an unreaped zombie, still looks alive), holding GBs and the shm regions.
        """
        with self._exit_lock:
            if self.process is None:
                return None
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.remove_shm_regions()
            return self.process.returncode

    def shm_regions(self) -> list[Path]:
        """This instance's Python-backend regions in /dev/shm."""
        try:
            return sorted(p for p in SHM_DIR.iterdir() if p.name.startswith(self.shm_prefix))
        except OSError:
            return []

    def remove_shm_regions(self) -> list[Path]:
        removed = self.shm_regions()
        for path in removed:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return removed

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None:
            return
        if not self.exited():
            # SIGINT asks Triton to unload its models (stopping the stubs) and exit.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
            deadline = time.monotonic() + timeout_s
            while not self.exited() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.reap()  # SIGKILLs Triton too when it did not exit in time

    def __enter__(self) -> "EmbeddedTriton":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
