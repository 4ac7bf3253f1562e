"""Attention maps and attention rollout for transformer models.

`attention_maps` stacks what the model returns with `output_attentions=True` into one array
(N, layers, heads, tokens, tokens). `attention_rollout` (Abnar & Zuidema, 2020) follows attention
through the layers: average the heads, add the residual connection as identity, renormalise the rows
and multiply the layers' matrices; the rows the model pools ([CLS] for a classifier, every token for
a mean-pooling encoder) then say how much each input token reaches its output.

    >>> import torch
    >>> maps = torch.softmax(torch.randn(1, 2, 4, 5, 5), dim=-1)   # (N, layers, heads, T, T)
    >>> rollout = attention_rollout(maps)
    >>> rollout.shape, bool(torch.allclose(rollout.sum(-1), torch.ones(1, 5)))
    (torch.Size([1, 5, 5]), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def attention_maps(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """A model's per-layer attentions [(N, heads, T, T)] * layers -> (N, layers, heads, T, T)."""
    if not attentions or any(a is None for a in attentions):
        raise ValueError("the model returned no attention weights; load it with attn_implementation='eager'")
    return torch.stack(list(attentions), dim=1)


def attention_rollout(maps: torch.Tensor, residual: float = 0.5, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(N, layers, heads, T, T) -> (N, T, T): attention composed across layers, rows summing to 1.

    `residual` is the weight of the skip connection (0.5 in the paper); `mask` (N, T) zeroes padding
    so padded tokens neither give nor receive attention.
    """
    n, _, _, t, _ = maps.shape
    eye = torch.eye(t, dtype=maps.dtype, device=maps.device).expand(n, t, t)
    rollout = eye.clone()
    keep = None
    if mask is not None:
        keep = mask.to(maps.dtype)
        keep = keep.unsqueeze(1) * keep.unsqueeze(2)  # (N, T, T)
    for layer in range(maps.shape[1]):
        a = maps[:, layer].mean(dim=1)  # (N, T, T): heads averaged
        a = residual * eye + (1 - residual) * a
        if keep is not None:
            a = a * keep + eye * (1 - keep)  # padding keeps to itself
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        rollout = a @ rollout
    return rollout


def pooled_rows(flow: torch.Tensor, mask: torch.Tensor, cls: bool) -> torch.Tensor:
    """(N, T, T) token-to-token attention -> (N, T): what reaches the pooled representation.

    A classifier pools [CLS] (row 0); a mean-pooling encoder (sentence-transformers) averages the
    rows of its real tokens.
    """
    if cls:
        return flow[:, 0, :]
    weights = mask.to(flow.dtype)
    return (flow * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)
