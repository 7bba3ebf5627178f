"""The one description of the Triton model repository, rendered for both targets.

A `ModelSpec` says what a model is (an exported graph or Python code), its signature and its
scheduling. The builder turns it into `config.pbtxt` for:
- `embedded`: every model on the Python backend, graphs run by ONNX Runtime inside it;
- `fleet`: graphs on Triton's onnxruntime or TensorRT backend, Python only for state and glue.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton type without the TYPE_ prefix: FP32, INT32, UINT8, BOOL, STRING, UINT64
    dims: tuple[int, ...]
    optional: bool = False
    ragged: bool = False


@dataclass
class Sequence:
    idle_timeout_s: float
    max_candidate_sequences: int
    max_queue_delay_us: int = 0


@dataclass
class ModelSpec:
    name: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    graph: str | None = None  # manifest artifact name, for exported graphs
    python_module: str | None = None  # segserve.triton_models.<module>, for Python models
    max_batch_size: int = 0
    dynamic_batching: bool = False
    max_queue_delay_us: int = 2000
    sequence: Sequence | None = None
    instances: int = 1
    parameters: dict[str, str] = field(default_factory=dict)
    fleet_parameters: dict[str, str] = field(default_factory=dict)
    # Models this one calls through BLS in the fleet target.
    calls: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()  # manifest artifacts that must exist for this model


def sam2_models(sam2_config: dict[str, Any], options: dict[str, Any], encoder_batch: int = 4) -> list[ModelSpec]:
    session_ttl_s, max_sessions = options["session_ttl_s"], options["max_sessions"]
    low_res = int(sam2_config.get("low_res_mask_size", 256))
    size = int(sam2_config.get("image_size", 1024))
    encoder = ModelSpec(
        name="sam2_image_encoder",
        graph="sam2_image_encoder",
        inputs=[Tensor("pixel_values", "FP32", (3, size, size))],
        outputs=[],  # filled from the manifest
        max_batch_size=encoder_batch,
        dynamic_batching=True,
        requires=("sam2_image_encoder",),
    )
    decoder = ModelSpec(
        name="sam2_prompt_decoder",
        graph="sam2_prompt_decoder",
        inputs=[],
        outputs=[],
        requires=("sam2_prompt_decoder",),
    )
    session = ModelSpec(
        name="sam2_image_session",
        python_module="sam2_image_session",
        inputs=[
            Tensor("IMAGE", "UINT8", (-1, -1, 3), optional=True, ragged=True),
            Tensor("POINT_COORDS", "FP32", (-1, -1, 2), optional=True, ragged=True),
            Tensor("POINT_LABELS", "INT32", (-1, -1), optional=True, ragged=True),
            Tensor("MASK_INPUT", "FP32", (1, low_res, low_res), optional=True),
            Tensor("MULTIMASK", "BOOL", (1,), optional=True),
        ],
        outputs=[
            Tensor("IMAGE_SIZE", "INT32", (2,)),
            Tensor("SCORES", "FP32", (-1, -1)),
            Tensor("OBJECT_SCORE", "FP32", (-1,)),
            Tensor("LOW_RES_LOGITS", "FP32", (-1, -1, low_res, low_res)),
            Tensor("MASKS_RLE", "STRING", (-1, -1)),
        ],
        # Oldest strategy: requests of different sessions run in one execute() call.
        max_batch_size=8,
        sequence=Sequence(idle_timeout_s=session_ttl_s, max_candidate_sequences=max_sessions),
        parameters={
            "runner": "inprocess",
            "encoder_model": "sam2_image_encoder",
            "decoder_model": "sam2_prompt_decoder",
            "session_ttl_s": str(session_ttl_s),
            "max_sessions": str(max_sessions),
            "image_size": str(size),
            "low_res_mask_size": str(low_res),
            "mask_threshold": str(sam2_config.get("mask_threshold", 0.0)),
        },
        fleet_parameters={"runner": "bls"},
        calls=("sam2_image_encoder", "sam2_prompt_decoder"),
        requires=("sam2_image_encoder", "sam2_prompt_decoder"),
    )
    return [encoder, decoder, session]


# Key artifact of each family -> its models. A family is in the repository when its key artifact is
# in the manifest.
FAMILY_MODELS = {
    "sam2_image_encoder": sam2_models,
}
