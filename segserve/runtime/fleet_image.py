"""The fleet Triton image (docker/triton.Dockerfile), described once for the code that must match it.

The fleet runs NGC Triton with segserve's Python models; what those models may import is the
image's Python version and package set. The CPU proof (`fleet_python`, used by
tests/test_fleet_cpu.py and `segserve serve --fleet-python`) builds the same environment here: the
image's Python, the packages of requirements/triton.txt and nothing else, and the image's copy of
the segserve runtime package, served by the embedded tritonserver of the same Triton release.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from segserve.triton_models.runtime_check import RUNTIME_PARTS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = PROJECT_ROOT / "segserve"
DOCKERFILE = PROJECT_ROOT / "docker" / "triton.Dockerfile"
REQUIREMENTS = PROJECT_ROOT / "requirements" / "triton.txt"
GPU_REQUIREMENTS = PROJECT_ROOT / "requirements" / "triton-gpu.txt"


@dataclass(frozen=True)
class NgcRelease:
    triton: str  # tritonserver version in the image
    python: str  # the image's python3
    onnxruntime: str  # ONNX Runtime of its onnxruntime backend (what the CPU stand-ins run)
    # TensorRT of its tensorrt backend: an engine loads only in the TensorRT that built it, so
    # `segserve export --tensorrt` must run this version (pyproject's `gpu` extra pins it).
    tensorrt: str = ""


# From NVIDIA's Triton release notes (support matrix). TensorRT is the plain `-py3` image's; the
# `-trtllm-python-py3` variant of the same tag ships another (10.4.0 for 24.10).
NGC_RELEASES = {"24.10": NgcRelease(triton="2.51.0", python="3.10", onnxruntime="1.19.2", tensorrt="10.5.0")}


class FleetEnvironmentError(RuntimeError):
    pass


def dockerfile_release(dockerfile: Path = DOCKERFILE) -> str:
    """The NGC release the image is built FROM (`ARG TRITON_RELEASE=...`)."""
    match = re.search(r"^ARG TRITON_RELEASE=(\S+)$", dockerfile.read_text(), re.MULTILINE)
    if not match:
        raise FleetEnvironmentError(f"{dockerfile}: no `ARG TRITON_RELEASE=` line")
    return match.group(1)


def release() -> NgcRelease:
    name = dockerfile_release()
    if name not in NGC_RELEASES:
        raise FleetEnvironmentError(f"{DOCKERFILE} is built from NGC {name}, which NGC_RELEASES does not describe")
    return NGC_RELEASES[name]


def pinned(requirements: Path = REQUIREMENTS) -> dict[str, str]:
    """name -> version of a pinned requirements file (names normalised as pip does)."""
    pins = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise FleetEnvironmentError(f"{requirements}: {line!r} is not pinned with ==")
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def find_python(version: str) -> Path:
    """An interpreter of `version` with its shared libpython (the Python backend stub links it)."""
    candidates = [shutil.which(f"python{version}") or ""]
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}*/bin/python{version}"), reverse=True)
    candidates += [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys, sysconfig; print('%d.%d' % sys.version_info[:2]); "
                                  "print(sysconfig.get_config_var('Py_ENABLE_SHARED'))"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = out.stdout.split()
        if out.returncode == 0 and lines[:2] == [version, "1"]:
            return Path(candidate)
    raise FleetEnvironmentError(f"no Python {version} with a shared libpython found (PATH, pyenv, /usr): the fleet "
                                f"image's Python models run on Python {version}")


@dataclass(frozen=True)
class PythonRuntime:
    """The Python that Triton's Python-backend stub runs: its version, where libpython is, and the
    import path the models get (PYTHONPATH; nothing else is added)."""

    version: str
    libdir: str
    paths: tuple[str, ...]
    bindir: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def current(cls) -> "PythonRuntime":
        """This interpreter with this venv and the project: the embedded target's default."""
        return cls(f"{sys.version_info.major}.{sys.version_info.minor}", sysconfig.get_config_var("LIBDIR") or "",
                   (str(PROJECT_ROOT), sysconfig.get_paths()["purelib"]), str(Path(sys.executable).parent))


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise FleetEnvironmentError(f"{what} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def copy_runtime_package(dest: Path) -> Path:
    """The segserve runtime as the image holds it: `dest/segserve/{__init__.py, common, triton_models}`."""
    target = dest / "segserve"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in RUNTIME_PARTS:
        source = PACKAGE_ROOT / part
        if source.is_dir():
            shutil.copytree(source, target / part, ignore=ignore)
        else:
            shutil.copy2(source, target / part)
    return dest


def fleet_python(workspace: Path) -> PythonRuntime:
    """The image's Python with exactly requirements/triton.txt (a venv, built once per pin set) and
    the image's copy of the segserve runtime (fresh each call, so it is this checkout's code)."""
    workspace = Path(workspace).resolve()  # Triton runs from its own workspace: absolute paths only
    image = release()
    python = find_python(image.python)
    venv = workspace / f"fleet-python{image.python}-{_digest(REQUIREMENTS.read_text(), str(python))}"
    marker = venv / ".segserve-complete"
    if not marker.is_file():
        shutil.rmtree(venv, ignore_errors=True)
        _run([str(python), "-m", "venv", str(venv)], f"creating a Python {image.python} venv")
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "-r", str(REQUIREMENTS)],
             f"installing {REQUIREMENTS.name} into it")
        marker.touch()
    site = venv / "lib" / f"python{image.python}" / "site-packages"
    libdir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    runtime = copy_runtime_package(workspace / "fleet-runtime-package")
    return PythonRuntime(image.python, libdir, (str(runtime), str(site)), str(venv / "bin"))


def standin_openvino() -> str:
    """The OpenVINO the stand-ins of openvino-backend graphs run: segserve's own pin (pyproject), the
    release the embedded target runs. NGC 24.10's openvino backend is built with an older OpenVINO
    (2024.x): what this proof cannot show is a difference between the two releases."""
    match = re.search(r'"openvino==([^"]+)"', (PROJECT_ROOT / "pyproject.toml").read_text())
    if not match:
        raise FleetEnvironmentError("pyproject.toml pins no openvino==")
    return match.group(1)


def standin_libraries(workspace: Path) -> Path:
    """ONNX Runtime (the release of the image's onnxruntime backend) and OpenVINO (`standin_openvino`)
    for the image's Python, in a folder of its own that only the CPU stand-ins of the graph models
    put on their path: they stand in for Triton's onnxruntime and openvino backends and are not part
    of the image's Python environment. `--no-deps`: both import with the image's numpy alone
    (OpenVINO's telemetry package is optional; pip caches the wheels)."""
    image = release()
    python = find_python(image.python)
    openvino = standin_openvino()
    target = Path(workspace).resolve() / f"standin-ort{image.onnxruntime}-ov{openvino}-py{image.python}"
    if not (target / ".segserve-complete").is_file():
        shutil.rmtree(target, ignore_errors=True)
        _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
              f"onnxruntime=={image.onnxruntime}", f"openvino=={openvino}"],
             "installing ONNX Runtime and OpenVINO for the CPU stand-ins")
        (target / ".segserve-complete").touch()
    return target
