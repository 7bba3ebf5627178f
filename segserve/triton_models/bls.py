"""Business-logic scripting (BLS) calls from one Python model to another, tensors kept where they are.

The fleet's Python models hold state and glue only; the graphs are Triton's own (GPU) models. A call
takes numpy arrays (host), pb_utils Tensors (e.g. another call's outputs: passed on, renamed without
a copy) or any DLPack array such as CuPy's (device), and returns the outputs as pb_utils Tensors,
left on the device the model produced them on. `as_array` views one as numpy (host) or CuPy (GPU,
imported only then); `to_host` brings one to numpy for a response. A BLS output Tensor owns its
memory: keeping the Tensor (or an array made from it over DLPack, which references it) keeps it
valid after its response is gone.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from segserve.common.status import CANCELLED, INTERNAL, RESOURCE_EXHAUSTED, ModelRefusal

# Codes of a failed call that mean the same to our caller; anything else (a graph refusing what we
# sent, a model missing) is our fault: INTERNAL. NOT_FOUND in particular must not leak through, as
# the session models answer it only for a session they do not hold.
_PASSED_ON = {"CANCELLED": CANCELLED, "UNAVAILABLE": RESOURCE_EXHAUSTED}


def to_tensor(name: str, value: Any) -> "pb_utils.Tensor":
    if isinstance(value, pb_utils.Tensor):
        return value if value.name() == name else pb_utils.Tensor.from_dlpack(name, value)
    if isinstance(value, np.ndarray):
        # Host memory is copied into shared memory either way. Not over DLPack: the backend renames
        # the capsule "used_dlpack", which numpy's capsule destructor reports as an error each time.
        return pb_utils.Tensor(name, np.ascontiguousarray(value))
    if value.size == 0:
        return pb_utils.Tensor(name, np.zeros(value.shape, value.dtype.name))
    if not value.flags.c_contiguous:
        value = value.copy(order="C")  # the backend takes C-contiguous DLPack tensors only
    return pb_utils.Tensor.from_dlpack(name, value)


def _code(error) -> str:
    code = getattr(error, "code", None)
    if code is None:
        return INTERNAL
    value = code()
    return next((ours for name, ours in _PASSED_ON.items() if value == getattr(pb_utils.TritonError, name, None)),
                INTERNAL)


def call(model: str, inputs: dict[str, Any], outputs: list[str] | tuple[str, ...]) -> dict[str, "pb_utils.Tensor"]:
    """Run `model` once; a failed call raises ModelRefusal (`_PASSED_ON`, else INTERNAL)."""
    request = pb_utils.InferenceRequest(model_name=model, inputs=[to_tensor(k, v) for k, v in inputs.items()],
                                        requested_output_names=list(outputs))
    response = request.exec()
    if response.has_error():
        error = response.error()
        raise ModelRefusal(_code(error), f"{model} failed: {error.message()}")
    result = {name: pb_utils.get_output_tensor_by_name(response, name) for name in outputs}
    missing = [name for name, tensor in result.items() if tensor is None]
    if missing:
        raise ModelRefusal(INTERNAL, f"{model} did not return {missing}")
    return result


def nbytes(tensor: "pb_utils.Tensor") -> int:
    """Shape × item size, read from a zero-copy DLPack view (`triton_dtype()` returns an enum this
    backend's Python binding cannot convert)."""
    return int(as_array(tensor).nbytes)


def as_array(tensor: "pb_utils.Tensor"):
    """A numpy (host) or CuPy (GPU) view of the tensor, without a copy."""
    if tensor.is_cpu():
        return np.from_dlpack(tensor)
    import cupy  # only on a GPU: the CPU image does not have it

    return cupy.from_dlpack(tensor)


def to_host(tensor: "pb_utils.Tensor") -> np.ndarray:
    if tensor.is_cpu():
        return np.from_dlpack(tensor)
    import cupy

    return cupy.asnumpy(cupy.from_dlpack(tensor))


class BlsGraphs:
    """The video tracker's graphs as Triton models (`sam2_video_core.GRAPH_NAMES`): each output is
    an array of the module of the device it lives on."""

    def __init__(self, outputs: dict[str, tuple[str, ...]]):
        self.outputs = outputs

    def run(self, name: str, feeds: dict[str, Any]) -> dict[str, Any]:
        return {k: as_array(v) for k, v in call(name, feeds, self.outputs[name]).items()}
