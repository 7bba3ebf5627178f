"""Provenance of exported artifacts, and the weights cache built on it.

Every exported graph gets a manifest entry: its sha256, the source checkpoint's sha256, the export
settings, opset, input/output signature and the parity error measured when it was written. An entry
whose checkpoint hash and settings match a new request, and whose file still hashes the same, is
reused instead of re-exported.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segserve.common.files import sha256_file

MANIFEST_NAME = "manifest.json"
_CHECKPOINT_SUFFIXES = {".json", ".safetensors", ".bin", ".pt", ".pth", ".txt", ".model"}


class ChecksumMismatch(ValueError):
    pass


def sha256_checkpoint(path: Path) -> str:
    """Hash a checkpoint file, or a `save_pretrained` directory (relative names and contents)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _CHECKPOINT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"checkpoint directory {path} holds no weight or config files")
    return checkpoint_digest({str(file.relative_to(path)): sha256_file(file) for file in files})


def checkpoint_digest(files: dict[str, str]) -> str:
    """A directory's checkpoint hash from its files' sha256 (relative name -> hex digest)."""
    digest = hashlib.sha256()
    for name in sorted(files, key=lambda n: Path(n).parts):
        if Path(name).suffix in _CHECKPOINT_SUFFIXES:
            digest.update(name.encode())
            digest.update(files[name].encode())
    return digest.hexdigest()


def verify_checkpoint(path: Path, expected_sha256: str | None) -> str:
    """Return the checkpoint's hash; refuse it when a pinned hash is given and differs."""
    actual = sha256_checkpoint(path)
    if expected_sha256 and actual != expected_sha256.lower():
        raise ChecksumMismatch(f"checkpoint {path} has sha256 {actual}, expected {expected_sha256}")
    return actual


@dataclass
class ArtifactRecord:
    name: str
    file: str  # relative to the manifest's directory
    sha256: str
    checkpoint: str
    checkpoint_sha256: str
    random_weights: bool
    settings: dict[str, Any]
    opset: int
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    parity: dict[str, Any]
    model_config: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


@dataclass
class EngineRecord:
    """A graph's fleet backend (segserve.engines): a TensorRT engine that passed its parity gate on
    `gpu_name`, or (`backend == "onnxruntime"`) the reason the graph stays on ONNX Runtime. Written
    only by `segserve export --tensorrt` after a real build and parity run; `parity` holds what that
    run measured (segserve.engines.parity), never a value typed in."""

    name: str
    backend: str  # "tensorrt" | "onnxruntime"
    onnx_sha256: str  # the graph the engine was built from (a re-export makes the engine stale)
    file: str = ""  # <name>.plan, relative to the manifest's directory
    sha256: str = ""
    tensorrt_version: str = ""
    gpu_name: str = ""
    compute_capability: str = ""  # "9.0"
    precision: str = ""  # fp16 | bf16 | fp32
    fp32_layers: list[str] = field(default_factory=list)  # layers pinned to FP32
    profiles: list[dict[str, list[list[int]]]] = field(default_factory=list)  # name -> [min, opt, max]
    parity: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)  # workspace, timing cache, seconds
    reason: str = ""  # why the graph stays on ONNX Runtime
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


@dataclass
class PrecisionRecord:
    """A graph measured in bf16 (OpenVINO) against fp32 (ONNX Runtime) by its family's agreement
    metrics (`segserve.export.precision`), and the precision it is served in when bf16 is asked
    for: bf16 only if it passed its gate, else fp32 (`reason` says why). `status` "skipped": not
    measured (a CPU without native bf16), served in fp32. Valid while the graphs in
    `artifacts_sha256` (the graph itself, or every graph of a shared family verdict) are unchanged."""

    name: str
    family: str
    onnx_sha256: str
    status: str  # passed | failed | skipped
    passed: bool
    served_precision: str  # the precision a bf16 request serves this graph in: bf16 | fp32
    measured_runtime: str = "openvino"
    measured_precision: str = "bf16"
    reference: str = "onnxruntime fp32"
    metrics: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, list] = field(default_factory=dict)  # metric -> [">=" | "<=", bound]
    failures: list[str] = field(default_factory=list)
    shared_with: list[str] = field(default_factory=list)  # graphs sharing this verdict
    artifacts_sha256: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    cpu: str = ""
    seconds: float = 0.0
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


class Manifest:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / MANIFEST_NAME
        self.records: dict[str, ArtifactRecord] = {}
        self.engines: dict[str, EngineRecord] = {}
        self.precisions: dict[str, PrecisionRecord] = {}
        # family -> where its checkpoint came from, when that is more than a local path: for the Hub,
        # the repo id, the requested revision, the resolved commit and every file's sha256 (export.hub).
        self.checkpoints: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            self.records = {r["name"]: ArtifactRecord(**r) for r in data.get("artifacts", [])}
            self.engines = {e["name"]: EngineRecord(**e) for e in data.get("engines", [])}
            self.precisions = {p["name"]: PrecisionRecord(**p) for p in data.get("precisions", [])}
            self.checkpoints = data.get("checkpoints", {})

    def artifact_path(self, name: str) -> Path:
        return self.directory / self.records[name].file

    def reusable(self, name: str, checkpoint_sha256: str, settings: dict[str, Any]) -> ArtifactRecord | None:
        """The existing record if it was built from the same checkpoint and settings, intact."""
        record = self.records.get(name)
        if record is None or record.checkpoint_sha256 != checkpoint_sha256 or record.settings != settings:
            return None
        file = self.directory / record.file
        if not file.is_file() or sha256_file(file) != record.sha256:
            return None
        return record

    def put(self, record: ArtifactRecord) -> None:
        self.records[record.name] = record
        self.save()

    def set_checkpoint_source(self, family: str, source: dict[str, Any] | None) -> None:
        """Record (or, with None: forget) where `family`'s checkpoint came from."""
        if source is None:
            if self.checkpoints.pop(family, None) is not None:
                self.save()
            return
        self.checkpoints[family] = source
        self.save()

    def checkpoint_source(self, record: ArtifactRecord) -> dict[str, Any] | None:
        """The recorded source of the checkpoint `record` was exported from, if any (by the
        checkpoint's hash: a graph reused from an identical local directory has the same bytes)."""
        for source in self.checkpoints.values():
            if source.get("checkpoint_sha256") == record.checkpoint_sha256:
                return source
        return None

    def put_engine(self, record: EngineRecord) -> None:
        self.engines[record.name] = record
        self.save()

    def drop_engine(self, name: str) -> None:
        if self.engines.pop(name, None) is not None:
            self.save()

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {"format": 1, "artifacts": [asdict(r) for r in sorted(self.records.values(), key=lambda r: r.name)]}
        if self.engines:
            payload["engines"] = [asdict(e) for e in sorted(self.engines.values(), key=lambda e: e.name)]
        if self.precisions:
            payload["precisions"] = [asdict(p) for p in sorted(self.precisions.values(), key=lambda p: p.name)]
        if self.checkpoints:
            payload["checkpoints"] = self.checkpoints
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
        os.replace(tmp, self.path)
