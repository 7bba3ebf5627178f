"""How the session model reaches the SAM 2 graphs.

- `InProcessRunner` (embedded): the decoder runs inside the session model's own process (ONNX
  Runtime or OpenVINO, `graph_runner.GraphSettings`), so the embeddings never leave it; the state
  is numpy arrays. The encoder is the `sam2_image_encoder` model, called through BLS
  (`encoder_in_process=False`, the default: its own instances and dynamic batching, and a START
  never occupies the session model's instance), or run in process (the one-at-a-time path).
- `BlsRunner` (fleet): business-logic calls to the `sam2_image_encoder` / `sam2_prompt_decoder`
  models, which Triton serves with its TensorRT or onnxruntime backends on the GPU. The state is
  the encoder's output Tensors themselves, left on the device and passed to the decoder as they are
  (their names are the decoder's input names): no host copy per click.
`encode` returns the state to keep, `decode` numpy arrays (the small outputs a response needs),
`gather(values, repeats)` one batch of several sessions' state (row i repeated `repeats[i]` times:
one image per prompt, on the state's own device). Every method may be called from several threads
at once (execute() and the encoder workers).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segserve.triton_models.graph_runner import GraphSettings

ENCODER_OUTPUTS = ("high_res_feats_0", "high_res_feats_1", "image_embeddings")
DECODER_OUTPUTS = ("multi_masks", "multi_iou", "single_mask", "single_iou", "object_score_logits")


class InProcessRunner:
    def __init__(self, repository: Path, encoder_model: str, decoder_model: str, settings: GraphSettings | None = None,
                 encoder_in_process: bool = False):
        """`settings`: each graph's runtime and precision, threads and cache (default: ONNX Runtime fp32)."""
        settings = settings or GraphSettings()
        self.encoder_model = encoder_model
        self.encoder = (settings.open(encoder_model, Path(repository) / encoder_model / "1" / "model.onnx")
                        if encoder_in_process else None)
        self.decoder = settings.open(decoder_model, Path(repository) / decoder_model / "1" / "model.onnx")

    def encode(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        if self.encoder is not None:
            # The runner's arrays are the caller's own (never a reused buffer): kept as they are.
            return self.encoder.run({"pixel_values": pixel_values}, list(ENCODER_OUTPUTS))
        from segserve.triton_models import bls  # Triton's stub only

        # Copied out of the BLS response's shared memory: a session may live for minutes, and the
        # stub's shared-memory region is for traffic, not for keeping.
        outputs = bls.call(self.encoder_model, {"pixel_values": pixel_values}, ENCODER_OUTPUTS)
        return {name: np.array(bls.to_host(tensor), copy=True) for name, tensor in outputs.items()}

    @staticmethod
    def nbytes(value: np.ndarray) -> int:
        return value.nbytes

    @staticmethod
    def gather(values: list[np.ndarray], repeats: list[int]) -> np.ndarray:
        return np.concatenate([np.repeat(v, n, axis=0) for v, n in zip(values, repeats)])

    def decode(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return self.decoder.run(feeds, outputs)


class BlsRunner:
    def __init__(self, encoder_model: str, decoder_model: str):
        from segserve.triton_models import bls  # Triton's stub only

        self.bls = bls
        self.encoder_model = encoder_model
        self.decoder_model = decoder_model

    def encode(self, pixel_values: np.ndarray) -> dict:
        # The Tensors own their (device) memory, so they outlive their response. They may sit in
        # Triton's CUDA memory pool while the session lives; Triton falls back to cudaMalloc
        # when the pool is full.
        return self.bls.call(self.encoder_model, {"pixel_values": pixel_values}, ENCODER_OUTPUTS)

    def decode(self, feeds: dict, outputs: list[str]) -> dict[str, np.ndarray]:
        return {k: self.bls.to_host(v) for k, v in self.bls.call(self.decoder_model, feeds, outputs).items()}

    def gather(self, values: list, repeats: list[int]):
        """On the Tensors' device (CuPy on a GPU, numpy on a CPU): no trip through the host."""
        arrays = [self.bls.as_array(v) for v in values]
        xp = np if isinstance(arrays[0], np.ndarray) else __import__("cupy")
        return xp.concatenate([xp.repeat(a, n, axis=0) for a, n in zip(arrays, repeats)])

    def nbytes(self, value) -> int:
        return self.bls.nbytes(value)
