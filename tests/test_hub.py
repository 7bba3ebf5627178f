"""Checkpoints from the Hugging Face Hub (`hf://ORG/NAME@COMMIT`), offline.

Each test builds a Hub cache by hand in huggingface_hub's documented layout
(`models--ORG--NAME/{blobs,refs,snapshots/<commit>}`, blobs named by their etag: sha256 for LFS
files, git blob sha1 for the others, snapshot entries relative links to the blobs) from a saved
random-weight checkpoint, points HF_HUB_CACHE at it, and never reaches the network.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from segserve.export import hub
from segserve.export.families import export_families
from segserve.export.manifest import ChecksumMismatch, Manifest, sha256_checkpoint, sha256_file

REPO = "segserve-test/sam2-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt")


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def build_hub_cache(cache: Path, repo_id: str, commits: dict[str, Path], refs: dict[str, str],
                    extra: dict[str, bytes] | None = None) -> Path:
    """`commits`: commit -> a save_pretrained directory; `refs`: branch/tag -> commit; `extra`:
    more files in every snapshot (name -> bytes). Returns the repo's storage folder."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    for commit, source in commits.items():
        files = {p.name: p.read_bytes() for p in sorted(source.iterdir()) if p.is_file() and p.name != "RANDOM_WEIGHTS"}
        files.update(extra or {})
        snapshot = storage / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for name, data in files.items():
            etag = hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else _git_blob_sha1(data)
            blob = storage / "blobs" / etag
            if not blob.exists():
                blob.write_bytes(data)
            (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / etag)
    (storage / "refs").mkdir(exist_ok=True)
    for ref, commit in refs.items():
        (storage / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return storage


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    """A tiny random-weight SAM 2 saved with save_pretrained: what a Hub repository holds."""
    from transformers import Sam2Model

    from segserve.export.onnx_export import random_checkpoint
    from segserve.export.sam2 import random_config

    return random_checkpoint(tmp_path_factory.mktemp("saved") / "sam2-tiny", lambda: Sam2Model(random_config("tiny")))


@pytest.fixture
def hub_env(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache, offline; no real token or endpoint of this machine is used."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    for family in ("SAM2", "SAM2_VIDEO", "GROUNDING_DINO", "MASK2FORMER"):
        monkeypatch.delenv(f"SEGSERVE_{family}_CHECKPOINT", raising=False)
    return cache


@pytest.fixture
def cached_repo(hub_env, checkpoint_dir) -> Path:
    return build_hub_cache(hub_env, REPO, {COMMIT: checkpoint_dir}, {"main": COMMIT})


def test_pinned_commit_exports_as_the_local_directory_would(cached_repo, checkpoint_dir, tmp_path):
    from segserve.repository.builder import model_info

    out = tmp_path / "artifacts"
    export_families(["sam2"], out, {"sam2": f"hf://{REPO}@{COMMIT}"})

    manifest = Manifest(out)
    source = manifest.checkpoints["sam2"]
    assert source["uri"] == f"hf://{REPO}@{COMMIT}"
    assert (source["repo_id"], source["revision"], source["commit"], source["pinned"]) == (REPO, COMMIT, COMMIT, True)
    assert source["resolved_from"] == "cache"
    local_files = {p.name: sha256_file(p) for p in checkpoint_dir.iterdir() if p.name != "RANDOM_WEIGHTS"}
    assert source["files"] == local_files and "model.safetensors" in local_files
    # The same bytes as the local directory: the same checkpoint hash, so the same cache entries.
    assert source["checkpoint_sha256"] == sha256_checkpoint(checkpoint_dir)
    assert set(manifest.records) == {"sam2_image_encoder", "sam2_prompt_decoder"}
    for record in manifest.records.values():
        assert record.checkpoint_sha256 == sha256_checkpoint(checkpoint_dir)
        assert not record.random_weights
        assert record.parity["max_abs_error"] < 1e-3
    # Responses name the Hub commit, never the cache path.
    info = json.loads(model_info(manifest))
    assert info["sam2_image_encoder"]["checkpoint"] == f"hf://{REPO}@{COMMIT}"


def test_extra_files_in_the_cache_do_not_change_the_checkpoint(hub_env, checkpoint_dir, tmp_path):
    """A cache filled by `hf download` of the whole repository (Meta's .pt, a .bin twin) gives the
    same files and hash as one filled by segserve: only configs and .safetensors are used."""
    build_hub_cache(hub_env, REPO, {COMMIT: checkpoint_dir}, {},
                    extra={"sam2.1_hiera_tiny.pt": b"meta", "pytorch_model.bin": b"bin", "README.md": b"# card"})
    resolved = hub.resolve(f"hf://{REPO}@{COMMIT}", "sam2", tmp_path / "views")
    assert sorted(resolved.files) == sorted(p.name for p in checkpoint_dir.iterdir() if p.name != "RANDOM_WEIGHTS")
    assert sorted(p.name for p in resolved.path.iterdir()) == sorted(resolved.files)
    assert sha256_checkpoint(resolved.path) == sha256_checkpoint(checkpoint_dir)


@pytest.mark.parametrize("reference", [f"hf://{REPO}@main", f"hf://{REPO}", f"hf://{REPO}@v1.0"])
def test_branch_or_tag_refused_without_allow_unpinned(cached_repo, tmp_path, reference):
    (cached_repo / "refs" / "v1.0").write_text(COMMIT)
    with pytest.raises(hub.HubUnpinned, match="--allow-unpinned") as caught:
        export_families(["sam2"], tmp_path / "artifacts", {"sam2": reference})
    assert "is a branch or tag" in str(caught.value) and f"--checkpoint sam2={reference}" in str(caught.value)
    assert not (tmp_path / "artifacts" / "manifest.json").exists()


def test_branch_allowed_records_the_resolved_commit(hub_env, checkpoint_dir, tmp_path):
    build_hub_cache(hub_env, REPO, {COMMIT: checkpoint_dir, OTHER_COMMIT: checkpoint_dir}, {"main": OTHER_COMMIT})
    resolved = hub.resolve(f"hf://{REPO}@main", "sam2", tmp_path / "views", allow_unpinned=True)
    assert resolved.commit == OTHER_COMMIT and resolved.uri == f"hf://{REPO}@{OTHER_COMMIT}"
    provenance = resolved.provenance()
    assert (provenance["revision"], provenance["commit"], provenance["pinned"]) == ("main", OTHER_COMMIT, False)


def test_env_variable_takes_a_hub_reference(cached_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGSERVE_SAM2_CHECKPOINT", f"hf://{REPO}@main")
    with pytest.raises(hub.HubUnpinned, match=f"SEGSERVE_SAM2_CHECKPOINT=hf://{REPO}@main"):
        export_families(["sam2"], tmp_path / "artifacts")


@pytest.mark.parametrize("victim", ["model.safetensors", "config.json"])
def test_wrong_file_hash_refused(cached_repo, tmp_path, victim):
    """A blob whose content is not what its name (the Hub's etag: sha256 for LFS files, git sha1
    for the others) says is refused before anything is exported."""
    blob = (cached_repo / "snapshots" / COMMIT / victim).resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    blob.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match=f"{victim} in the Hugging Face cache .* hashes to") as caught:
        export_families(["sam2"], tmp_path / "artifacts", {"sam2": f"hf://{REPO}@{COMMIT}"})
    assert blob.name in str(caught.value)
    assert not (tmp_path / "artifacts" / "manifest.json").exists()


def test_wrong_hash_refused_by_the_cli(cached_repo, tmp_path):
    from segserve import cli

    blob = (cached_repo / "snapshots" / COMMIT / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    with pytest.raises(SystemExit) as caught:
        cli.main(["export", "--families", "sam2", "--out", str(tmp_path / "artifacts"),
                  "--checkpoint", f"sam2=hf://{REPO}@{COMMIT}"])
    assert str(caught.value).startswith("segserve export: --checkpoint sam2=hf://")
    assert "model.safetensors" in str(caught.value) and "refused" in str(caught.value)


def test_offline_without_cache_names_the_prefetch_command(hub_env, tmp_path):
    with pytest.raises(hub.HubUnavailable) as caught:
        export_families(["sam2"], tmp_path / "artifacts", {"sam2": f"hf://{REPO}@{COMMIT}"})
    message = str(caught.value)
    assert "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE is set" in message
    assert f"segserve fetch-weights --checkpoint sam2=hf://{REPO}@{COMMIT}" in message


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_hub_falls_back_to_the_cache(cached_repo, tmp_path, monkeypatch):
    """HF_HUB_OFFLINE unset but no Hub (a closed local port): the cache answers, and without it
    the message says the Hub cannot be reached and how to pre-fetch."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    resolved = hub.resolve(f"hf://{REPO}@{COMMIT}", "sam2", tmp_path / "views")
    assert resolved.commit == COMMIT and resolved.source == "cache"
    with pytest.raises(hub.HubUnavailable, match="the Hub cannot be reached") as caught:
        hub.resolve(f"hf://{REPO.replace('tiny', 'other')}@{COMMIT}", "sam2", tmp_path / "views")
    assert "segserve fetch-weights --checkpoint sam2=hf://" in str(caught.value)


def test_fetch_weights_reports_commit_and_hashes(cached_repo, checkpoint_dir, capsys):
    from segserve import cli

    cli.main(["fetch-weights", "--checkpoint", f"sam2=hf://{REPO}@{COMMIT}"])
    line = json.loads(capsys.readouterr().out.strip())
    assert line["commit"] == COMMIT and line["files"]["model.safetensors"] == sha256_file(checkpoint_dir / "model.safetensors")


@pytest.mark.parametrize("text", ["hf://no-slash@" + COMMIT, "hf://a/b/c@" + COMMIT, f"hf://{REPO}@"])
def test_malformed_reference(text):
    with pytest.raises(hub.HubError, match="hf://ORG/NAME@COMMIT"):
        hub.HubRef.parse(text)


def test_demo_falls_back_quickly_when_the_hub_is_unreachable(hub_env, monkeypatch):
    from segserve import demo

    started = time.perf_counter()
    checkpoints, note = demo.hub_checkpoints(["sam2", "grounding_dino"])
    assert checkpoints == {} and "HF_HUB_OFFLINE" in note
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    checkpoints, note = demo.hub_checkpoints(["sam2", "grounding_dino"])
    assert checkpoints == {} and "not reachable" in note
    assert time.perf_counter() - started < 10


def test_demo_uses_a_cached_public_checkpoint_offline(hub_env, checkpoint_dir):
    """Offline, a public checkpoint already in the cache (refs/main) is used, pinned to its commit."""
    from segserve import demo

    build_hub_cache(hub_env, demo.PUBLIC_CHECKPOINTS["sam2"], {COMMIT: checkpoint_dir}, {"main": COMMIT})
    checkpoints, _ = demo.hub_checkpoints(["sam2", "grounding_dino"])
    assert checkpoints == {"sam2": f"hf://{demo.PUBLIC_CHECKPOINTS['sam2']}@{COMMIT}"}


def test_offline_flag_is_read_now():
    """huggingface_hub reads HF_HUB_OFFLINE at import; segserve reads it at each call."""
    before = os.environ.get("HF_HUB_OFFLINE")
    try:
        os.environ["HF_HUB_OFFLINE"] = "1"
        assert hub.offline()
        os.environ["HF_HUB_OFFLINE"] = "0"
        assert not hub.offline()
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


# --------------------------------------------------------------------------- a Hub on localhost
# The download path itself (model_info, the tree listing, HEAD + GET of each file) against a small
# local stand-in for the Hub's HTTP API, so that it runs here without network.

class _FakeHub:
    def __init__(self, repo_id: str, commit: str, files: dict[str, bytes], tamper: str | None = None):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.repo_id, self.commit, self.files, self.requests = repo_id, commit, files, []
        self.etags = {n: hashlib.sha256(d).hexdigest() if n.endswith(LFS_SUFFIXES) else _git_blob_sha1(d)
                      for n, d in files.items()}
        served = dict(files)
        if tamper:  # the bytes on the wire differ from what the Hub's etag and listing say
            served[tamper] = served[tamper][:-1] + bytes([served[tamper][-1] ^ 0xFF])
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, body: bytes, headers: dict[str, str], head: bool) -> None:
                self.send_response(200)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _route(self, head: bool) -> None:
                from urllib.parse import unquote, urlparse

                path = unquote(urlparse(self.path).path)
                hub.requests.append(path)
                api = f"/api/models/{hub.repo_id}/"
                if path.startswith(api + "revision/"):
                    self._reply(json.dumps({"id": hub.repo_id, "sha": hub.commit, "siblings": [
                        {"rfilename": n, "size": len(d), "blobId": _git_blob_sha1(d),
                         **({"lfs": {"sha256": hub.etags[n], "size": len(d), "pointerSize": 134}}
                            if n.endswith(LFS_SUFFIXES) else {})} for n, d in hub.files.items()]}).encode(),
                        {"Content-Type": "application/json"}, head)
                elif path.startswith(api + "tree/"):
                    self._reply(json.dumps([
                        {"type": "file", "path": n, "size": len(d), "oid": _git_blob_sha1(d),
                         **({"lfs": {"oid": hub.etags[n], "size": len(d), "pointerSize": 134}}
                            if n.endswith(LFS_SUFFIXES) else {})} for n, d in hub.files.items()]).encode(),
                        {"Content-Type": "application/json"}, head)
                elif path.startswith(f"/{hub.repo_id}/resolve/{hub.commit}/"):
                    name = path.rsplit("/", 1)[1]
                    self._reply(served[name], {"X-Repo-Commit": hub.commit, "ETag": f'"{hub.etags[name]}"'}, head)
                else:
                    self.send_error(404)

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(hub_env, checkpoint_dir, monkeypatch):
    hubs = []

    def start(repo_id: str = REPO, tamper: str | None = None, extra: dict[str, bytes] | None = None) -> _FakeHub:
        files = {p.name: p.read_bytes() for p in checkpoint_dir.iterdir() if p.name != "RANDOM_WEIGHTS"}
        server = _FakeHub(repo_id, COMMIT, {**files, **(extra or {})}, tamper)
        hubs.append(server)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        return server

    yield start
    for server in hubs:
        server.close()


def test_download_from_the_hub_pins_and_verifies(fake_hub, hub_env, checkpoint_dir, tmp_path):
    server = fake_hub(extra={"sam2.1_hiera_tiny.pt": b"meta weights", "onnx/model.onnx": b"graph"})
    with pytest.raises(hub.HubUnpinned):
        hub.resolve(f"hf://{REPO}@main", "sam2", tmp_path / "views")
    resolved = hub.resolve(f"hf://{REPO}@main", "sam2", tmp_path / "views", allow_unpinned=True)
    assert (resolved.commit, resolved.source) == (COMMIT, "hub")
    assert resolved.snapshot == hub_env / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    # Only what an exporter loads was fetched: no Meta .pt, nothing from subfolders.
    assert sorted(p.name for p in resolved.snapshot.iterdir()) == ["config.json", "model.safetensors"]
    assert not any(r.endswith((".pt", ".onnx")) for r in server.requests)
    assert sha256_checkpoint(resolved.path) == sha256_checkpoint(checkpoint_dir)
    # The next resolve of the pinned commit, now offline, is served from that cache alone.
    os.environ["HF_HUB_OFFLINE"] = "1"
    again = hub.resolve(f"hf://{REPO}@{COMMIT}", "sam2", tmp_path / "views")
    assert (again.commit, again.source, again.files) == (COMMIT, "cache", resolved.files)


def test_download_with_wrong_content_refused(fake_hub, tmp_path):
    fake_hub(tamper="model.safetensors")
    with pytest.raises(ChecksumMismatch, match="model.safetensors .* hashes to"):
        hub.resolve(f"hf://{REPO}@{COMMIT}", "sam2", tmp_path / "views")


def test_demo_resolves_main_when_the_hub_answers(fake_hub):
    from segserve import demo

    for family in ("sam2", "grounding_dino"):
        fake_hub(demo.PUBLIC_CHECKPOINTS[family])
        checkpoints, note = demo.hub_checkpoints([family])
        assert checkpoints == {family: f"hf://{demo.PUBLIC_CHECKPOINTS[family]}@{COMMIT}"} and not note


def test_repository_the_hub_does_not_serve_names_the_token(fake_hub, tmp_path):
    """The Hub answers but refuses (no such repo, gated, private) and the cache has nothing."""
    fake_hub()
    with pytest.raises(hub.HubUnavailable, match="the Hub refused it .*HF_TOKEN") as caught:
        hub.resolve(f"hf://segserve-test/gated@{COMMIT}", "sam2", tmp_path / "views")
    assert f"segserve fetch-weights --checkpoint sam2=hf://segserve-test/gated@{COMMIT}" in str(caught.value)
