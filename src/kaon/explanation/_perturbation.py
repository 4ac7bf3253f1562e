"""Forward-only attributions through captum: occlusion, KernelSHAP and LIME.

They need nothing but forward passes, so they explain any model kaon can run (ONNX included).
Images are grouped into patches (a feature mask) so that KernelSHAP and LIME fit a few dozen
interpretable features rather than one per pixel.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from kaon.errors import require

Forward = Callable[[torch.Tensor], torch.Tensor]  # (B, *item) -> (B, K)
_MAX_INTERPRETABLE_FEATURES = 64


def _captum_attr() -> object:
    return require("captum.attr", "explain", "Occlusion, KernelSHAP and LIME explanations")


def image_layout(item_shape: tuple[int, ...]) -> str | None:
    """'chw' or 'hwc' for an image item with 1 or 3 channels of at least 8x8 pixels, else None."""
    if len(item_shape) != 3:
        return None
    if item_shape[0] in (1, 3) and min(item_shape[1:]) >= 8:
        return "chw"
    if item_shape[2] in (1, 3) and min(item_shape[:2]) >= 8:
        return "hwc"
    return None


def default_window(item_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Occlusion's sliding window and strides: about an eighth of the image, all channels at once."""
    layout = image_layout(item_shape)
    if layout is None:
        return tuple(1 for _ in item_shape), tuple(1 for _ in item_shape)
    h, w = (item_shape[1], item_shape[2]) if layout == "chw" else (item_shape[0], item_shape[1])
    size = max(2, round(min(h, w) / 8))
    stride = max(1, size // 2)
    if layout == "chw":
        return (item_shape[0], size, size), (item_shape[0], stride, stride)
    return (size, size, item_shape[2]), (stride, stride, item_shape[2])


def default_feature_mask(item_shape: tuple[int, ...]) -> torch.Tensor:
    """Group the item's features into at most 64 interpretable ones: square patches for images."""
    layout = image_layout(item_shape)
    if layout is not None:
        h, w = (item_shape[1], item_shape[2]) if layout == "chw" else (item_shape[0], item_shape[1])
        side = max(1, math.ceil(math.sqrt(h * w / _MAX_INTERPRETABLE_FEATURES)))
        rows = torch.arange(h) // side
        cols = torch.arange(w) // side
        grid = rows.view(-1, 1) * math.ceil(w / side) + cols.view(1, -1)  # (H, W)
        mask = grid.unsqueeze(0).expand(item_shape[0], h, w) if layout == "chw" else \
            grid.unsqueeze(-1).expand(h, w, item_shape[2])
        return mask.contiguous()
    count = math.prod(item_shape)
    group = max(1, math.ceil(count / _MAX_INTERPRETABLE_FEATURES))
    return (torch.arange(count) // group).view(item_shape)


def occlusion(forward: Forward, x: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor,
              perturbations_per_eval: int = 64) -> torch.Tensor:
    attr = _captum_attr()
    window, strides = default_window(tuple(x.shape[1:]))
    with torch.no_grad():
        result = attr.Occlusion(forward).attribute(  # type: ignore[attr-defined]
            x, sliding_window_shapes=window, strides=strides, target=targets.tolist(),
            baselines=_scalar_or(baseline), perturbations_per_eval=perturbations_per_eval)
    return result.float()


def kernel_shap(forward: Forward, x: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor,
                n_samples: int, seed: int) -> torch.Tensor:
    attr = _captum_attr()
    return _per_example(attr.KernelShap(forward), x, targets, baseline, n_samples, seed)  # type: ignore[attr-defined]


def lime(forward: Forward, x: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor,
         n_samples: int, seed: int) -> torch.Tensor:
    attr = _captum_attr()
    from captum._utils.models.linear_model import SkLearnRidge

    # captum's default (Lasso, alpha=0.01) zeroes every weight when the outputs are probabilities;
    # a ridge fit keeps a signed weight on each patch.
    explainer = attr.Lime(forward, interpretable_model=SkLearnRidge(alpha=1.0))  # type: ignore[attr-defined]
    return _per_example(explainer, x, targets, baseline, n_samples, seed)


def _per_example(explainer: object, x: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor,
                 n_samples: int, seed: int) -> torch.Tensor:
    """KernelSHAP and LIME fit one surrogate per input; captum would loop too, with a warning."""
    mask = default_feature_mask(tuple(x.shape[1:])).to(x.device).unsqueeze(0)
    rows = []
    with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum warns about sklearn fits with few samples
        torch.manual_seed(seed)
        for i in range(x.shape[0]):
            base = _scalar_or(baseline if baseline.dim() == 0 else baseline[i: i + 1])
            rows.append(explainer.attribute(  # type: ignore[attr-defined]
                x[i: i + 1], target=int(targets[i]), baselines=base, feature_mask=mask,
                n_samples=n_samples, perturbations_per_eval=min(64, n_samples)).float())
    return torch.cat(rows)


def _scalar_or(baseline: torch.Tensor) -> torch.Tensor | float:
    """captum takes a number or a tensor shaped like the input, not a 0-d tensor."""
    return float(baseline) if baseline.dim() == 0 else baseline
