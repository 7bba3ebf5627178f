"""Placement across orchestrators: each orchestrator counts only the sessions it placed, so a replica
it thinks has room may be full of another orchestrator's sessions. The model's own refusal of the
START (RESOURCE_EXHAUSTED) is the authority: the session is placed on the next replica, and the
client hears RESOURCE_EXHAUSTED only when every replica refused. Two real embedded Tritons."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import grpc
import pytest

from segserve.client import SegservClient
from segserve.common.synthetic_video import moving_shapes

from .conftest import TEST_ID_KEY

HW = (64, 96)


@pytest.fixture(scope="module")
def repository(all_family_artifacts, tmp_path_factory) -> Path:
    """SAM 2 image and video only, one session of each kind per replica."""
    from segserve.export.manifest import MANIFEST_NAME
    from segserve.repository.builder import build_repository

    artifacts = tmp_path_factory.mktemp("failover") / "artifacts"
    shutil.copytree(all_family_artifacts, artifacts, copy_function=os.link)
    manifest = json.loads((artifacts / MANIFEST_NAME).read_text())
    manifest["artifacts"] = [r for r in manifest["artifacts"] if r["name"].startswith("sam2")]
    (artifacts / MANIFEST_NAME).unlink()  # a link to the shared export's manifest: replace, never write through
    (artifacts / MANIFEST_NAME).write_text(json.dumps(manifest))
    out = tmp_path_factory.mktemp("failover_repository")
    build_repository(artifacts, out, "embedded", max_sessions=1,
                     options={"max_video_sessions": 1, "video_intra_op_threads": 1, "intra_op_threads": 1})
    return out


@pytest.fixture(scope="module")
def tritons(repository, tmp_path_factory):
    from segserve.runtime.triton import EmbeddedTriton, free_port

    started = []
    try:
        for name in ("x", "y"):
            started.append(EmbeddedTriton(repository, tmp_path_factory.mktemp(f"triton_{name}"), grpc_port=free_port(),
                                          http_port=free_port(), metrics_port=free_port()).start())
        yield started
    finally:
        for triton in started:
            triton.stop()


@pytest.fixture(scope="module")
def orchestrators(tritons):
    """A serves both replicas; B only the first, so it fills it behind A's back."""
    from segserve.orchestrator import server as orchestrator_server
    from segserve.orchestrator.settings import Settings
    from segserve.runtime.triton import free_port

    x, y = tritons
    running = []
    try:
        for urls in (f"{x.grpc_url},{y.grpc_url}", x.grpc_url):
            running.append(orchestrator_server.start(Settings(triton_url=urls, grpc_port=0, id_key=TEST_ID_KEY,
                                                              metrics_port=free_port(), host="127.0.0.1")))
        yield running
    finally:
        for orchestrator in running:
            orchestrator.stop(grace_s=0.5)


def _replica_of(orchestrator, session_id: str, kind: str) -> str:
    return orchestrator.service.images.signer.verify(session_id, kind).replica_url


def _code(call, *args) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value.code()


def test_a_start_refused_as_full_goes_to_the_next_replica(orchestrators, tritons, photo, photo_click_matches):
    first, second = orchestrators
    x, y = tritons
    frames, _ = moving_shapes(2, *HW)
    with SegservClient(first.address) as a, SegservClient(second.address) as b:
        # B fills replica X (one session of each kind) without A knowing.
        filled_image = b.open_image(photo)
        filled_video = b.video.start_session(list(frames))
        assert _replica_of(second, filled_image.image_id, "image") == x.grpc_url
        # A counts X empty and tries it first (least filled, first listed): X's models refuse, Y takes them.
        image = a.open_image(photo)
        video = a.video.start_session(list(frames))
        assert _replica_of(first, image.image_id, "image") == y.grpc_url
        assert _replica_of(first, video.session_id, "video") == y.grpc_url
        photo_click_matches(a.mask_from_prompt(image_id=image.image_id, points=[(100, 100, 1)]), 100, 100)
        assert video.num_frames == 2 and (video.height, video.width) == HW
        # Every replica full now: Y by A's own count, X by its models' refusal.
        assert _code(a.open_image, photo) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _code(a.video.start_session, list(frames)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The refused STARTs left nothing behind: closing one session on X makes room there again.
        b.close_image(filled_image.image_id)
        b.video.end_session(filled_video.session_id)
        again = a.open_image(photo)
        assert _replica_of(first, again.image_id, "image") == x.grpc_url
        again_video = a.video.start_session(list(frames))
        assert _replica_of(first, again_video.session_id, "video") == x.grpc_url
        for session in (image, again):
            a.close_image(session.image_id)
        for session in (video, again_video):
            a.video.end_session(session.session_id)
