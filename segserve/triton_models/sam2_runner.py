"""How the session model reaches the SAM 2 graphs.

- `InProcessRunner` (embedded): ONNX Runtime sessions inside the session model's own process, so
  the embeddings never leave it; the state is numpy arrays.
- `BlsRunner` (fleet): business-logic calls to the `sam2_image_encoder` / `sam2_prompt_decoder`
  models, which Triton serves with its TensorRT or onnxruntime backends on the GPU. The state is
  the encoder's output Tensors themselves, left on the device and passed to the decoder as they are
  (their names are the decoder's input names): no host copy per click.
`encode` returns the state to keep, `decode` numpy arrays (the small outputs a response needs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ENCODER_OUTPUTS = ("high_res_feats_0", "high_res_feats_1", "image_embeddings")
DECODER_OUTPUTS = ("multi_masks", "multi_iou", "single_mask", "single_iou", "object_score_logits")


class InProcessRunner:
    def __init__(self, repository: Path, encoder_model: str, decoder_model: str, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.encoder = ort.InferenceSession(str(repository / encoder_model / "1" / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(repository / decoder_model / "1" / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def encode(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.encoder.run(list(ENCODER_OUTPUTS), {"pixel_values": pixel_values})
        return {k: np.array(v, copy=True) for k, v in zip(ENCODER_OUTPUTS, outputs)}  # own copies, kept

    @staticmethod
    def nbytes(value: np.ndarray) -> int:
        return value.nbytes

    def decode(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, self.decoder.run(outputs, feeds)))


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
