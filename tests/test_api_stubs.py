"""The committed gRPC stubs must be what protoc makes of the committed .proto."""
from pathlib import Path

from segserve import api


def test_committed_stubs_match_proto(tmp_path):
    api.generate(tmp_path)
    committed = Path(api.__file__).parent / "v1"
    for name in ("segmentation_pb2.py", "segmentation_pb2_grpc.py", "segmentation_pb2.pyi"):
        assert (tmp_path / "segserve" / "v1" / name).read_text() == (committed / name).read_text(), name
