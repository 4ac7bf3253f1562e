"""The budget rule: the best variant on the target among those within the accuracy budget. Pure.

    >>> original = Score("original", accuracy=0.980, size_bytes=100_000, p50_ms_b1=0.13, throughput_b64=90_000)
    >>> fast = Score("int8", accuracy=0.978, size_bytes=30_000, p50_ms_b1=0.01, throughput_b64=900_000)
    >>> choose_variant([fast], original=original, max_accuracy_drop=0.5, target="throughput").chosen
    'int8'

A variant qualifies when its accuracy is at most `max_accuracy_drop` points below the original's
(on the same held-out data) and it beats the original on the target by at least `min_gain` (5%:
less is within timing noise on a shared machine, and not worth a new version). Among those, the best on the
target wins; variants within 3% of the best count as tied, and a tie goes to the smaller file
(for target size: to the higher throughput), then to the higher accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kaon.optimization.plan import Target

NEAR_TIE = 0.03
MIN_GAIN = 1.05
_EPSILON_PTS = 1e-9


@dataclass(frozen=True)
class Score:
    """What the rule looks at for one variant (accuracy as a fraction, 0.98 = 98%)."""

    name: str
    accuracy: float
    size_bytes: int
    p50_ms_b1: float
    throughput_b64: float


@dataclass(frozen=True)
class Choice:
    chosen: str | None
    reasons: list[str]


def drop_pts(original: Score, variant: Score) -> float:
    """Accuracy points lost (negative: gained)."""
    return (original.accuracy - variant.accuracy) * 100


def goodness(score: Score, target: Target) -> float:
    """Larger is better, for every target."""
    if target == "throughput":
        return score.throughput_b64
    if target == "latency":
        return 1.0 / score.p50_ms_b1 if score.p50_ms_b1 > 0 else float("inf")
    return 1.0 / score.size_bytes if score.size_bytes > 0 else float("inf")


def describe(score: Score, target: Target) -> str:
    if target == "throughput":
        return f"{score.throughput_b64:,.0f} samples/s at batch 64"
    if target == "latency":
        return f"p50 {score.p50_ms_b1:.3f} ms at batch 1"
    return f"{score.size_bytes / 1000:,.1f} KB"


def choose_variant(variants: Sequence[Score], *, original: Score, max_accuracy_drop: float,
                   target: Target, min_gain: float = MIN_GAIN) -> Choice:
    """Pick the variant to serve, or None (the original stays), with one reason per variant."""
    reasons: list[str] = []
    qualified: list[Score] = []
    base = goodness(original, target)
    for v in variants:
        lost = drop_pts(original, v)
        accuracy = f"accuracy {v.accuracy:.2%} ({-lost + 0.0:+.2f} pts)"
        if lost > max_accuracy_drop + _EPSILON_PTS:
            reasons.append(f"{v.name}: over the budget: {accuracy}, more than {max_accuracy_drop:g} pts below "
                           f"the original's {original.accuracy:.2%}")
        elif goodness(v, target) < base * min_gain:
            reasons.append(f"{v.name}: within the budget ({accuracy}) but not {min_gain:g}x better than the "
                           f"original on {target}: {describe(v, target)} vs {describe(original, target)}")
        else:
            qualified.append(v)
            reasons.append(f"{v.name}: qualifies: {accuracy}, {describe(v, target)} "
                           f"({goodness(v, target) / base:.2f}x the original)")
    if not qualified:
        reasons.append(f"no variant is within {max_accuracy_drop:g} accuracy pts of the original and "
                       f"{min_gain:g}x better on {target}: nothing is registered and the original stays the serving "
                       f"version")
        return Choice(None, reasons)
    best = max(goodness(v, target) for v in qualified)
    tied = [v for v in qualified if goodness(v, target) >= best * (1 - NEAR_TIE)]
    if target == "size":
        tied.sort(key=lambda v: (-v.throughput_b64, -v.accuracy))
    else:
        tied.sort(key=lambda v: (v.size_bytes, -v.accuracy))
    winner = tied[0]
    why = f"the best {target} within the budget: {describe(winner, target)}, {goodness(winner, target) / base:.2f}x " \
          f"the original, accuracy {winner.accuracy:.2%} ({-drop_pts(original, winner) + 0.0:+.2f} pts)"
    if len(tied) > 1:
        others = ", ".join(v.name for v in tied[1:])
        tie_break = "the higher throughput" if target == "size" else "the smaller file"
        why += f"; within {NEAR_TIE:.0%} of {others}, and {tie_break}"
    reasons.append(f"chosen: {winner.name}: {why}")
    return Choice(winner.name, reasons)
