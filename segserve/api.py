"""The gRPC API (`proto/segserve/v1/*.proto`) and its generated stubs in `segserve/v1/`.

The stubs are committed, so an installed package (or a read-only container) needs no protoc.
In a checkout, editing a .proto regenerates them on the next import; a test keeps the committed
copies in step with the .proto files. Each feature may add its own .proto (and service) here.
"""
from __future__ import annotations

import importlib
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = _ROOT / "proto" / "segserve" / "v1"
PROTO = PROTO_DIR / "segmentation.proto"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto")) if PROTO_DIR.is_dir() else []


def generate(out_root: Path = _ROOT) -> None:
    """Write segserve/v1/<name>_pb2{,_grpc}.py(i) under `out_root` for every .proto."""
    from grpc_tools import protoc

    out = out_root / "segserve" / "v1"
    out.mkdir(parents=True, exist_ok=True)
    (out / "__init__.py").touch()
    args = ["protoc", f"-I{PROTO_DIR.parents[1]}", f"--python_out={out_root}", f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}", *map(str, proto_files())]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_DIR}")


def _stale() -> bool:
    out = _ROOT / "segserve" / "v1"
    for proto in proto_files():
        generated = out / f"{proto.stem}_pb2_grpc.py"
        if not generated.is_file() or generated.stat().st_mtime < proto.stat().st_mtime:
            return True
    return False


def load(name: str):
    """(messages, services) modules of proto/segserve/v1/<name>.proto."""
    return (importlib.import_module(f"segserve.v1.{name}_pb2"), importlib.import_module(f"segserve.v1.{name}_pb2_grpc"))


if _stale():
    try:
        generate()
    except ImportError:  # grpcio-tools (the test extra) is missing: keep the committed stubs
        pass

pb, pb_grpc = load("segmentation")
