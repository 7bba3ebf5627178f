"""Shared fixtures: a tiny random-weight SAM 2 exported once, and the real embedded stack."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session", autouse=True)
def torch_threads():
    """PyTorch on every core by default, set when the session starts (never at import time of a test
    module); modules that run big references beside a stack narrow it with `one_thread`."""
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


FAMILY_EXPORTERS = {  # family -> (module, function); SAM 2 is `sam2_artifacts`
    "sam2_video": ("segserve.export.sam2_video", "export_sam2_video"),
    "grounding_dino": ("segserve.export.grounding_dino", "export_grounding_dino"),
    "mask2former": ("segserve.export.mask2former", "export_mask2former"),
}


@pytest.fixture(scope="session")
def family_export(sam2_artifacts, tmp_path_factory):
    """`family_export("sam2_video")` -> a folder holding that family alone (tiny random weights),
    exported at most once per test session, on first use. Read-only for tests: use
    `family_artifacts`, which gives each caller a linked folder of its own."""
    import importlib

    done = {"sam2": sam2_artifacts}

    def get(family: str) -> Path:
        if family not in done:
            module, function = FAMILY_EXPORTERS[family]
            out = tmp_path_factory.mktemp(f"export_{family}") / "artifacts"
            getattr(importlib.import_module(module), function)(None, out)
            done[family] = out
        return done[family]

    return get


def _linked_artifacts(folders: list[Path], out: Path) -> Path:
    """Several export folders as one: files hard-linked, one manifest merging theirs (written anew,
    so a later manifest save replaces the file and never writes through a link)."""
    import os
    import shutil

    from segserve.export.manifest import MANIFEST_NAME, Manifest

    merged = Manifest(out)
    for folder in folders:
        shutil.copytree(folder, out, copy_function=os.link, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(MANIFEST_NAME, "*.tmp"))
        manifest = Manifest(folder)
        merged.records.update(manifest.records)
        merged.engines.update(manifest.engines)
        merged.precisions.update(manifest.precisions)
    merged.save()
    return out


@pytest.fixture(scope="session")
def all_family_artifacts(family_export, tmp_path_factory) -> Path:
    """Every family, tiny random weights, in one folder (linked from the session's exports); shared
    by the fleet suites. Tests that edit it work on a linked copy and replace, never write through,
    a linked file."""
    families = ["sam2", *FAMILY_EXPORTERS]
    return _linked_artifacts([family_export(f) for f in families], tmp_path_factory.mktemp("all_families") / "artifacts")


@pytest.fixture(scope="session")
def sam2_torch_model(sam2_artifacts):
    from transformers import Sam2Model

    return Sam2Model.from_pretrained(sam2_artifacts / "checkpoints" / "sam2-random-tiny").eval()


@pytest.fixture(scope="session")
def family_artifacts(family_export, tmp_path_factory):
    """`family_artifacts("sam2_video", "grounding_dino")` -> a fresh linked folder with those families
    only, from the session's exports (each family exported once per session, and only if some test
    needs it): every module gets the repository it needs without exporting anything again. A folder
    per call, so a test that rewrites its manifest (an export cache check) touches no other's."""
    def make(*families: str) -> Path:
        out = tmp_path_factory.mktemp("artifacts_" + "_".join(families)) / "artifacts"
        _linked_artifacts([family_export(f) for f in families], out)
        from segserve.export.manifest import Manifest

        assert {r.settings["family"] for r in Manifest(out).records.values()} == set(families), families
        return out

    return make


@pytest.fixture(scope="session")
def photo_click_matches(sam2_torch_model, photo):
    """`photo_click_matches(result, x, y)`: a served answer to one foreground click at (x, y) on the
    session photo is transformers' Sam2Model answer (tests/sam2_reference.py) on the session's SAM 2
    checkpoint: one object, one mask, IoU >= 0.99 against a reference mask that is neither empty nor
    full. For tests whose point is elsewhere (sessions, routing) but that still check the answer."""
    from tests import sam2_reference

    expected: dict[tuple[float, float], np.ndarray] = {}

    def reference(x: float, y: float) -> np.ndarray:
        """Computed once per click; call it first where a test's timing must not include it."""
        if (x, y) not in expected:
            _, _, masks = sam2_reference.predict(sam2_torch_model, photo, points=[(x, y)], labels=[1])
            expected[(x, y)] = masks[0, 0]
        return expected[(x, y)]

    def check(result, x: float, y: float) -> None:
        ref = reference(x, y)
        assert 0 < ref.sum() < ref.size, "the reference mask is trivial: pick another click"
        assert (result.height, result.width) == photo.shape[:2]
        assert len(result.objects) == 1 and len(result.objects[0].masks) == 1
        score = sam2_reference.iou(result.objects[0].masks[0].mask, ref)
        assert score >= 0.99, score

    check.reference = reference
    return check


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
