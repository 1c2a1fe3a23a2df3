"""A real Triton Inference Server on loopback, for tests and ``phaseedge-bench triton``.

Run as a script by `phaseedge.bench.triton.LoopbackServer` with the interpreter of its own
environment (.venv-triton: PyTriton pins numpy<2), never imported.

PyTriton starts the ``tritonserver`` binary its wheel bundles (Python backend only) and
runs the bound function below in this process: the bundled ONNX graph through ONNX
Runtime on the CPU. The model config carries the ``phaseedge_*`` parameters given as
``--parameters`` (computed with ``phaseedge.export.triton.parameters``: what
``phaseedge-export triton`` writes into config.pbtxt), so the client sees what a
production repository serves. Every batch size the function receives is appended to
``--record`` (one line each), which is how the tests see dynamic batching merge requests.
Imports nothing from phaseedge (it is not installed in that environment).
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.model_config.triton_model_config import TritonModelConfig
from pytriton.models.model import Model
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help=".onnx with its sidecar")
    p.add_argument("--name", default="phaseedge")
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--record", type=Path, required=True, help="file: one line per batch the function ran")
    p.add_argument("--parameters", default="{}", help="JSON object: extra model config parameters")
    p.add_argument("--workspace", type=Path, default=None, help="PyTriton's sockets and model store")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--delay-us", type=int, default=20000, help="dynamic batcher max_queue_delay_microseconds")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = p.parse_args()

    sc = json.loads(args.model.with_name(args.model.name + ".json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(args.model), sess_options=opts, providers=["CPUExecutionProvider"])
    lock = threading.Lock()

    @batch
    def infer(image: np.ndarray, ratio: np.ndarray) -> dict[str, np.ndarray]:
        with lock, args.record.open("a") as f:
            f.write(f"{image.shape[0]}\n")
        (probs,) = session.run(["probs"], {"image": image.astype(np.float16), "ratio": ratio.astype(np.float32)})
        return {"probs": probs}

    t, n = sc["tile"], sc["n_classes"]
    extra = json.loads(args.parameters)
    original = Model._get_triton_model_config

    def with_parameters(model: Model) -> TritonModelConfig:
        # PyTriton has no public knob for extra config parameters; it writes a model's
        # backend_parameters into config.pbtxt's `parameters`, so ours go there too.
        config = original(model)
        config.backend_parameters.update(extra)
        return config

    Model._get_triton_model_config = with_parameters  # pinned nvidia-pytriton==0.7.0 (Makefile)
    config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1",
                          grpc_port=args.grpc_port, allow_metrics=False, exit_timeout_secs=2)
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(
            model_name=args.name,
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=np.float16, shape=(1, t, t)),
                    Tensor(name="ratio", dtype=np.float32, shape=(n,))],
            outputs=[Tensor(name="probs", dtype=np.float16, shape=(n, t, t))],
            config=ModelConfig(max_batch_size=args.max_batch,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us)),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
