"""Explanation: what `kaon.explain` hands back.

    >>> exp = kaon.explain("digits@latest", x, method="integrated_gradients")   # doctest: +SKIP
    >>> exp.attributions.shape, exp.targets                                      # doctest: +SKIP
    ((1, 1, 8, 8), [3])
    >>> exp.top_features(k=3)[0]                                                 # doctest: +SKIP
    [((0, 2, 4), 0.41), ((0, 3, 4), 0.33), ((0, 5, 3), 0.12)]

`attributions` has the inputs' shape: one score per input feature saying how much it pushed the
`targets` class up (positive) or down (negative). Text explanations also carry the `tokens`, and
attention explanations the raw maps in `attentions` (N, layers, heads, tokens, tokens).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Explanation:
    """Attributions for a batch of inputs, with the classes they explain and how they were made."""

    attributions: np.ndarray  # (N, *item shape), or (N, tokens) for text
    targets: list[Any]  # the output index each row explains (a text encoder: the reference text, or None)
    method: str
    predictions: np.ndarray | None = None  # the model's output rows (N, K) on the inputs
    inputs: np.ndarray | None = None
    heatmaps: list[bytes] | None = None  # one PNG per input, attribution overlaid on the input
    tokens: list[list[str]] | None = None  # text: the tokens each row of attributions scores
    attentions: np.ndarray | None = None  # attention maps (N, layers, heads, T, T)
    labels: list[str] | None = None
    trust: dict[str, Any] = field(default_factory=dict)  # faithfulness and sanity-check scores, when asked

    def __len__(self) -> int:
        return int(self.attributions.shape[0])

    def top_features(self, k: int = 5) -> list[list[tuple[tuple[int, ...], float]]]:
        """Per input, the `k` features with the largest |attribution|: (index within the item, value)."""
        rows = []
        for row in self.attributions:
            flat = row.reshape(-1)
            order = np.argsort(-np.abs(flat), kind="stable")[: max(0, k)]
            rows.append([(tuple(int(i) for i in np.unravel_index(j, row.shape)), float(flat[j])) for j in order])
        return rows

    def top_tokens(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """Text: per input, the `k` tokens with the largest |attribution|."""
        if self.tokens is None:
            return []
        out = []
        for tokens, row in zip(self.tokens, self.attributions, strict=True):
            order = np.argsort(-np.abs(row[: len(tokens)]), kind="stable")[:k]
            out.append([(tokens[j], float(row[j])) for j in order])
        return out

    def label_of(self, target: Any) -> str:
        if target is None:
            return "distance from an empty text"
        if isinstance(target, str):
            return f"similarity to {target!r}"
        if self.labels and 0 <= target < len(self.labels):
            return self.labels[target]
        return str(target)

    def heatmaps_base64(self) -> list[str]:
        return [base64.b64encode(png).decode("ascii") for png in self.heatmaps or []]

    def to_html(self) -> str:
        """Text: one page with every input's tokens highlighted (red pushes the target up, blue down)."""
        if self.tokens is None:
            raise ValueError("to_html needs a text explanation (tokens); image explanations have heatmaps")
        rows = []
        for i, (tokens, scores) in enumerate(zip(self.tokens, self.attributions, strict=True)):
            scale = float(np.abs(scores[: len(tokens)]).max()) or 1.0
            spans = []
            for token, score in zip(tokens, scores, strict=False):
                alpha = min(1.0, abs(float(score)) / scale)
                color = "220,38,38" if score > 0 else "37,99,235"
                spans.append(f'<span title="{float(score):+.4f}" style="background: rgba({color},{alpha:.2f})">'
                             f"{html.escape(token)}</span>")
            rows.append(f"<section><h2>input {i}: target {html.escape(self.label_of(self.targets[i]))}</h2>"
                        f"<p class=tokens>{' '.join(spans)}</p></section>")
        return ("<!doctype html><html><head><meta charset=utf-8><title>kaon explanation</title><style>"
                "body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}"
                ".tokens{font-size:1.3rem;line-height:2.2}.tokens span{padding:.15rem .2rem;border-radius:.25rem}"
                "</style></head><body>"
                f"<h1>Token attributions ({html.escape(self.method)})</h1>"
                "<p>red: pushes the target up; blue: pushes it down; hover a token for its score.</p>"
                + "".join(rows) + "</body></html>")

    def to_dict(self, *, include_heatmaps: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (the served /explain answers one of these per input, split by row)."""
        data: dict[str, Any] = {
            "method": self.method,
            "targets": list(self.targets),
            "attributions": self.attributions.tolist(),
        }
        if self.predictions is not None:
            data["predictions"] = self.predictions.tolist()
        if self.tokens is not None:
            data["tokens"] = self.tokens
        if include_heatmaps and self.heatmaps:
            data["heatmaps"] = self.heatmaps_base64()
        if self.trust:
            data["trust"] = self.trust
        return data

    def __repr__(self) -> str:
        shape = tuple(self.attributions.shape)
        return f"<Explanation method={self.method!r} attributions={shape} targets={self.targets[:8]}>"
