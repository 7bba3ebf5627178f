"""The gRPC API (`proto/segserve/v1/*.proto`) and its generated stubs in `segserve/v1/`.

The stubs are committed, so an installed package (or a read-only container) needs no protoc.
In a checkout, editing the .proto regenerates them on the next import; a test keeps the
committed copies in step with the .proto.
"""
from __future__ import annotations

import importlib
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
PROTO = _ROOT / "proto" / "segserve" / "v1" / "segmentation.proto"


def generate(out_root: Path = _ROOT) -> None:
    """Write segserve/v1/segmentation_pb2{,_grpc}.py(i) under `out_root`."""
    from grpc_tools import protoc

    out = out_root / "segserve" / "v1"
    out.mkdir(parents=True, exist_ok=True)
    (out / "__init__.py").touch()
    args = ["protoc", f"-I{PROTO.parents[2]}", f"--python_out={out_root}", f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}", str(PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")


def _stale() -> bool:
    generated = _ROOT / "segserve" / "v1" / "segmentation_pb2_grpc.py"
    return PROTO.is_file() and (not generated.is_file() or generated.stat().st_mtime < PROTO.stat().st_mtime)


if _stale():
    generate()

pb = importlib.import_module("segserve.v1.segmentation_pb2")
pb_grpc = importlib.import_module("segserve.v1.segmentation_pb2_grpc")
