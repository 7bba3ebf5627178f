"""Helm's Go engine (helm-python-sdk) in a process of its own, for the chart tests.

The SDK is a Go c-shared library. Loaded into the pytest process, it shares signal handling and
threads with OpenVINO, ONNX Runtime and torch, which the other test modules run in-process; after
the OpenVINO tests the Go runtime crashed the whole pytest run with a segmentation fault. Here the
library is only ever loaded by one spawned worker, and the tests talk to it through this module's
small mirror of the SDK's API: ``Chart.load``, ``Chart.render`` / ``merge_values`` /
``validate_schema`` / ``metadata`` / ``schema`` / ``files``, ``lint`` and ``package``.

Helm's errors come back as this module's ``HelmValuesError`` / ``HelmRenderError`` (same names as the
SDK's), with the engine's message, so that importing them never loads Go into the caller.
"""

from __future__ import annotations

import atexit
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator


class HelmError(Exception):
    """An error the Helm engine raised, by its SDK class name."""


class HelmValuesError(HelmError, ValueError):
    pass


class HelmRenderError(HelmError):
    pass


_ERRORS = {cls.__name__: cls for cls in (HelmValuesError, HelmRenderError)}

# --- worker side ---------------------------------------------------------------------------------

_charts: dict[str, Any] = {}


def _chart(path: str):
    import helm_python as helm

    if path not in _charts:
        _charts[path] = helm.Chart.load(path)
    return _charts[path]


def _run(operation: str, path: str, args: tuple, kwargs: dict) -> tuple[str, Any]:
    import helm_python as helm

    try:
        if operation == "lint":
            return "ok", helm.lint(path, *args, **kwargs)
        if operation == "package":
            return "ok", helm.package(path, *args, **kwargs)
        chart = _chart(path)
        if operation in ("metadata", "schema", "files"):
            return "ok", getattr(chart, operation)
        return "ok", getattr(chart, operation)(*args, **kwargs)
    except helm.HelmError as error:
        # Only the class name and message cross back: the SDK's classes stay in the worker.
        return "error", (type(error).__name__, str(error))


# --- caller side ---------------------------------------------------------------------------------

_pool: ProcessPoolExecutor | None = None


def _call(operation: str, path: str, *args, **kwargs):
    global _pool
    if _pool is None:
        _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        atexit.register(_pool.shutdown)
    status, payload = _pool.submit(_run, operation, str(path), args, kwargs).result()
    if status == "error":
        name, message = payload
        raise _ERRORS.get(name, HelmError)(f"{name}: {message}")
    return payload


class Chart:
    """A chart loaded in the worker, addressed by its path."""

    def __init__(self, path: str):
        self.path = str(path)

    @classmethod
    @contextmanager
    def load(cls, path) -> Iterator["Chart"]:
        chart = cls(path)
        _call("metadata", chart.path)  # fails here, as the SDK does, when the chart does not load
        yield chart

    @property
    def metadata(self) -> dict[str, Any]:
        return _call("metadata", self.path)

    @property
    def schema(self) -> dict[str, Any] | None:
        return _call("schema", self.path)

    @property
    def files(self) -> list[dict[str, str]]:
        return _call("files", self.path)

    def render(self, values: dict[str, Any] | None = None, **kwargs) -> dict[str, str]:
        return _call("render", self.path, values, **kwargs)

    def merge_values(self, values: dict[str, Any] | None = None) -> dict[str, Any]:
        return _call("merge_values", self.path, values)

    def validate_schema(self, values: dict[str, Any] | None = None) -> None:
        _call("validate_schema", self.path, values)


def lint(path, *args, **kwargs) -> dict[str, Any]:
    return _call("lint", path, *args, **kwargs)


def package(path, *args, **kwargs) -> str:
    return _call("package", path, *args, **kwargs)
