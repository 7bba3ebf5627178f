"""Shared fixtures: a tiny random-weight SAM 2 exported once, and the real embedded stack."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(max(1, (os.cpu_count() or 2)))


# The id-signing key of the shared test stack: a second orchestrator given it serves the same ids.
TEST_ID_KEY = "segserve-test-id-key-0123456789abcdef"


@pytest.fixture(scope="module")
def one_thread():
    """Modules that run big PyTorch references next to the stack stay on one of the 2 shared cores
    (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sam2_artifacts(tmp_path_factory) -> Path:
    from segserve.export.sam2 import export_sam2

    out = tmp_path_factory.mktemp("artifacts")
    export_sam2(None, out)
    return out


@pytest.fixture(scope="session")
def fleet_env_dir(tmp_path_factory) -> Path:
    """Where the fleet image's Python venv and the stand-ins' libraries are installed, once per
    session (`fleet_image.fleet_python`, `fleet_image.standin_libraries`)."""
    return tmp_path_factory.mktemp("fleet_env")


@pytest.fixture(scope="session")
def all_family_artifacts(sam2_artifacts, tmp_path_factory) -> Path:
    """Every family, tiny random weights, in one folder (SAM 2 linked from the session's export);
    shared by the fleet suites. Tests that edit it work on a linked copy and replace, never write
    through, a linked file."""
    import os
    import shutil

    from segserve.export.grounding_dino import export_grounding_dino
    from segserve.export.mask2former import export_mask2former
    from segserve.export.sam2_video import export_sam2_video

    out = tmp_path_factory.mktemp("all_families") / "artifacts"
    shutil.copytree(sam2_artifacts, out, copy_function=os.link)
    export_sam2_video(None, out)
    export_grounding_dino(None, out)
    export_mask2former(None, out)
    return out


@pytest.fixture(scope="session")
def sam2_torch_model(sam2_artifacts):
    from transformers import Sam2Model

    return Sam2Model.from_pretrained(sam2_artifacts / "checkpoints" / "sam2-random-tiny").eval()


@pytest.fixture(scope="session")
def embedded_repository(sam2_artifacts, tmp_path_factory) -> Path:
    from segserve.repository.builder import build_repository

    out = tmp_path_factory.mktemp("repository")
    build_repository(sam2_artifacts, out, "embedded", session_ttl_s=600, max_sessions=32)
    return out


@pytest.fixture(scope="session")
def stack(embedded_repository, tmp_path_factory):
    from segserve.orchestrator.settings import Settings
    from segserve.runtime.stack import start_stack

    settings = Settings(max_image_sessions=8, embedding_cache_size=2, max_image_pixels=40_000_000, id_key=TEST_ID_KEY)
    with start_stack(embedded_repository, tmp_path_factory.mktemp("triton"), settings) as running:
        yield running


@pytest.fixture()
def client(stack):
    from segserve.client import SegservClient

    with SegservClient(stack.address) as c:
        yield c


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photo (scikit-image's sample data), cropped to a non-square size."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[40:440, 20:500])
