"""fp16 on a GPU: the ONNX model's float weights and operators in half precision, run by the CUDA provider.

Only built where onnxruntime has CUDAExecutionProvider (onnxruntime-gpu on a CUDA machine); the
fp32 model is measured on the same card beside it, so the two compare like for like.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kaon.errors import require
from kaon.optimization.export import onnx_files, save_onnx
from kaon.optimization.measure import onnx_runner, predict
from kaon.optimization.report import Variant

if TYPE_CHECKING:
    from kaon.optimization._builder import Builder

CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")


def build_fp16(builder: Builder, base: Variant) -> None:
    """Add two measured rows to `builder`: fp32 on the GPU (reference) and fp16."""
    onnx = require("onnx", "onnx", "fp16 variants")
    float16 = require("onnxruntime.transformers.float16", "onnx", "fp16 variants")
    ctx = builder.ctx
    folder = ctx.folder / "fp16"
    folder.mkdir(parents=True, exist_ok=True)
    proto = float16.convert_float_to_float16(onnx.load(str(base.files["model.onnx"])), keep_io_types=True)
    path = save_onnx(proto, folder / "model.onnx")
    reference = Variant("onnx-fp32-cuda", ("onnx",), "onnx", device="cuda", threads=ctx.num_threads,
                        candidate=False, files=dict(base.files), notes=["fp32 on the same GPU, for comparison"])
    variant = Variant("fp16", ("fp16",), "onnx", device="cuda", threads=ctx.num_threads, files=onnx_files(path),
                      notes=["float16 weights and compute on CUDA; inputs and outputs stay float32"])
    for v, model_path in ((reference, base.files["model.onnx"]), (variant, path)):
        runner = onnx_runner(model_path, num_threads=ctx.num_threads, providers=CUDA)
        builder._score(v, runner, predict(runner, ctx.source.input_name, ctx.held[0]))
