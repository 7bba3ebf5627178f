"""The committed gRPC stubs must be what protoc makes of the committed .proto files."""
from pathlib import Path

from segserve import api


def test_committed_stubs_match_proto(tmp_path):
    api.generate(tmp_path)
    committed = Path(api.__file__).parent / "v1"
    protos = api.proto_files()
    assert api.PROTO in protos
    for proto in protos:
        for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"):
            name = proto.stem + suffix
            assert (tmp_path / "segserve" / "v1" / name).read_text() == (committed / name).read_text(), name
