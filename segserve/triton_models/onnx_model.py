"""A Python-backend model that runs one ONNX graph with ONNX Runtime (the embedded target).

In the fleet target the same graph is served by Triton's onnxruntime or TensorRT backend under the
same name and signature; this model exists so that the CPU-only embedded server behaves the same.
With max_batch_size > 0, requests gathered by the dynamic batcher are concatenated along the batch
axis and run as one ONNX Runtime call.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from segserve.triton_models.common import parameters


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = parameters(args)
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.batched = config.get("max_batch_size", 0) > 0
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o["name"] for o in config["output"]]

    def execute(self, requests):
        feeds_per_request = [
            {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.input_names}
            for r in requests
        ]
        if self.batched and len(requests) > 1:
            sizes = [f[self.input_names[0]].shape[0] for f in feeds_per_request]
            feeds = {n: np.concatenate([f[n] for f in feeds_per_request]) for n in self.input_names}
            outputs = self.session.run(self.output_names, feeds)
            splits = np.cumsum(sizes)[:-1]
            per_request = [np.split(o, splits) for o in outputs]
            results = [[per_request[k][i] for k in range(len(outputs))] for i in range(len(requests))]
        else:
            results = [self.session.run(self.output_names, f) for f in feeds_per_request]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in zip(self.output_names, res)])
            for res in results
        ]
