"""kaon.explanation: attributions, heatmaps, attention maps, and checks that the explanations hold up.

The names load on first use, so that `kaon.serving` can name the methods (for the /explain schema)
without importing torch: an ONNX server pays for torch only when /explain is first called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kaon.explanation.methods import METHODS, Method

if TYPE_CHECKING:
    from kaon.explanation.attention import attention_maps, attention_rollout
    from kaon.explanation.checks import faithfulness, randomization_check, trust, trust_report
    from kaon.explanation.explainer import explain
    from kaon.explanation.explanation import Explanation
    from kaon.explanation.heatmap import render_heatmap
    from kaon.explanation.text import TextModel

_LAZY = {
    "attention_maps": "kaon.explanation.attention",
    "attention_rollout": "kaon.explanation.attention",
    "explain": "kaon.explanation.explainer",
    "Explanation": "kaon.explanation.explanation",
    "faithfulness": "kaon.explanation.checks",
    "randomization_check": "kaon.explanation.checks",
    "trust": "kaon.explanation.checks",
    "trust_report": "kaon.explanation.checks",
    "render_heatmap": "kaon.explanation.heatmap",
    "TextModel": "kaon.explanation.text",
}

__all__ = [
    "METHODS",
    "Explanation",
    "Method",
    "TextModel",
    "attention_maps",
    "attention_rollout",
    "explain",
    "faithfulness",
    "randomization_check",
    "render_heatmap",
    "trust",
    "trust_report",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kaon.explanation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
