"""Load-time checks of a fleet Python model (called by the generated model.py, before the model's
module is imported): the server's Python can import every package the models need, and the segserve
runtime it imports is the one the repository was built with. Either fault then fails the model's
load with a message naming it, instead of its first request."""
from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

# The segserve parts the fleet image holds (docker/triton.Dockerfile copies exactly these).
RUNTIME_PARTS = ("__init__.py", "common", "triton_models")
# import name -> distribution: the packages of requirements/triton.txt (a test keeps them in step).
REQUIRED_PACKAGES = {"numpy": "numpy", "PIL": "pillow", "pycocotools": "pycocotools", "tokenizers": "tokenizers"}
IMAGE_HINT = "serve the fleet repository with the segserve Triton image (docker/triton.Dockerfile)"


def runtime_digest(package_root: Path | None = None) -> str:
    """sha256 of the runtime's Python sources (path and content), the same wherever it is installed."""
    root = Path(package_root or Path(__file__).resolve().parents[1])
    digest = hashlib.sha256()
    for part in RUNTIME_PARTS:
        files = [root / part] if part.endswith(".py") else sorted((root / part).rglob("*.py"))
        for path in files:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def check_runtime(model: str, expected_digest: str) -> None:
    python = "%d.%d" % sys.version_info[:2]
    for module, distribution in REQUIRED_PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"{model}: the Python package {distribution!r} cannot be imported by this Triton's "
                              f"Python {python} ({exc}); {IMAGE_HINT}, which installs requirements/triton.txt") from exc
    actual = runtime_digest()
    if expected_digest and actual != expected_digest:
        raise RuntimeError(f"{model}: the repository was built for segserve runtime {expected_digest[:12]}, but this "
                           f"Triton's Python imports runtime {actual[:12]} from {Path(__file__).resolve().parents[1]}: "
                           "rebuild the repository with the same segserve as the image, or the image")
