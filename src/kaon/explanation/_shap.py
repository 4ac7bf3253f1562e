"""shap's explainers (the `shap` extra): expected gradients and permutation Shapley values.

- `shap_gradient` runs shap.GradientExplainer (expected gradients): integrated gradients averaged over
  random points on the paths from a reference sample to the input. It needs a torch model; its
  attributions add up, in expectation, to f(x) - E[f(reference)].
- `shap_permutation` runs shap.PermutationExplainer over kaon's interpretable features (the patches
  KernelSHAP and LIME fit, `default_feature_mask`), with forward passes only, so ONNX models get it
  too. Each permutation is walked forward and back, so the patch attributions add up exactly to
  f(x) - E[f(reference)] whatever the budget. Every feature of a patch gets the patch's value, as
  captum gives it for KernelSHAP.

The references (N, M, *item) are what "absent" means for each input: the background sample when one
is given, else the baseline (one row). shap draws from numpy's global generator; kaon seeds it and
puts the caller's state back afterwards. The first shap_permutation in a process waits for numba to
compile shap's masking kernels (~5-8 s on 2 cores); later calls take milliseconds per digit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from kaon.errors import require
from kaon.explanation._perturbation import default_feature_mask

Forward = Callable[[torch.Tensor], torch.Tensor]  # (B, *item) -> (B, K)


def _shap() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # shap's colormaps, on import
        return require("shap", "shap", "Explaining with shap (shap_gradient, shap_permutation)")


@contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class _TargetOutput(torch.nn.Module):
    """One output column of `forward`, shaped (B, 1): GradientExplainer takes a torch module."""

    def __init__(self, forward: Forward, target: int) -> None:
        super().__init__()
        self.score = forward
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x)[:, self.target: self.target + 1]


def gradient(forward: Forward, x: torch.Tensor, targets: torch.Tensor, references: torch.Tensor,
             n_samples: int, seed: int, internal_batch_size: int | None = None) -> torch.Tensor:
    """Expected gradients of each input's target output, `n_samples` path points per input."""
    shap = _shap()
    rows = []
    with _numpy_seed(seed):
        for i in range(x.shape[0]):
            explainer = shap.GradientExplainer(_TargetOutput(forward, int(targets[i])), references[i],
                                               batch_size=internal_batch_size or 50)
            values = explainer.shap_values(x[i: i + 1], nsamples=n_samples, rseed=seed)  # (1, *item, 1)
            rows.append(torch.from_numpy(np.asarray(values)[..., 0]))
    return torch.cat(rows).float()


def permutation(forward: Forward, x: torch.Tensor, targets: torch.Tensor, references: torch.Tensor,
                n_samples: int, seed: int) -> torch.Tensor:
    """Permutation Shapley values of the patches; at least one permutation (2 x patches + 1 passes)."""
    shap = _shap()
    mask = default_feature_mask(tuple(x.shape[1:])).to(x.device)  # (*item): the patch of each feature
    num_patches = int(mask.max()) + 1
    masker = shap.maskers.Independent(np.zeros((1, num_patches)), max_samples=1)  # a patch off: 0
    rows = []
    with _numpy_seed(seed), torch.no_grad():
        for i in range(x.shape[0]):
            game = _patch_game(forward, x[i], int(targets[i]), references[i], mask)
            explainer = shap.PermutationExplainer(game, masker, seed=seed)
            result = explainer(np.ones((1, num_patches)), max_evals=max(n_samples, 2 * num_patches + 1),
                               silent=True)
            rows.append(torch.from_numpy(np.asarray(result.values[0]))[mask.cpu()])  # (*item)
    return torch.stack(rows).float()


def _patch_game(forward: Forward, x: torch.Tensor, target: int, references: torch.Tensor,
                mask: torch.Tensor) -> Callable[[np.ndarray], np.ndarray]:
    """(B, patches) on/off -> (B,) target output, absent patches taken from each reference in turn."""
    item = tuple(x.shape)
    num_references = references.shape[0]

    def game(on: np.ndarray) -> np.ndarray:
        keep = torch.from_numpy(on).to(x.device).bool()[:, mask]  # (B, *item)
        blended = torch.where(keep.unsqueeze(1), x, references.unsqueeze(0))  # (B, M, *item)
        scores = forward(blended.reshape(-1, *item))[:, target]  # (B * M,)
        return scores.view(-1, num_references).mean(1).cpu().numpy()

    return game
