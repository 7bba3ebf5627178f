"""A Python-backend model that runs one exported graph in process (the embedded target), with ONNX
Runtime or OpenVINO as the builder chose (`graph_runner`: parameters `graph_runtime`,
`graph_threads`, `graph_cache_dir`).

In the fleet target the same graph is served by Triton's onnxruntime or TensorRT backend under the
same name and signature; this model exists so that the CPU-only embedded server behaves the same.
With max_batch_size > 0, requests gathered by the dynamic batcher are concatenated along the batch
axis and run as one call; if that call fails (logged), the requests run one by one so
that each gets its own answer (a failing one INTERNAL, through `triton_models.common`).
"""
from __future__ import annotations

import json
import os
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

from segserve.triton_models.common import parameters, repository_root, required_input, respond_each
from segserve.triton_models.graph_runner import GraphSettings, describe


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]
        config = json.loads(args["model_config"])
        params = parameters(args)
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        settings = GraphSettings.from_parameters(params, repository_root(args))
        # The graph this model serves: the one graph of `graph_runtime` (the model's own name).
        graph = self.name if self.name in settings.choices or len(settings.choices) != 1 else next(iter(settings.choices))
        self.runner = settings.open(graph, path)
        pb_utils.Logger.log_info(f"{self.name}: {describe(graph, self.runner)}")
        self.batched = config.get("max_batch_size", 0) > 0
        self.input_names = list(self.runner.input_names)
        self.output_names = [o["name"] for o in config["output"]]

    def execute(self, requests):
        if self.batched and len(requests) > 1:
            try:
                return self._run_batched(requests)
            except Exception:  # answered below, request by request, each with its own error
                pb_utils.Logger.log_warn(f"{self.name}: the batched run of {len(requests)} requests failed; "
                                         f"running them one by one\n{traceback.format_exc()}")
        return respond_each(requests, self._run_one, self.name)

    def _feeds(self, request) -> dict[str, np.ndarray]:
        return {name: required_input(request, name) for name in self.input_names}

    def _response(self, outputs) -> "pb_utils.InferenceResponse":
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in zip(self.output_names, outputs)])

    def _run_one(self, request):
        return self._response(self._run(self._feeds(request)))

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.runner.run(feeds, self.output_names)
        return [result[n] for n in self.output_names]

    def _run_batched(self, requests) -> list:
        feeds_per_request = [self._feeds(r) for r in requests]
        sizes = [f[self.input_names[0]].shape[0] for f in feeds_per_request]
        feeds = {n: np.concatenate([f[n] for f in feeds_per_request]) for n in self.input_names}
        outputs = self._run(feeds)
        splits = np.cumsum(sizes)[:-1]
        per_request = [np.split(o, splits) for o in outputs]
        return [self._response([per_request[k][i] for k in range(len(outputs))]) for i in range(len(requests))]
