"""The generated gRPC API (`proto/segserve/v1/*.proto`), regenerated when the .proto is newer."""
from __future__ import annotations

import importlib
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
_PROTO = _ROOT / "proto" / "segserve" / "v1" / "segmentation.proto"
_OUT = _ROOT / "segserve" / "v1"


def generate() -> None:
    from grpc_tools import protoc

    _OUT.mkdir(exist_ok=True)
    (_OUT / "__init__.py").touch()
    args = ["protoc", f"-I{_ROOT / 'proto'}", f"--python_out={_ROOT}", f"--pyi_out={_ROOT}",
            f"--grpc_python_out={_ROOT}", str(_PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {_PROTO}")


def _stale() -> bool:
    generated = _OUT / "segmentation_pb2_grpc.py"
    return _PROTO.is_file() and (not generated.is_file() or generated.stat().st_mtime < _PROTO.stat().st_mtime)


if _stale():
    generate()

pb = importlib.import_module("segserve.v1.segmentation_pb2")
pb_grpc = importlib.import_module("segserve.v1.segmentation_pb2_grpc")
