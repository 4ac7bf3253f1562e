"""Gradient attributions in one fused pass: integrated gradients and saliency.

The maths is captum's (IntegratedGradients with its default Gauss-Legendre rule, Saliency with
absolute gradients) and tests pin the results to captum's within float tolerance. Doing it here
rather than through captum's classes saves captum's per-call work, which on a small model is most
of the time: captum recomputes the quadrature nodes with numpy twice per call and builds the scaled
inputs with one Python-level tensor op per step (~9 ms of a 10 ms call on a digit). kaon caches
the nodes and scales all steps with one broadcast.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch

Forward = Callable[[torch.Tensor], torch.Tensor]  # (B, *item) -> (B,) one score per row


@lru_cache(maxsize=32)
def _gauss_legendre(n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in [0, 1] and their weights (summing to 1), as captum's 'gausslegendre' makes them."""
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return 0.5 * (1 + nodes), 0.5 * weights


def integrated_gradients(score: Forward, x: torch.Tensor, baseline: torch.Tensor, n_steps: int = 50,
                         internal_batch_size: int | None = None) -> torch.Tensor:
    """(x - baseline) * the average gradient of `score` along the straight path baseline -> x.

    `score` maps a batch (B, *item) to one scalar per row (the target's output, already selected).
    The path points of all rows and steps go through the model together, `internal_batch_size`
    rows at a time (default: all at once).
    """
    nodes, weights = _gauss_legendre(n_steps)
    n = x.shape[0]
    extra = (1,) * (x.dim() - 1)
    alphas = torch.as_tensor(nodes, dtype=x.dtype, device=x.device).view(n_steps, 1, *extra)
    step_weights = torch.as_tensor(weights, dtype=torch.float32, device=x.device).view(n_steps, 1, *extra)
    delta = x - baseline  # (N, *item)
    steps_per_chunk = n_steps if not internal_batch_size else max(1, internal_batch_size // max(1, n))
    total = torch.zeros_like(x, dtype=torch.float32)
    for start in range(0, n_steps, steps_per_chunk):
        stop = min(n_steps, start + steps_per_chunk)
        # (S, N, *item) -> (S * N, *item): step-major, as captum orders them
        path = (baseline.unsqueeze(0) + alphas[start:stop] * delta.unsqueeze(0)).reshape(-1, *x.shape[1:])
        path.requires_grad_(True)
        with torch.enable_grad():
            scores = score(path)
            (grads,) = torch.autograd.grad(scores.sum(), path)
        grads = grads.view(stop - start, n, *x.shape[1:]).float()
        total += (grads * step_weights[start:stop]).sum(dim=0)
    return total * delta.float()


def saliency(score: Forward, x: torch.Tensor) -> torch.Tensor:
    """|d score / d x| per input feature (captum's Saliency with abs=True)."""
    leaf = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grads,) = torch.autograd.grad(score(leaf).sum(), leaf)
    return grads.abs().float()


def target_scores(forward: Callable[[torch.Tensor], Any], targets: torch.Tensor | None,
                  num_rows: int) -> Forward:
    """A Forward that picks each row's target output; the targets repeat for every path step."""

    def score(batch: torch.Tensor) -> torch.Tensor:
        out = first_output(forward(batch))
        if out.dim() == 1:
            return out
        if targets is None:
            return out[:, 0] if out.shape[1] == 1 else out.sum(dim=1)
        index = targets.repeat(batch.shape[0] // num_rows).view(-1, 1).to(out.device)
        return out.gather(1, index).squeeze(1)

    return score


def first_output(result: Any) -> torch.Tensor:
    """A module's first output: a tensor, the first of a tuple/list, or the first value of a dict."""
    if isinstance(result, torch.Tensor):
        return result
    if isinstance(result, dict):
        return next(iter(result.values()))
    if hasattr(result, "logits"):  # transformers' ModelOutput
        return result.logits
    return result[0]
