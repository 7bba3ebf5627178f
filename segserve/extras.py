"""Which optional extra each server-side command needs, checked before it imports anything heavy.

`pip install segserve` is the client (SDK and the CLI's client commands); `export` and `server` are
extras (pyproject.toml). A server-side command run without its extra stops with the pip command
that installs it, instead of an ImportError from deep inside.
"""
from __future__ import annotations

import importlib.util

# extra -> the top-level modules of its packages that the commands import
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "export": ("torch", "transformers", "safetensors", "huggingface_hub", "onnx", "onnxruntime", "scipy"),
    "server": ("pytriton", "tritonclient", "grpc_health", "grpc_reflection", "prometheus_client", "onnx",
               "onnxruntime", "tokenizers"),
}


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` this Python cannot import (found without importing them)."""
    return [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]


def require(command: str, *extras: str) -> None:
    """Exit naming the extras `command` needs when any of their modules is missing."""
    lacking = [extra for extra in extras if missing_modules(extra)]
    if not lacking:
        return
    names = " and ".join(f"'{e}'" for e in lacking)
    modules = ", ".join(m for e in lacking for m in missing_modules(e))
    raise SystemExit(f"{command} needs the {names} extra{'s' if len(lacking) > 1 else ''}: "
                     f"pip install 'segserve[{','.join(lacking)}]' (missing: {modules})")
