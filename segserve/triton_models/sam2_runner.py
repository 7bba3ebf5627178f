"""How the session model reaches the SAM 2 graphs.

- `InProcessRunner` (embedded): the graphs run inside the session model's own process (ONNX Runtime
  or OpenVINO, `graph_runner.GraphSettings`), so the embeddings never leave it; the state is numpy
  arrays.
- `BlsRunner` (fleet): business-logic calls to the `sam2_image_encoder` / `sam2_prompt_decoder`
  models, which Triton serves with its TensorRT or onnxruntime backends on the GPU. The state is
  the encoder's output Tensors themselves, left on the device and passed to the decoder as they are
  (their names are the decoder's input names): no host copy per click.
`encode` returns the state to keep, `decode` numpy arrays (the small outputs a response needs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segserve.triton_models.graph_runner import GraphSettings

ENCODER_OUTPUTS = ("high_res_feats_0", "high_res_feats_1", "image_embeddings")
DECODER_OUTPUTS = ("multi_masks", "multi_iou", "single_mask", "single_iou", "object_score_logits")


class InProcessRunner:
    def __init__(self, repository: Path, encoder_model: str, decoder_model: str, settings: GraphSettings | None = None):
        """`settings`: each graph's runtime and precision, threads and cache (default: ONNX Runtime fp32)."""
        settings = settings or GraphSettings()
        self.encoder = settings.open(encoder_model, Path(repository) / encoder_model / "1" / "model.onnx")
        self.decoder = settings.open(decoder_model, Path(repository) / decoder_model / "1" / "model.onnx")

    def encode(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        # The runner's arrays are the caller's own (never a reused buffer): kept as they are.
        return self.encoder.run({"pixel_values": pixel_values}, list(ENCODER_OUTPUTS))

    @staticmethod
    def nbytes(value: np.ndarray) -> int:
        return value.nbytes

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

    def nbytes(self, value) -> int:
        return self.bls.nbytes(value)
