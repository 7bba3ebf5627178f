"""Which graphs stay off TensorRT, in every TensorRT mode (`tensorrt` plans and the onnxruntime
backend's TensorRT accelerator): they are served by Triton's onnxruntime backend on its CUDA
provider. One table, read by the repository builder and the engine builder."""
from __future__ import annotations

_DEFORMABLE = ("grid_sample-based multiscale deformable attention is silently miscompiled by TensorRT "
               "10.14 / 11.1 (NVIDIA/TensorRT #4813)")

KEEP_ON_ONNXRUNTIME: dict[str, str] = {
    "grounding_dino": f"{_DEFORMABLE}; its text and cross attention also overflow in FP16",
    "mask2former": f"{_DEFORMABLE} (pixel decoder)",
}
