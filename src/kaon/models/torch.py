"""PyTorch models: an in-memory `nn.Module`, or a `torch.export` ExportedProgram saved as `.pt2`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kaon.errors import InvalidInputError, ModelLoadError, require
from kaon.models.model import Model
from kaon.types import Signature, TensorSpec


def _torch() -> Any:
    return require("torch", "torch", "Running a PyTorch model")


def outputs_to_numpy(result: Any, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """A module's output (tensor, tuple of tensors or dict) as named numpy arrays."""
    torch = _torch()
    if isinstance(result, torch.Tensor):
        items = [result]
    elif isinstance(result, dict):
        return {k: v.detach().float().cpu().numpy() if v.dtype in (torch.bfloat16, torch.float16)
                else v.detach().cpu().numpy() for k, v in result.items()}
    else:
        items = list(result)
    if names is None or len(names) != len(items):
        names = ["output"] if len(items) == 1 else [f"output_{i}" for i in range(len(items))]
    return {n: t.detach().cpu().numpy() for n, t in zip(names, items, strict=True)}


def _writable(array: np.ndarray) -> np.ndarray:
    """torch.from_numpy warns on read-only arrays (e.g. views of a request body); copy those."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


class TorchModel(Model):
    """Runs a `torch.nn.Module` (or an ExportedProgram's module) in inference mode on numpy arrays."""

    framework = "torch"

    def __init__(self, module: Any, signature: Signature, name: str = "model", device: str | None = None) -> None:
        super().__init__(signature, name)
        torch = _torch()
        self.device = torch.device(device or "cpu")
        self.module = module
        if hasattr(module, "eval") and callable(module.eval):
            try:
                module.eval()
            except (NotImplementedError, RuntimeError):
                pass  # an ExportedProgram's module cannot switch mode; it was exported in eval mode
        self._input_names = [s.name for s in signature.inputs]
        self._output_names = [s.name for s in signature.outputs]

    @classmethod
    def from_module(cls, module: Any, input_example: np.ndarray | dict[str, np.ndarray],
                    name: str = "model", labels: list[str] | None = None) -> TorchModel:
        """Wrap a module; the signature is inferred by running it once on `input_example`."""
        torch = _torch()
        inputs = input_example if isinstance(input_example, dict) else {"input": np.asarray(input_example)}
        with torch.inference_mode():
            module.eval()
            out = module(*[torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values()])
        outputs = outputs_to_numpy(out)
        return cls(module, Signature.infer(inputs, outputs, labels), name)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = _torch()
        args = [torch.from_numpy(_writable(inputs[n])).to(self.device) for n in self._input_names]
        with torch.inference_mode():
            result = self.module(*args)
        return outputs_to_numpy(result, self._output_names)


def export_program(module: Any, input_example: np.ndarray | dict[str, np.ndarray], path: Path) -> Signature:
    """Save `module` as a torch.export ExportedProgram with a dynamic batch axis; return its signature."""
    torch = _torch()
    inputs = input_example if isinstance(input_example, dict) else {"input": np.asarray(input_example)}
    # torch.export specializes a batch of 1; export on a batch of 2 so the batch axis stays dynamic.
    batch = {k: np.concatenate([v, v])[: max(2, len(v))] if len(v) < 2 else v for k, v in inputs.items()}
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in batch.values())
    dim = torch.export.Dim("batch", min=1)
    module.eval()
    try:
        program = torch.export.export(module, tensors, dynamic_shapes=tuple({0: dim} for _ in tensors))
    except Exception as exc:
        raise ModelLoadError(
            f"torch.export could not trace {type(module).__name__}: {exc}. "
            f"Expected a module whose forward works for any batch size with inputs like "
            f"{[(k, v.shape, str(v.dtype)) for k, v in inputs.items()]}."
        ) from exc
    torch.export.save(program, str(path))
    with torch.inference_mode():
        out = module(*tensors)
    return Signature.infer(inputs, outputs_to_numpy(out))


def load_program(path: Path, name: str | None = None, signature: Signature | None = None) -> TorchModel:
    """Load a `.pt2` ExportedProgram. Its signature comes from the program's example inputs."""
    torch = _torch()
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"'{path}' could not be loaded as a torch.export program (.pt2): {exc}. "
            f"Expected a file written by torch.export.save."
        ) from exc
    if signature is None:
        signature = _program_signature(program)
    return TorchModel(program.module(), signature, name or Path(path).stem)


def _program_signature(program: Any) -> Signature:
    torch = _torch()
    specs = []
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user_inputs = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    for node in placeholders:
        if node.name not in user_inputs:
            continue
        meta = node.meta.get("val")
        shape = tuple(int(d) if isinstance(d, int) else -1 for d in meta.shape)
        dtype = str(meta.dtype).replace("torch.", "")
        specs.append(TensorSpec("input" if len(user_inputs) == 1 else node.name, dtype, shape))
    # Run once on zeros to learn the outputs' shapes.
    example = [torch.zeros(*[2 if d == -1 else d for d in s.shape], dtype=getattr(torch, s.dtype)) for s in specs]
    with torch.inference_mode():
        try:
            out = program.module()(*example)
        except Exception as exc:
            raise InvalidInputError(f"the exported program could not run on zeros: {exc}") from exc
    outputs = outputs_to_numpy(out)
    return Signature(specs, [TensorSpec(k, str(v.dtype), (-1, *v.shape[1:])) for k, v in outputs.items()])
