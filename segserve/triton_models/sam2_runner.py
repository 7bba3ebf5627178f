"""How the session model reaches the SAM 2 graphs.

- `InProcessRunner` (embedded): ONNX Runtime sessions inside the session model's own process, so
  the embeddings never leave it.
- `BlsRunner` (fleet): business-logic calls to the `sam2_image_encoder` / `sam2_prompt_decoder`
  models, which Triton serves with its TensorRT or onnxruntime backends on the GPU; tensors move
  through Triton's shared memory, never the network.
Both return numpy arrays with the decoder's output names.
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
        return dict(zip(ENCODER_OUTPUTS, self.encoder.run(list(ENCODER_OUTPUTS), {"pixel_values": pixel_values})))

    def decode(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, self.decoder.run(outputs, feeds)))


class BlsRunner:
    def __init__(self, encoder_model: str, decoder_model: str):
        self.encoder_model = encoder_model
        self.decoder_model = decoder_model

    @staticmethod
    def _call(model: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        import triton_python_backend_utils as pb_utils

        request = pb_utils.InferenceRequest(
            model_name=model,
            inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in feeds.items()],
            requested_output_names=outputs,
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}

    def encode(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        return self._call(self.encoder_model, {"pixel_values": pixel_values}, list(ENCODER_OUTPUTS))

    def decode(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return self._call(self.decoder_model, feeds, outputs)
