"""The two pure decisions, with numbers: which operator groups go int8, and which variant is served."""

from __future__ import annotations

import pytest

from kaon.optimization import GroupTiming, Score, choose_variant, plan_quantization
from kaon.optimization.plan import keep_most_sensitive

ORIGINAL = Score("original", accuracy=0.9800, size_bytes=100_000, p50_ms_b1=0.130, throughput_b64=90_000)


def score(name: str, accuracy: float, size: int = 50_000, p50: float = 0.05, throughput: float = 500_000) -> Score:
    return Score(name, accuracy, size, p50, throughput)


def test_highest_throughput_within_budget_wins():
    variants = [score("onnx", 0.980, throughput=1_000_000), score("int8", 0.977, throughput=1_400_000),
                score("pruned", 0.960, throughput=2_400_000)]
    choice = choose_variant(variants, original=ORIGINAL, max_accuracy_drop=0.5, target="throughput")
    assert choice.chosen == "int8"  # pruned is faster but 2 pts below: over the 0.5 budget
    assert any(r.startswith("pruned: over the budget") for r in choice.reasons)
    assert choice.reasons[-1].startswith("chosen: int8")


def test_budget_is_in_points_and_inclusive():
    exactly = score("edge", 0.975)  # 0.5 pts below 98.0%
    assert choose_variant([exactly], original=ORIGINAL, max_accuracy_drop=0.5, target="throughput").chosen == "edge"
    assert choose_variant([exactly], original=ORIGINAL, max_accuracy_drop=0.49, target="throughput").chosen is None


def test_no_variant_within_budget_keeps_the_original():
    choice = choose_variant([score("int8", 0.95), score("pruned", 0.90)], original=ORIGINAL, max_accuracy_drop=1.0,
                            target="throughput")
    assert choice.chosen is None
    assert "original stays the serving version" in choice.reasons[-1]


def test_a_variant_must_beat_the_original_by_the_minimum_gain():
    barely = score("barely", 0.99, throughput=ORIGINAL.throughput_b64 * 1.02)
    slower = score("slower", 0.99, throughput=ORIGINAL.throughput_b64 * 0.5)
    choice = choose_variant([barely, slower], original=ORIGINAL, max_accuracy_drop=0.5, target="throughput")
    assert choice.chosen is None
    assert choose_variant([barely], original=ORIGINAL, max_accuracy_drop=0.5, target="throughput",
                          min_gain=1.01).chosen == "barely"


@pytest.mark.parametrize(("target", "expected"), [("latency", "quick"), ("size", "tiny"), ("throughput", "wide")])
def test_target_decides_what_best_means(target, expected):
    variants = [score("quick", 0.98, size=60_000, p50=0.005, throughput=800_000),
                score("tiny", 0.98, size=10_000, p50=0.050, throughput=300_000),
                score("wide", 0.98, size=80_000, p50=0.040, throughput=2_000_000)]
    assert choose_variant(variants, original=ORIGINAL, max_accuracy_drop=0.5, target=target).chosen == expected


def test_near_tie_goes_to_the_smaller_file():
    variants = [score("pruned", 0.98, size=24_000, throughput=2_330_000),
                score("pruned+int8", 0.98, size=10_000, throughput=2_300_000)]  # 1.3% slower: a tie
    choice = choose_variant(variants, original=ORIGINAL, max_accuracy_drop=0.5, target="throughput")
    assert choice.chosen == "pruned+int8"
    assert "the smaller file" in choice.reasons[-1]
    far = [score("pruned", 0.98, size=24_000, throughput=2_330_000),
           score("pruned+int8", 0.98, size=10_000, throughput=1_500_000)]
    assert choose_variant(far, original=ORIGINAL, max_accuracy_drop=0.5, target="throughput").chosen == "pruned"


def test_plan_quantizes_only_groups_int8_makes_faster():
    timings = [GroupTiming("Conv (1 input channel)", fp32_ms=0.061, int8_ms=0.510),
               GroupTiming("Gemm", fp32_ms=0.061, int8_ms=0.048),
               GroupTiming("MatMul (activations)", fp32_ms=0.061, int8_ms=0.0615)]  # 0.8% slower: noise
    plan = plan_quantization(timings, target="throughput")
    assert plan.quantize == ("Gemm", "MatMul (activations)")
    assert plan.keep == ("Conv (1 input channel)",)
    assert "Conv (1 input channel): kept fp32 (int8 8.36x slower)" in plan.describe()
    assert "Gemm: int8 (1.27x faster)" in plan.describe()


def test_plan_for_size_quantizes_everything():
    timings = [GroupTiming("Conv (1 input channel)", 0.061, 0.510), GroupTiming("Gemm", 0.061, 0.048)]
    plan = plan_quantization(timings, target="size")
    assert plan.quantize == ("Conv (1 input channel)", "Gemm") and plan.keep == ()


def test_plan_keeps_groups_that_lose_too_much_accuracy_alone():
    timings = [GroupTiming("Gemm [64x10]", 0.05, 0.03, accuracy_drop_pts=12.5),  # fast but ruinous
               GroupTiming("Gemm [288x64]", 0.05, 0.04, accuracy_drop_pts=0.2)]
    for target in ("throughput", "size"):
        plan = plan_quantization(timings, target=target, max_accuracy_drop=0.5)
        assert plan.quantize == ("Gemm [288x64]",) and plan.keep == ("Gemm [64x10]",)
        assert "loses 12.50 accuracy pts, over the budget" in plan.describe()
    assert plan_quantization(timings, target="throughput").quantize == ("Gemm [64x10]", "Gemm [288x64]")


def test_plan_threshold_is_a_parameter():
    timings = [GroupTiming("Gemm", 1.0, 1.02)]
    assert plan_quantization(timings, target="latency").quantize == ("Gemm",)
    assert plan_quantization(timings, target="latency", min_speedup=1.0).keep == ("Gemm",)


def test_keep_most_sensitive_keeps_the_fewest_layers_that_bring_the_rest_within_budget():
    # Worst-sentence losses (pts) measured on MiniLM's first FFN output layers and two attention layers.
    losses = {"ffn.out #0": 0.31, "ffn.out #1": 0.20, "ffn.out #2": 0.19, "attn.q #0": 0.01, "attn.k #0": 0.005}
    assert keep_most_sensitive(losses, max_loss=0.5) == ("ffn.out #0",)  # 0.715 -> 0.405
    assert keep_most_sensitive(losses, max_loss=0.25) == ("ffn.out #0", "ffn.out #1")  # -> 0.205
    assert keep_most_sensitive(losses, max_loss=0.2) == ("ffn.out #0", "ffn.out #1", "ffn.out #2")
    assert keep_most_sensitive(losses, max_loss=1.0) == ()
    assert keep_most_sensitive({"gains": -0.1, "loses": 0.3}, max_loss=0.0) == ("loses",)  # a gain offsets nothing
