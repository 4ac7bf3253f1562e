"""Pruning: structured (whole channels removed with torch-pruning) and unstructured (smallest weights zeroed).

    >>> module = editable_module(program)                                    # doctest: +SKIP
    >>> prune_structured(module, x[:2], ratio=0.5)                            # doctest: +SKIP
    >>> fine_tune(module, x_tune, y_tune)                                     # doctest: +SKIP

Structured pruning makes every layer it touches smaller, so the model is smaller and faster on
any runtime; the last layer (the classes) is never pruned. Unstructured pruning keeps the shapes:
onnxruntime's dense kernels run it at the same speed, and the file stays the same size.

The fine-tune is a plain loop rather than kaon.training.Trainer: optimization and training are
sibling layers and do not import each other (ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from kaon._internal.scores import two_class_tensor
from kaon.errors import InvalidInputError, require
from kaon.optimization._fx import PRUNABLE, editable_module

__all__ = ["editable_module", "fine_tune", "prune_structured", "prune_unstructured"]


def prune_structured(module: nn.Module, example: np.ndarray, *, ratio: float = 0.5) -> dict[str, tuple[int, int]]:
    """Remove `ratio` of the channels of every conv/linear layer but the last; return {layer: (before, after)}.

    Widths stay multiples of 16 (of 8 for narrow models): onnxruntime's blocked convolution kernels
    need that, and a digits conv left with 24 channels ran 3.4x slower than one with 16.
    """
    tp = require("torch_pruning", "optimize", "Structured pruning")
    inputs = torch.from_numpy(np.ascontiguousarray(example))
    layers = _layers_in_call_order(module, inputs)
    if not layers:
        raise InvalidInputError(
            f"structured pruning found no nn.Conv or nn.Linear layer in {type(module).__name__}. "
            f"Received: a model without prunable layers."
        )
    before = {name: _width(layer) for name, layer in layers}
    narrowest = min(before[name] for name, _ in layers[:-1]) if len(layers) > 1 else 0
    round_to = 16 if narrowest >= 32 else (8 if narrowest >= 16 else None)
    ratios = {layer: 1 - _kept(before[name], ratio, round_to) / before[name] for name, layer in layers[:-1]}
    module.eval()
    pruner = tp.pruner.MetaPruner(module, inputs, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.0, pruning_ratio_dict={k: v for k, v in ratios.items() if v > 0},
                                  ignored_layers=[layers[-1][1]], round_to=round_to)
    pruner.step()
    return {name: (before[name], _width(layer)) for name, layer in layers if _width(layer) != before[name]}


def prune_unstructured(module: nn.Module, *, ratio: float = 0.5) -> dict[str, torch.Tensor]:
    """Zero the `ratio` smallest-magnitude weights of each conv/linear layer; return the masks that keep them 0."""
    masks = {}
    with torch.no_grad():
        for name, layer in module.named_modules():
            if isinstance(layer, PRUNABLE):
                weight = layer.weight
                k = int(weight.numel() * ratio)
                if k < 1:
                    continue
                threshold = weight.abs().flatten().kthvalue(k).values
                mask = weight.abs() > threshold
                weight.mul_(mask)
                masks[name] = mask
    return masks


def fine_tune(module: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 10, lr: float = 1e-3,
              batch_size: int = 32, max_steps: int = 600, seed: int = 0,
              masks: dict[str, torch.Tensor] | None = None, teacher: np.ndarray | None = None,
              binary_probabilities: bool | None = None) -> float:
    """A short Adam fine-tune on (x, y) labels; `masks` keep pruned weights at zero. Returns the last loss.

    `teacher`: the original model's probabilities on x. The loss then also pulls the pruned model
    towards them (knowledge distillation, half and half), which recovers more than the labels alone.
    """
    inputs, labels = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    targets = torch.from_numpy(np.asarray(teacher, dtype=np.float32)) if teacher is not None else None
    with torch.no_grad():
        first = module(inputs[:16])
        binary = isinstance(first, torch.Tensor) and first.dim() == 2 and first.shape[1] == 1
        if binary:  # one output per sample: what the caller decided on all of the model's outputs, if it did
            probabilities = (binary_probabilities if binary_probabilities is not None
                             else bool(first.min() >= 0 and first.max() <= 1))
        else:
            probabilities = _outputs_probabilities(first)
    layers = dict(module.named_modules())
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    module.train()
    loss = torch.tensor(float("nan"))
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), batch_size):
            index = order[start:start + batch_size]
            out = two_class_tensor(module(inputs[index]), probabilities)  # a binary model's one output: 2
            log_p = torch.log(out.clamp_min(1e-8)) if probabilities else nn.functional.log_softmax(out, dim=1)
            loss = nn.functional.nll_loss(log_p, labels[index])
            if targets is not None:
                loss = 0.5 * loss + 0.5 * nn.functional.kl_div(log_p, targets[index], reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if masks:
                with torch.no_grad():
                    for name, mask in masks.items():
                        layers[name].weight.mul_(mask)
            steps += 1
            if steps >= max_steps:
                break
        if steps >= max_steps:
            break
    module.eval()
    return float(loss.detach())


def _outputs_probabilities(out: Any) -> bool:
    return bool(isinstance(out, torch.Tensor) and out.dim() == 2 and out.min() >= 0
                and torch.allclose(out.sum(dim=1), torch.ones(len(out)), atol=1e-3))


def _layers_in_call_order(module: nn.Module, inputs: torch.Tensor) -> list[tuple[str, nn.Module]]:
    order: list[tuple[str, nn.Module]] = []
    hooks = [layer.register_forward_hook(lambda m, i, o, name=name: order.append((name, m)))
             for name, layer in module.named_modules() if isinstance(layer, PRUNABLE)]
    try:
        with torch.no_grad():
            module(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    seen: dict[str, nn.Module] = {}
    for name, layer in order:
        seen.setdefault(name, layer)
    return list(seen.items())


def _kept(width: int, ratio: float, round_to: int | None) -> int:
    """How many of a layer's `width` channels stay: (1 - ratio) of them, a multiple of round_to, at least round_to."""
    kept = width * (1 - ratio)
    if round_to is None:
        return max(1, round(kept))
    return min(width, max(round_to, int(kept / round_to + 0.5) * round_to))


def _width(layer: nn.Module) -> int:
    weight: Any = layer.weight
    return int(weight.shape[0])
