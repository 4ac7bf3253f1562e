"""`optimize` on a registered digits CNN: every method, the choice, the registered variant, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

import kaon
from kaon.models import load_file
from kaon.optimization import attach_samples, find_samples, optimize

BUILT_ALWAYS = {"onnx-fp32", "sparse-50"}


def test_export_is_checked_against_torch(optimized):
    parity = optimized.report.parity
    assert parity.startswith("onnx-fp32 vs the original: max abs diff of probabilities")
    max_diff = float(parity.split("probabilities ")[1].split(",")[0])
    assert max_diff < 1e-4 and "top-1 agreement 100.00%" in parity


def test_every_method_builds_a_loadable_measured_variant(optimized, digits):
    report = optimized.report
    by_name = {v.name: v for v in report.variants}
    assert {n for n, v in by_name.items() if v.status == "ok"} >= BUILT_ALWAYS, report.to_markdown()
    # int8-dynamic quantizes only the operators it measures faster in int8 here: on a busy machine none may be
    # (Gemm [288x64] measured 1.08x slower in one CI run), and then it is skipped, saying so
    dynamic = by_name["int8-dynamic"]
    assert dynamic.status == "ok" or (dynamic.status == "skipped" and any(
        "no operator group is both faster in int8 here" in note for note in dynamic.notes)), report.to_markdown()
    if dynamic.status == "ok":  # what per-batch scales mean once served with batching, measured
        assert any("64 held-out inputs, alone against in one batch, differ by up to" in n for n in dynamic.notes)
    pruned = [v for v in report.variants if v.name.startswith("pruned-") and "+" not in v.name]
    assert pruned and pruned[0].status == "ok" and pruned[0].methods == ("prune-structured",)
    assert by_name["fp16"].status == "skipped" and "CUDA" in by_name["fp16"].notes[0]
    for variant in report.variants:
        if variant.status != "ok":
            continue
        assert variant.size_bytes > 0 and variant.p50_ms_b1 > 0 and variant.throughput_b64 > 0
        assert variant.threads == 1 and variant.device == "cpu"
        model = load_file(variant.files.get("model.onnx") or variant.files["model.pt2"])
        # in the optimizer's batches (measure.predict): int8-dynamic scales each batch's activations by that batch's
        # range, so one batch of all 360 can flip a near tie that the batches of 256 and 104 did not
        probs = np.concatenate([model.predict(digits.x_test[i:i + 256]) for i in range(0, len(digits.x_test), 256)])
        assert float(np.mean(probs.argmax(1) == digits.y_test)) == pytest.approx(variant.accuracy, abs=1e-9)
    # int8 goes only where it is faster here: a convolution over one input channel never is
    profile = next(n for n in by_name["int8-dynamic"].notes if n.startswith("per-operator profile at batch 64"))
    assert "Conv (1 input channel): kept fp32 (int8 " in profile and "x slower, " in profile
    static = by_name["int8-static"]
    assert static.status == "ok" or "nothing was quantized" in " ".join(static.notes)


def test_int8_files_are_smaller_and_static_calibrates(optimized, digits):
    """Target size quantizes every group, so both int8 schemes are built whatever the timings say."""
    report = optimize(optimized.original.ref, registry=optimized.registry, target="size",
                      methods="int8-dynamic,int8-static", num_rounds=1, max_accuracy_drop=1.5)
    by_name = {v.name: v for v in report.variants}
    fp32 = by_name["onnx-fp32"]
    assert not fp32.candidate  # built as the base, shown for reference: 'onnx' was not requested
    for name in ("int8-dynamic", "int8-static"):
        variant = by_name[name]
        assert variant.status == "ok", variant.notes
        assert variant.size_bytes < 0.4 * fp32.size_bytes
        assert variant.accuracy_drop_pts < 2.0
    assert report.chosen in ("int8-dynamic", "int8-static")


def test_chosen_variant_is_registered_with_parent_report_and_claimed_accuracy(optimized, digits):
    report, registry, original = optimized.report, optimized.registry, optimized.original
    chosen = report.chosen_variant
    assert chosen is not None and chosen.accuracy_drop_pts <= 0.5
    record = registry.get_version(report.registered)
    assert record.parent == original.ref and record.framework == "onnx"
    assert {"model.onnx", "report.md", "report.json", "report.png"} <= set(record.files)
    assert record.metrics["accuracy"] == pytest.approx(chosen.accuracy)
    loaded = kaon.load(report.registered, registry=registry)
    assert loaded.framework == "onnx" and loaded.signature.inputs[0].name == "image"
    accuracy = float(np.mean(loaded.predict(digits.x_test).argmax(1) == digits.y_test))
    assert accuracy == pytest.approx(chosen.accuracy, abs=1e-9)  # held-out = x_test, as x_train was given
    assert registry.get_version(original.ref).files == original.files
    versions = {v.ref: v.aliases for v in registry.list_versions("digits")}
    assert "production" not in versions[report.registered]


def test_report_files_and_run(optimized):
    report, registry = optimized.report, optimized.registry
    markdown = report.files["report.md"].read_text()
    assert "| variant | accuracy |" in markdown and "chosen" in markdown and report.before_after() in markdown
    data = json.loads(report.files["report.json"].read_text())
    assert data["chosen"] == report.chosen and data["registered"] == report.registered
    assert data["original"]["throughput_b64"] > 0 and len(data["variants"]) == len(report.variants)
    assert report.files["report.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = registry.get_run(report.run_id)
    assert run.kind == "optimize" and run.status == "completed" and run.summary["chosen"] == report.chosen
    assert {"report.md", "report.json", "report.png"} <= set(registry.run_artifacts(report.run_id))
    assert report.before_after().startswith(f"{optimized.original.ref} -> {report.registered} ({report.chosen})")


def test_goals_on_digits(optimized):
    """The issue's goals against what kaon served before (the .pt2 program run by torch), 1 thread:
    >= 10x throughput at batch 64, within 1 pt, <= 0.25x file. (Against the bare nn.Module, which is
    ~2.5x faster than the program, bench/optimize.py measures ~9.4-11x.)"""
    report = optimized.report
    chosen, original = report.chosen_variant, report.original
    assert chosen.throughput_b64 >= 10 * original.throughput_b64, report.to_markdown()
    assert chosen.accuracy_drop_pts <= 1.0
    assert chosen.size_bytes <= 0.25 * original.size_bytes


def test_variant_finds_its_originals_samples(optimized, digits):
    samples = find_samples(optimized.report.registered, registry=optimized.registry)
    assert samples is not None and samples.x_train is not None
    np.testing.assert_array_equal(samples.y, digits.y_test)
    assert samples.source == f"samples stored with {optimized.original.ref}"


def test_samples_of_a_version_without_a_run(digits):
    from kaon.optimization.samples import SAMPLES_RUN_KIND
    from kaon.registry import Registry

    from .conftest import register_digits

    registry = Registry()
    version = register_digits(digits, registry)
    assert version.run_id is None
    attach_samples(version.ref, digits.x_test[:40], digits.y_test[:40], registry=registry)
    attach_samples(version.ref, digits.x_test[:50], digits.y_test[:50], registry=registry)  # replaces
    samples = find_samples(version.ref, registry=registry)
    assert len(samples.x) == 50 and samples.x_train is None
    (tune_x, _), (held_x, _), how = samples.split()
    assert len(tune_x) + len(held_x) == 50 and "held-out: 25 of the 50" in how
    assert [r.kind for r in registry.list_runs()].count(SAMPLES_RUN_KIND) == 1
