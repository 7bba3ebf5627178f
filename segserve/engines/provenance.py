"""What an engine was built for, and the fleet's refusal of one built for anything else.

A TensorRT engine runs only on the GPU model and the TensorRT version that built it. Every engine
has a manifest record (`EngineRecord`, written by `segserve export --tensorrt` after its parity
gate); `fleet_graph_file` is what `build-repo --target fleet --graph-backend tensorrt` asks before
linking a plan: the fleet image's TensorRT (`fleet_image.release().tensorrt`) and the target GPU
(`--target-gpu`, else this machine's) must both match the record.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from segserve.engines.policy import KEEP_ON_ONNXRUNTIME
from segserve.export.manifest import EngineRecord, Manifest, sha256_file


class EngineRefused(ValueError):
    pass


@dataclass(frozen=True)
class Gpu:
    name: str  # as nvidia-smi names it: "NVIDIA H100 80GB HBM3"
    compute_capability: str = ""  # "9.0"; "" = not checked

    def __str__(self) -> str:
        return f"{self.name} (compute capability {self.compute_capability or 'unknown'})"

    def major(self) -> int:
        return int(self.compute_capability.split(".")[0]) if self.compute_capability else 0


def local_gpu() -> Gpu | None:
    """This machine's first NVIDIA GPU, from nvidia-smi; None without one."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    name, _, capability = (part.strip() for part in line.rpartition(",")) if "," in line else (line, "", "")
    return Gpu(name, capability) if name else None


def _gpu_name_key(name: str) -> str:
    """nvidia-smi says "NVIDIA H100 80GB HBM3", the node label nvidia.com/gpu.product
    "NVIDIA-H100-80GB-HBM3": the same GPU."""
    return " ".join(name.lower().replace("-", " ").replace("_", " ").split())


def _same_gpu(a: Gpu, b: Gpu) -> bool:
    same_name = _gpu_name_key(a.name) == _gpu_name_key(b.name)
    capabilities = a.compute_capability and b.compute_capability
    return same_name and (not capabilities or a.compute_capability == b.compute_capability)


def same_tensorrt(a: str, b: str) -> bool:
    """Engines are tied to major.minor.patch (the build number, 10.5.0.18 vs 10.5.0, does not matter)."""
    return a.split(".")[:3] == b.split(".")[:3]


def verified(record: EngineRecord) -> bool:
    """True only for an engine whose parity gate ran on a GPU and passed (never for a record
    without a measured run)."""
    measured = record.parity.get("measured_on") or {}
    return (record.backend == "tensorrt" and record.parity.get("passed") is True and bool(record.gpu_name)
            and measured.get("gpu") == record.gpu_name and int(record.parity.get("cases", 0)) > 0)


def engine_command(manifest: Manifest, graph: str) -> str:
    family = manifest.records[graph].settings.get("family", graph) if graph in manifest.records else graph
    return f"`segserve export --families {family} --out {manifest.directory} --tensorrt` on the target GPU"


def target_gpu(name: str | None, compute_capability: str | None = None) -> Gpu:
    if name:
        return Gpu(name, compute_capability or "")
    gpu = local_gpu()
    if gpu is None:
        raise EngineRefused("no NVIDIA GPU here to take as the target: pass --target-gpu NAME (as nvidia-smi "
                            "names it, e.g. \"NVIDIA H100 80GB HBM3\") and --target-compute-capability X.Y")
    return gpu


def fleet_graph_file(manifest: Manifest, graph: str, tensorrt_version: str, gpu: Gpu | None = None,
                     gpu_name: str | None = None, compute_capability: str | None = None) -> Path | None:
    """The engine that serves `graph` in the fleet, or None for a graph kept on ONNX Runtime.
    Raises EngineRefused, naming both sides, for a missing, stale, unverified or mismatched engine.
    The target GPU is `gpu`, else `gpu_name`, else this machine's, looked up only when needed."""
    if graph in KEEP_ON_ONNXRUNTIME:
        return None
    record = manifest.engines.get(graph)
    if record is None or record.backend != "tensorrt":
        raise EngineRefused(f"{graph}: no TensorRT engine in {manifest.path}: build it with {engine_command(manifest, graph)} "
                            f"(TensorRT {tensorrt_version}, the fleet image's), or use --graph-backend onnxruntime")
    plan = manifest.directory / record.file
    if not plan.is_file() or sha256_file(plan) != record.sha256:
        raise EngineRefused(f"{graph}: {plan} is missing or does not hash to its record: rebuild it with "
                            f"{engine_command(manifest, graph)}")
    if graph in manifest.records and record.onnx_sha256 != manifest.records[graph].sha256:
        raise EngineRefused(f"{graph}: the engine was built from another export of {graph}.onnx: rebuild it with "
                            f"{engine_command(manifest, graph)}")
    if not verified(record):
        raise EngineRefused(f"{graph}: the engine's parity was not measured on a GPU: rebuild it with "
                            f"{engine_command(manifest, graph)}")
    if not same_tensorrt(record.tensorrt_version, tensorrt_version):
        raise EngineRefused(f"{graph}: the engine was built with TensorRT {record.tensorrt_version}, the fleet image "
                            f"runs TensorRT {tensorrt_version}: rebuild it with {engine_command(manifest, graph)} "
                            f"with tensorrt=={tensorrt_version}")
    target = gpu or target_gpu(gpu_name, compute_capability)
    built = Gpu(record.gpu_name, record.compute_capability)
    if not _same_gpu(built, target):
        raise EngineRefused(f"{graph}: the engine was built for {built}, the target GPU is {target}: rebuild it "
                            f"with {engine_command(manifest, graph)}")
    return plan


def engine_summary(manifest: Manifest) -> dict[str, dict]:
    """Per graph, what a model-info response may say about its fleet backend."""
    summary = {}
    for name, record in manifest.engines.items():
        if record.backend != "tensorrt":
            summary[name] = {"backend": "onnxruntime", "reason": record.reason}
            continue
        summary[name] = {"backend": "tensorrt", "precision": record.precision, "tensorrt": record.tensorrt_version,
                         "gpu": record.gpu_name, "sha256": record.sha256, "parity_verified_on_gpu": verified(record)}
    return summary
