"""Which operator groups to quantize: a pure function of measured timings and the target.

On one CPU, int8 pays for dense layers and costs for a convolution over a single input channel
(the quantize/dequantize work outweighs a tiny kernel), so "quantize everything" can make a model
slower. Each group is timed alone in int8 against the fp32 model (`profile.py`); this decides::

    >>> plan = plan_quantization([GroupTiming("Gemm", 0.061, 0.048),
    ...                           GroupTiming("Conv (1 input channel)", 0.061, 0.51)], target="throughput")
    >>> plan.quantize, plan.keep
    (('Gemm',), ('Conv (1 input channel)',))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Target = Literal["throughput", "latency", "size"]
# A group whose int8 model is at most 3% slower is still quantized: that is within timing noise
# on a shared machine, and int8 makes its weights 4x smaller.
MIN_SPEEDUP = 0.97


@dataclass(frozen=True)
class GroupTiming:
    """The whole model's time per batch with fp32 everywhere vs with only `group` in int8.

    `accuracy_drop_pts`: accuracy points that quantizing only this group loses (None: not measured).
    """

    group: str
    fp32_ms: float
    int8_ms: float
    accuracy_drop_pts: float | None = None

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms if self.int8_ms > 0 else float("inf")


@dataclass(frozen=True)
class QuantizationPlan:
    quantize: tuple[str, ...]
    keep: tuple[str, ...]
    reasons: tuple[str, ...]

    def describe(self) -> str:
        return "; ".join(self.reasons)


def plan_quantization(timings: Sequence[GroupTiming], *, target: Target, min_speedup: float = MIN_SPEEDUP,
                      max_accuracy_drop: float | None = None) -> QuantizationPlan:
    """Quantize the groups that int8 makes faster here (all of them when the target is size).

    A group that alone loses more than `max_accuracy_drop` accuracy points stays fp32 whatever the target.
    """
    quantize, keep, reasons = [], [], []
    for t in timings:
        change = f"{t.speedup:.2f}x faster" if t.speedup >= 1 else f"{1 / t.speedup:.2f}x slower"
        lost = t.accuracy_drop_pts
        if lost is not None:
            change += f", loses {lost:.2f} accuracy pts" if lost >= 0 else f", gains {-lost:.2f} accuracy pts"
        if max_accuracy_drop is not None and lost is not None and lost > max_accuracy_drop:
            keep.append(t.group)
            reasons.append(f"{t.group}: kept fp32 (int8 alone: {change}, over the budget)")
        elif target == "size":
            quantize.append(t.group)
            reasons.append(f"{t.group}: int8 (target size; int8 alone: {change})")
        elif t.speedup >= min_speedup:
            quantize.append(t.group)
            reasons.append(f"{t.group}: int8 ({change})")
        else:
            keep.append(t.group)
            reasons.append(f"{t.group}: kept fp32 (int8 {change})")
    return QuantizationPlan(tuple(quantize), tuple(keep), tuple(reasons))


def keep_most_sensitive(losses: Mapping[str, float], *, max_loss: float) -> tuple[str, ...]:
    """The fewest layers to keep out of int8 so that the others, together, lose at most `max_loss`.

    `losses[layer]`: what quantizing only that layer loses (e.g. 100 x (1 - worst-sentence cosine)).
    Losses are taken to add up (on all-MiniLM-L6-v2 the 36 Linear layers alone sum to 0.69 pts of mean
    cosine, all of them together lose 0.69), so the largest go first::

        >>> keep_most_sensitive({"ffn.0": 0.31, "ffn.1": 0.19, "attn.0": 0.01}, max_loss=0.25)
        ('ffn.0',)
    """
    kept: list[str] = []
    total = sum(max(loss, 0.0) for loss in losses.values())
    for layer, loss in sorted(losses.items(), key=lambda item: item[1], reverse=True):
        if total <= max_loss:
            break
        kept.append(layer)
        total -= max(loss, 0.0)
    return tuple(kept)
