"""The fleet Triton image (docker/triton.Dockerfile) and what the fleet's Python models import stay in
step: the NGC release, the package set of requirements/triton*.txt, the runtime parts copied in, and
every third-party import a Triton Python model can reach. No server, no export."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from segserve.runtime import fleet_image
from segserve.triton_models.runtime_check import REQUIRED_PACKAGES, RUNTIME_PARTS

ROOT = fleet_image.PROJECT_ROOT
PACKAGE = ROOT / "segserve"
DOCKERFILE = fleet_image.DOCKERFILE.read_text()
# Never in the image's Python: graphs run on Triton's own backends.
FORBIDDEN = {"torch", "transformers", "onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt", "torchvision"}
# Third-party imports allowed beyond REQUIRED_PACKAGES, and only inside these functions or classes:
# CuPy where a tensor lives on a GPU (the image installs requirements/triton-gpu.txt); ONNX Runtime,
# OpenVINO and onnx in the embedded target's in-process graph runners (graph_runner.py).
CONFINED = {"cupy": None, "onnxruntime": {"OrtRunner"}, "openvino": {"OpenVinoRunner"}, "onnx": {"_onnx_io_names"}}


def _instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#")))
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_base_release_is_described_and_its_python_is_the_suites():
    release = fleet_image.dockerfile_release()
    assert release in fleet_image.NGC_RELEASES
    assert "FROM nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3" in _instructions()
    image = fleet_image.release()
    assert re.search(rf"NGC release {re.escape(release)} = Triton {re.escape(image.triton)}, Python "
                     rf"{re.escape(image.python)}\b", DOCKERFILE)
    # The embedded tritonserver has a Python-backend stub for that Python (tests/test_fleet_cpu.py
    # checks it runs the same Triton release).
    from segserve.runtime.triton import _pytriton_dir

    assert (_pytriton_dir() / "tritonserver" / "python_backend_stubs" / image.python / "triton_python_backend_stub").is_file()
    try:
        python = fleet_image.find_python(image.python)
    except fleet_image.FleetEnvironmentError as exc:
        pytest.skip(str(exc))
    version = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == image.python


def test_dockerfile_installs_exactly_the_requirements_without_resolving():
    instructions = _instructions()
    installs = [i for i in instructions if "pip install" in i]
    assert len(installs) == 1, installs
    words = installs[0].split("&&")[0].split()
    assert "--no-deps" in words
    files = [Path(words[i + 1]).name for i, w in enumerate(words) if w == "-r"]
    assert files == ["triton.txt", "triton-gpu.txt"]
    # Nothing but the flags and the two lists: no package named on the command line.
    rest = words[words.index("install") + 1:]
    assert [w for w in rest if not w.startswith("-") and not w.endswith(".txt")] == []
    assert "COPY requirements/triton.txt requirements/triton-gpu.txt /tmp/segserve-requirements/" in instructions


def test_dockerfile_copies_exactly_the_runtime_parts():
    copies = [i.split()[1:] for i in _instructions() if i.startswith("COPY ") and "segserve/" in i.split()[1]]
    assert sorted(source for source, _ in copies) == sorted(f"segserve/{part}" for part in RUNTIME_PARTS)
    assert all(target == f"/opt/segserve/lib/{source}" for source, target in copies)
    assert "ENV PYTHONPATH=/opt/segserve/lib" in _instructions()


def test_required_packages_are_the_pinned_ones():
    pins = fleet_image.pinned()
    assert sorted(REQUIRED_PACKAGES.values()) == sorted(pins)
    assert tuple(int(x) for x in pins["numpy"].split(".")[:2]) < (2, 0)
    gpu = fleet_image.pinned(fleet_image.GPU_REQUIREMENTS)
    assert "cupy-cuda12x" in gpu
    assert not (set(pins) | set(gpu)) & FORBIDDEN


def test_readme_and_dockerfile_build_the_image_from_its_dockerfile():
    readme = (ROOT / "README.md").read_text()
    builds = [line for text in (readme, DOCKERFILE) for line in text.splitlines() if "docker build" in line
              and "segserve-triton" in line]
    assert len(builds) >= 2 and all("-f docker/triton.Dockerfile" in line for line in builds), builds


# ----------------------------------------------------------------------------- reachable imports


def _fleet_entry_modules() -> set[str]:
    """The modules a fleet repository's model.py files import: each description's `python_module`,
    and the load-time check of the generated model.py."""
    from segserve.repository import builder

    tree = ast.parse((PACKAGE / "repository" / "description.py").read_text())
    modules = {k.value.value for node in ast.walk(tree) if isinstance(node, ast.Call) for k in node.keywords
               if k.arg == "python_module" and isinstance(k.value, ast.Constant)}
    assert {"sam2_image_session", "sam2_video_tracker", "mask2former_postprocess", "grounding_select"} <= modules
    named = set(re.findall(r"from (segserve\.[\w.{}]+) import", builder._FLEET_MODEL_PY))
    assert named == {"segserve.triton_models.runtime_check", "segserve.triton_models.{module}"}
    return {f"segserve.triton_models.{m}" for m in modules} | {"segserve.triton_models.runtime_check"}


def _module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


class _Imports(ast.NodeVisitor):
    """(imported module, enclosing function/class names) of every import, at any depth."""

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.scope: list[str] = []
        self.found: list[tuple[str, tuple[str, ...]]] = []

    def _scoped(self, node):
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Import(self, node):
        self.found += [(alias.name, tuple(self.scope)) for alias in node.names]

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            parts = parts[:len(parts) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        self.found.append((base, tuple(self.scope)))
        # `from segserve.common import rle`: a submodule, when there is one
        self.found += [(f"{base}.{a.name}", tuple(self.scope)) for a in node.names if _module_file(f"{base}.{a.name}")]


def _reachable_imports() -> tuple[set[str], list[tuple[str, str, tuple[str, ...]]]]:
    """segserve modules reachable from the fleet's model.py files, and their other imports
    (module, top-level name, scope)."""
    seen: set[str] = set()
    pending = sorted(_fleet_entry_modules())
    third_party = []
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        assert path is not None, f"{name} is imported by a fleet model but does not exist"
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text()))
        # a module's packages run their __init__ first
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for imported, scope in visitor.found + [(p, ()) for p in parents]:
            top = imported.split(".")[0]
            if top == "segserve":
                if _module_file(imported):
                    pending.append(imported)
            elif top != "__future__" and top not in sys.stdlib_module_names:
                third_party.append((name, top, scope))
    return seen, third_party


def test_fleet_models_reach_only_the_runtime_parts():
    modules, _ = _reachable_imports()
    assert {"segserve.triton_models.common", "segserve.common.rle", "segserve.triton_models.bls"} <= modules
    parts = {p.removesuffix(".py") for p in RUNTIME_PARTS}
    outside = sorted(m for m in modules if m != "segserve" and m.split(".")[1] not in parts)
    assert not outside, f"fleet models import segserve modules the image does not hold: {outside}"


def test_fleet_models_import_only_the_image_packages():
    _, imports = _reachable_imports()
    allowed = set(REQUIRED_PACKAGES) | {"triton_python_backend_utils"}
    wrong = []
    for module, top, scope in imports:
        if top in allowed:
            continue
        if top in CONFINED and scope and (CONFINED[top] is None or CONFINED[top] & set(scope)):
            continue
        wrong.append(f"{module}: {top} ({'.'.join(scope) or 'module level'})")
    assert not wrong, "fleet models import packages the image does not have: " + "; ".join(wrong)
    # the confined ones are really there, so the rule above is exercised
    assert {top for _, top, _ in imports} >= {"numpy", "cupy", "onnxruntime", "triton_python_backend_utils"}
