"""PyTorch models: an in-memory `nn.Module`, or a `torch.export` ExportedProgram saved as `.pt2`."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from kaon._internal.exporters import quiet, summarize
from kaon.errors import ConfigError, InvalidInputError, ModelLoadError, require
from kaon.models._cuda_graphs import GraphRunner
from kaon.models.model import Model
from kaon.types import Signature, TensorSpec


def _torch() -> Any:
    return require("torch", "torch", "Running a PyTorch model")


#: `precision` names -> torch dtypes. fp32 is the default; bf16/fp16 are for GPUs.
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _to_numpy(tensor: Any) -> np.ndarray:
    torch = _torch()
    tensor = tensor.detach()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()  # numpy has no bfloat16; callers get float32 as from an fp32 model
    return tensor.cpu().numpy()


def outputs_to_numpy(result: Any, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """A module's output (tensor, tuple of tensors or dict) as named numpy arrays."""
    torch = _torch()
    if isinstance(result, torch.Tensor):
        items = [result]
    elif isinstance(result, dict):
        return {k: _to_numpy(v) for k, v in result.items()}
    else:
        items = list(result)
    if names is None or len(names) != len(items):
        names = ["output"] if len(items) == 1 else [f"output_{i}" for i in range(len(items))]
    return {n: _to_numpy(t) for n, t in zip(names, items, strict=True)}


def resolve_device(device: str | None) -> str:
    """'auto' (or None) -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without one is a ConfigError."""
    torch = _torch()
    text = (device or "auto").strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return text
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for, but torch sees no CUDA GPU (torch "
                              f"{torch.__version__}). Use --device cpu, or install a CUDA build of torch.")
        return text
    raise ConfigError(f"device must be auto, cpu, cuda or cuda:N. Received: {device!r}.")


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
        self.precision = "fp32"
        self._dtype = torch.float32
        self._autocast = False  # True when the module could not be cast: autocast runs it in `_dtype`
        self._channels_last = False
        self._graphs: GraphRunner | None = None

    def differentiable_module(self) -> Any:
        torch = _torch()
        return self.module if isinstance(self.module, torch.nn.Module) else None

    def place(self, device: str | None = "auto", precision: str = "fp32", cuda_graphs: bool = True) -> TorchModel:
        """Move the module to `device` ('auto': a CUDA GPU when torch sees one) and run it in `precision`
        (fp32, bf16 or fp16). Inputs and outputs stay float32 numpy arrays. On a GPU, batches of up to 256
        replay CUDA graphs (kaon.models._cuda_graphs) unless `cuda_graphs=False`. Returns self."""
        torch = _torch()
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {sorted(PRECISIONS)}. Received: {precision!r}.")
        target = torch.device(resolve_device(device))
        dtype = getattr(torch, PRECISIONS[precision])
        self.module.to(target)
        self.device, self.precision, self._dtype, self._autocast = target, precision, dtype, False
        self._graphs = None  # captured for the old placement, if any
        # convolutions on a GPU are fastest channels-last (NHWC tensor cores); same results either way
        self._channels_last = target.type == "cuda" and any(len(s.shape) == 4 for s in self.signature.inputs)
        if self._channels_last:
            self.module.to(memory_format=torch.channels_last)
        if dtype != torch.float32:
            self.module.to(dtype)
            try:  # an exported graph may hold float32 constants that no longer match: autocast instead
                self._run(self._zeros())
            except RuntimeError:
                self.module.float()
                self._autocast = True
                self._run(self._zeros())  # fails loudly if the model cannot run in this precision at all
        if cuda_graphs and target.type == "cuda":
            self._graphs = GraphRunner(self._forward, self._channels_last)
        return self

    def warm_up(self, max_batch_size: int) -> None:
        """Capture the CUDA graphs for every batch size up to `max_batch_size` now (a no-op off a GPU)."""
        if self._graphs is None:
            return
        torch = _torch()
        for bucket in self._graphs.buckets_up_to(max_batch_size):
            example = [torch.zeros([bucket] + [1 if d == -1 else d for d in s.shape[1:]],
                                   dtype=getattr(torch, s.dtype)) for s in self.signature.inputs]
            self.run_tensors(example)

    def _zeros(self) -> dict[str, np.ndarray]:
        return {s.name: np.zeros([2 if d == -1 else d for d in s.shape], dtype=s.dtype) for s in self.signature.inputs}

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
        return self.run_tensors([torch.from_numpy(_writable(inputs[n])) for n in self._input_names])

    def run_tensors(self, tensors: list[Any]) -> dict[str, np.ndarray]:
        """Run on torch tensors (one per input, in signature order; on any device), without the numpy
        validation of `run`: for inputs kaon made itself, such as images decoded on the GPU."""
        torch = _torch()
        args = []
        for tensor in tensors:
            tensor = tensor.to(self.device, non_blocking=True)
            if tensor.is_floating_point():
                if self.precision != "fp32" and not self._autocast:  # fp32: inputs keep their own dtype
                    tensor = tensor.to(self._dtype)
                if self._channels_last and tensor.dim() == 4:
                    tensor = tensor.contiguous(memory_format=torch.channels_last)
            args.append(tensor)
        if self._graphs is not None:
            done = self._graphs.run(args, lambda out: outputs_to_numpy(out, self._output_names))
            if done is not None:
                return done  # type: ignore[no-any-return]
        try:
            outputs = self._forward(*args)
        except IndexError as exc:  # an embedding given an id past its table: the input's fault, as onnxruntime says
            raise InvalidInputError(
                f"model '{self.name}' cannot run on this input: {exc}. Check the values against what the model takes "
                f"(for example token ids within its vocabulary)."
            ) from exc
        return outputs_to_numpy(outputs, self._output_names)

    def _forward(self, *args: Any) -> Any:
        torch = _torch()
        # no autocast weight cache: a CUDA graph capture must not keep tensors made outside it
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self._dtype, enabled=self._autocast,
                                                    cache_enabled=False):
            return self.module(*args)


def export_program(module: Any, input_example: np.ndarray | dict[str, np.ndarray], path: Path) -> Signature:
    """Save `module` as a torch.export ExportedProgram with a dynamic batch axis; return its signature."""
    torch = _torch()
    inputs = input_example if isinstance(input_example, dict) else {"input": np.asarray(input_example)}
    params = list(module.parameters())
    floating = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
    wanted = {torch.float16: np.float16, torch.float64: np.float64}.get(floating, np.float32)
    # float64 examples (numpy's and scikit-learn's default) run in the weights' dtype, as fit() does
    inputs = {k: (np.asarray(v).astype(wanted) if np.asarray(v).dtype.kind == "f" else np.asarray(v))
              for k, v in inputs.items()}
    # torch.export specializes a batch of 1; export on a batch of 2 so the batch axis stays dynamic.
    batch = {k: np.concatenate([v, v])[: max(2, len(v))] if len(v) < 2 else v for k, v in inputs.items()}
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in batch.values())
    dim = torch.export.Dim("batch", min=1)
    device = params[0].device if params else None
    moved = device is not None and device.type != "cpu"
    was_training = module.training
    module.eval()
    if moved:
        module.to("cpu")  # a program that loads on any machine (kaon serve places it); moved back below
    try:
        with quiet():
            program = torch.export.export(module, tensors, dynamic_shapes=tuple({0: dim} for _ in tensors))
        with torch.inference_mode():
            out = module(*tensors)
    except Exception as exc:
        reason, hint = summarize(exc), ""
        if "Constraints violated (batch)" in reason:  # axis 0 is not a batch: x[0] passed instead of x[:2]
            reason = "the example's axis 0 is not a batch axis the model can vary"
            hint = " Pass a batch, e.g. input_example=x[:2], not one sample x[0]."
        elif "data-dependent" in reason:
            hint = (" Control flow on the input's values (an `if` on a tensor) cannot be traced: use torch.where "
                    "or torch.cond, or move the decision out of forward.")
        raise ModelLoadError(
            f"torch.export could not trace {type(module).__name__}: {reason}.{hint} "
            f"Expected a module whose forward works for any batch size with inputs like "
            f"{[(k, v.shape, str(v.dtype)) for k, v in inputs.items()]}."
        ) from exc
    finally:
        if moved:
            module.to(device)
        module.train(was_training)
    torch.export.save(program, str(path))
    return Signature.infer(inputs, outputs_to_numpy(out))


def load_program(path: Path, name: str | None = None, signature: Signature | None = None) -> TorchModel:
    """Load a `.pt2` ExportedProgram. Its signature comes from the program's example inputs."""
    torch = _torch()
    # on a bad file torch.export logs the real reason as a traceback through its own handler, then raises
    logger = logging.getLogger("torch.export")
    said = _Collected()
    with _LOADING:  # the logger is the process's: one load at a time swaps its handlers (torch's loads clash anyway)
        handlers, propagates = logger.handlers[:], logger.propagate
        logger.handlers, logger.propagate = [said], False
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            reason = said.last_line() or str(exc)
            raise ModelLoadError(
                f"'{path}' could not be loaded as a torch.export program (.pt2): {reason}. "
                f"Expected a file written by torch.export.save."
            ) from exc
        finally:
            logger.handlers, logger.propagate = handlers, propagates
    if signature is None:
        signature = _program_signature(program)
    return TorchModel(program.module(), signature, name or Path(path).stem)


_LOADING = threading.Lock()


class _Collected(logging.Handler):
    """What a logger said, kept instead of printed: torch.export.load's traceback of a bad file."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def last_line(self) -> str:
        """The last line of the last exception logged (its type and message), or ''."""
        for record in reversed(self.records):
            if record.exc_info and record.exc_info[1] is not None:
                return f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            lines = [line for line in record.getMessage().splitlines() if line.strip()]
            if lines:
                return lines[-1].strip()
        return ""


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
