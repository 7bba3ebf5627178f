"""Checkpoints from the Hugging Face Hub, pinned: `hf://ORG/NAME@COMMIT`.

`resolve` turns such a reference into a local directory that the exporters load exactly as they load
any `save_pretrained` directory. Downloads go through `huggingface_hub` into its standard cache
(`HF_HUB_CACHE`, else `HF_HOME/hub`); `HF_HUB_OFFLINE=1` uses that cache alone, which is the normal
case on an air-gapped cluster.

- Pinning: a branch or tag (`@main`, or no `@`) is refused unless `allow_unpinned`; the commit it
  resolved to is recorded either way.
- Which files: the repository's top-level configs and tokenizer files (`.json`, `.txt`, `.model`)
  and its weights, `.safetensors` when there are any, else `.bin` (Meta's `.pt` and other formats
  are not fetched). The exporters see only these, through a directory of links under
  `<artifacts>/checkpoints/hub/`, so a cache that holds more files (`hf download` of the whole
  repository) gives the same checkpoint hash as a cache filled by segserve.
- Hashes: every file is hashed and checked against the hash the Hub gave it. In the cache a file
  is a link to `blobs/<etag>`, and the etag is the file's sha256 for LFS files and its git blob
  sha1 otherwise (huggingface_hub's documented layout), so the check works offline; online, the
  Hub's own file metadata is checked as well. A mismatch is refused, never exported.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .manifest import ChecksumMismatch, sha256_file

SCHEME = "hf://"
DEFAULT_REVISION = "main"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_CONFIG_SUFFIXES = (".json", ".txt", ".model")
ONLINE_TIMEOUT_S = 10.0


class HubError(RuntimeError):
    """A Hub checkpoint that cannot be used; the message says why and what to do."""


class HubUnpinned(HubError):
    pass


class HubUnavailable(HubError):
    """Neither the Hub nor the local cache can provide the files."""


class HubHashMismatch(ChecksumMismatch):
    pass


def is_hub_uri(text: object) -> bool:
    return isinstance(text, str) and text.startswith(SCHEME)


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str  # as written; `main` when the reference names none

    @property
    def pinned(self) -> bool:
        return bool(_COMMIT.fullmatch(self.revision))

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.repo_id}@{self.revision}"

    @classmethod
    def parse(cls, text: str, what: str = "--checkpoint") -> HubRef:
        repo_id, sep, revision = text[len(SCHEME):].partition("@") if is_hub_uri(text) else ("", "", "")
        if not _REPO_ID.fullmatch(repo_id) or (sep and not revision):
            raise HubError(f"{what}: not a Hub reference of the form hf://ORG/NAME@COMMIT")
        return cls(repo_id, revision or DEFAULT_REVISION)


@dataclass
class HubCheckpoint:
    ref: HubRef
    commit: str
    snapshot: Path  # the cache's snapshots/<commit> folder
    path: Path  # what the exporters load: links to exactly the selected files
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    source: str = "cache"  # "hub": listed on the Hub at export time; "cache": the local cache alone

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.ref.repo_id}@{self.commit}"

    def provenance(self) -> dict:
        """What the manifest records for this family's checkpoint."""
        return {"uri": self.uri, "repo_id": self.ref.repo_id, "revision": self.ref.revision,
                "commit": self.commit, "pinned": self.ref.pinned, "resolved_from": self.source,
                "path": str(self.path), "files": dict(sorted(self.files.items()))}


def offline() -> bool:
    """HF_HUB_OFFLINE as it is now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> Path:
    """huggingface_hub's cache, by its own precedence, read now (not at its import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def endpoint() -> str:
    """HF_ENDPOINT as it is now (a mirror or a proxy of the Hub), else huggingface.co."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def prefetch_command(family: str, ref: HubRef) -> str:
    return f"segserve fetch-weights --checkpoint {family}={ref.uri}"


def select_files(names: list[str]) -> list[str]:
    """The files an exporter needs: top-level configs / tokenizer files and one weight format."""
    top = [n for n in names if "/" not in n and not n.startswith(".")]
    weights = [n for n in top if n.endswith(".safetensors")] or [n for n in top if n.endswith(".bin")]
    return sorted([n for n in top if n.endswith(_CONFIG_SUFFIXES)] + weights)


def _git_blob_sha1(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check(label: str, name: str, path: Path, sha256: str, expected: str, where: str) -> None:
    """`expected` is a sha256 (LFS files) or a git blob sha1 (other files)."""
    if _SHA256.fullmatch(expected):
        actual = sha256
    elif _COMMIT.fullmatch(expected):
        actual = _git_blob_sha1(path)
    else:
        raise HubHashMismatch(f"{label}: cannot verify {name}: {where} is {expected!r}, neither a sha256 nor a git sha1")
    if actual != expected:
        raise HubHashMismatch(
            f"{label}: {name} in the Hugging Face cache ({path}) hashes to {actual}, but {where} is {expected}: "
            "the cached file is corrupt or was altered; it is refused. Delete it and fetch again.")


def verify_files(label: str, snapshot: Path, names: list[str], expected: dict[str, str] | None = None) -> dict[str, str]:
    """Hash every selected file; refuse one whose content does not match its blob name in the cache
    (and, when given, the Hub's own record of it). Returns name -> sha256."""
    hashes = {}
    for name in names:
        link = snapshot / name
        if not link.is_file():
            raise HubUnavailable(f"{label}: {name} is missing from the cached snapshot {snapshot}")
        sha256 = sha256_file(link)
        if link.is_symlink():
            _check(label, name, link, sha256, link.resolve().name, "its blob name (the Hub's etag)")
        elif not expected or name not in expected:
            raise HubHashMismatch(f"{label}: cannot verify {name}: {link} is not a link to a blob of the "
                                  "Hugging Face cache and the Hub was not asked; refused")
        if expected and name in expected:
            _check(label, name, link, sha256, expected[name], "the Hub's record")
        hashes[name] = sha256
    return hashes


def _link_view(snapshot: Path, names: list[str], view: Path) -> Path:
    """A directory holding exactly `names`, linked to the snapshot (rebuilt each time)."""
    import shutil

    if view.is_symlink() or view.is_file():
        view.unlink()
    elif view.exists():
        shutil.rmtree(view)
    view.mkdir(parents=True)
    for name in names:
        (view / name).symlink_to((snapshot / name).resolve())
    return view


def _online_listing(ref: HubRef, token) -> tuple[str, dict[str, str]] | Exception:
    """(commit, name -> expected hash) from the Hub, or the error that says it cannot be asked."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RevisionNotFoundError
    from huggingface_hub.utils import httpx  # its HTTP client (httpx2 in huggingface_hub 2), by a stable name

    try:
        api = HfApi(endpoint=endpoint(), token=token)
        info = api.model_info(ref.repo_id, revision=ref.revision, files_metadata=True, timeout=ONLINE_TIMEOUT_S)
    except RevisionNotFoundError as exc:
        raise HubError(f"{ref.uri}: the Hub has no revision {ref.revision!r} in {ref.repo_id}") from exc
    except (httpx.ConnectError, httpx.TimeoutException, OfflineModeIsEnabled, HfHubHTTPError) as exc:
        return exc  # the cache may still hold it (as huggingface_hub itself falls back)
    expected = {s.rfilename: (s.lfs.sha256 if s.lfs is not None else s.blob_id) for s in info.siblings or []}
    return str(info.sha), {k: v for k, v in expected.items() if v}


def _cached_listing(ref: HubRef, cache: Path) -> list[str] | None:
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        return [f.path for f in get_cached_repo_tree(ref.repo_id, revision=ref.revision, cache_dir=cache)]
    except CachedRepoTreeNotFoundError:
        return None


def resolve(text: str, family: str, views: Path, allow_unpinned: bool = False, token=None,
            what: str = "--checkpoint") -> HubCheckpoint:
    """Download (or find in the cache) `hf://ORG/NAME@COMMIT` for `family` and verify every file.
    `views`: where the directory of links the exporters load is made (`<artifacts>/checkpoints/hub`)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    label = f"{what} {family}={text}" if what.startswith("--") else f"{what}={text}"
    ref = HubRef.parse(text, label)
    if not ref.pinned and not allow_unpinned:
        raise HubUnpinned(
            f"{label}: {ref.revision!r} is a branch or tag, and what it names can change under you. Pin the "
            f"commit (hf://{ref.repo_id}@<40-hex commit>) or pass --allow-unpinned (the commit it resolves to "
            "is recorded in the manifest).")
    cache = cache_dir()
    listing = None if offline() else _online_listing(ref, token)
    if isinstance(listing, tuple):
        commit, expected = listing
        names = select_files(list(expected))
        if "config.json" not in names:
            raise HubError(f"{label}: {ref.repo_id}@{commit} has no top-level config.json: not a transformers "
                           f"checkpoint (files: {', '.join(sorted(expected)) or 'none'})")
        snapshot = Path(snapshot_download(ref.repo_id, revision=commit, cache_dir=cache, token=token,
                                          endpoint=endpoint(), allow_patterns=names))
        source = "hub"
    else:
        expected, source = None, "cache"
        listed = _cached_listing(ref, cache)
        try:
            snapshot = Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=cache,
                                              local_files_only=True,
                                              allow_patterns=select_files(listed) if listed else None))
        except LocalEntryNotFoundError as exc:
            from huggingface_hub.errors import HfHubHTTPError

            detail = f"{type(listing).__name__}: {str(listing).splitlines()[0] if str(listing) else ''}"
            if listing is None:
                why = "HF_HUB_OFFLINE is set"
            elif isinstance(listing, HfHubHTTPError):  # the Hub answered: no such repo, gated, or private
                why = f"the Hub refused it ({detail}; a gated or private repository needs HF_TOKEN)"
            else:
                why = f"the Hub cannot be reached ({detail})"
            raise HubUnavailable(
                f"{label}: not in the Hugging Face cache {cache}, and {why}. Fetch it where the Hub is reachable, "
                f"with the same HF_HOME (or HF_HUB_CACHE), then copy that cache here:\n"
                f"    {prefetch_command(family, ref)}") from exc
        commit = snapshot.name
        names = select_files(sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")
                                    if p.is_file()))
        if "config.json" not in names:
            raise HubError(f"{label}: the cached snapshot {snapshot} has no config.json: not a transformers "
                           f"checkpoint, or an incomplete fetch ({prefetch_command(family, ref)})")
    if not any(n.endswith((".safetensors", ".bin")) for n in names):
        raise HubError(f"{label}: {ref.repo_id}@{commit} has no top-level .safetensors or .bin weights")
    if ref.pinned and commit != ref.revision:  # a commit is immutable: anything else is a broken cache
        raise HubError(f"{label}: asked for commit {ref.revision}, the cache answered {commit}")
    files = verify_files(label, snapshot, names, expected)
    view = _link_view(snapshot, names, Path(views) / f"{ref.repo_id.replace('/', '--')}@{commit}")
    return HubCheckpoint(ref, commit, snapshot, view, files, source)


def reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the Hub answers within `timeout` seconds (the demo's choice of real or random
    weights); the reason when not."""
    if offline():
        return False, "HF_HUB_OFFLINE is set"
    from huggingface_hub.utils import httpx

    url = endpoint()
    try:
        response = httpx.head(f"{url}/api/models/facebook/sam2.1-hiera-tiny", timeout=timeout, follow_redirects=True)
    except Exception as exc:  # any failure means "not reachable now"; the caller falls back
        detail = str(exc).splitlines()[0] if str(exc) else ""
        return False, f"{url} is not reachable ({type(exc).__name__}{': ' + detail if detail else ''})"
    if response.status_code >= 500:
        return False, f"{url} answers HTTP {response.status_code}"
    return True, ""


def resolve_revision(repo_id: str, revision: str = DEFAULT_REVISION, timeout: float = ONLINE_TIMEOUT_S,
                     token=None) -> str:
    """The commit `revision` names on the Hub now (online)."""
    from huggingface_hub import HfApi

    return str(HfApi(endpoint=endpoint(), token=token).model_info(repo_id, revision=revision, timeout=timeout).sha)
