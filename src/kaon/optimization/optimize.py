"""`optimize`: the fastest variant of a model that keeps its accuracy, registered with its report.

    >>> report = optimize("digits@1", max_accuracy_drop=0.5, target="throughput")   # doctest: +SKIP
    >>> report.registered, report.before_after()                                     # doctest: +SKIP
    ('digits@2', 'digits@1 -> digits@2 (pruned-75): throughput ...')

Steps: export to ONNX and check it against the original; build the variants (int8 dynamic and
static on the operators that int8 makes faster here, structured and unstructured pruning with a
short fine-tune, fp16 on a GPU); measure all of them the same way; choose with the budget rule
(`choose.py`); register the choice as a new version whose parent is the original, with report.md,
report.json and report.png beside model.onnx.

Aliases: registering moves `latest` to the variant (the registry's rule), so `kaon serve digits`
and `digits@latest` serve it; `production` is never moved here: promoting is a person's decision
(`kaon models alias digits production 2`). When no variant qualifies nothing is registered, so
every alias keeps pointing at the original; the report is still kept as the optimization run's
artifacts.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kaon._internal.scores import binary_probabilities, class_scores
from kaon.config import kaon_home
from kaon.errors import ConfigError, InvalidInputError, KaonError
from kaon.models import load_folder
from kaon.optimization._builder import Builder, Context
from kaon.optimization._source import Source, open_source
from kaon.optimization.choose import Score, choose_variant
from kaon.optimization.measure import accuracy as measured_accuracy
from kaon.optimization.measure import predict, time_runners, torch_threads
from kaon.optimization.plan import Target
from kaon.optimization.report import OptimizationReport, Variant
from kaon.optimization.samples import Samples, find_samples, read_samples
from kaon.sdk.hub import MIN_REFERENCE_ROWS, fit_reference_file, looks_like_path

log = logging.getLogger("kaon.optimization")

METHODS = ("onnx", "int8-dynamic", "int8-static", "prune-structured", "prune-unstructured", "fp16")
TARGETS: tuple[Target, ...] = ("throughput", "latency", "size")


def parse_methods(methods: str | Sequence[str] | None) -> tuple[str, ...]:
    """'onnx,int8-dynamic' or ['onnx', ...] -> a tuple in canonical order; None -> every method."""
    if methods is None:
        return METHODS
    items = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods)]
    items = [m for m in items if m]
    unknown = [m for m in items if m not in METHODS]
    if unknown or not items:
        raise ConfigError(
            f"unknown method {', '.join(map(repr, unknown)) or '(none given)'}. Expected a comma-separated list of: "
            f"{', '.join(METHODS)}. Received: methods={methods!r}",
            fields=[{"name": "methods", "expected": list(METHODS), "received": items}],
        )
    return tuple(m for m in METHODS if m in items)


def optimize(ref_or_model: Any, *, max_accuracy_drop: float = 0.5, target: Target = "throughput",
             methods: str | Sequence[str] | None = None, calibration_samples: int = 256,
             calibration_data: Any = None, registry: Any = None, num_threads: int = 1,
             num_rounds: int = 5, output_dir: str | Path | None = None) -> OptimizationReport:
    """Build, measure and choose variants of a model; register the choice when the model is registered.

    `ref_or_model`: 'name@version|alias', a model file, a kaon Model, a torch module or a Keras model.
    `max_accuracy_drop`: accuracy points the variant may lose on held-out data (0.5 = half a point).
    `calibration_data`: an .npz with x and y, or an (x, y) pair of arrays (else the samples attached to the
    version are used).
    Timings use `num_threads` threads and `num_rounds` interleaved rounds.
    """
    requested = _check_arguments(max_accuracy_drop, target, methods, calibration_samples, num_threads, num_rounds)
    is_ref = isinstance(ref_or_model, (str, Path)) and not looks_like_path(ref_or_model)
    reg = registry
    if reg is None and is_ref:
        from kaon.registry import Registry

        reg = Registry()
    given = read_samples(calibration_data) if calibration_data is not None else None
    source = open_source(ref_or_model, registry=reg, example=given.x if given is not None else None)
    samples = _samples(source, given, reg)
    tune, held, held_out = samples.split()
    folder = Path(output_dir) if output_dir else _default_folder(source)
    run_id = None
    if source.record is not None:
        params = {"model": source.record.ref, "target": target, "max_accuracy_drop": max_accuracy_drop,
                  "methods": list(requested), "calibration_samples": calibration_samples, "threads": num_threads}
        run_id = reg.create_run(f"optimize {source.record.ref}", params=params, kind="optimize").id
    try:
        with torch_threads(num_threads):
            report = _run(source, requested, target, max_accuracy_drop, num_threads, num_rounds, tune, held,
                          calibration_samples, folder)
        report.held_out = held_out
        report.run_id = run_id
        report.write(folder)
        if report.chosen is not None and source.record is not None:
            # the reference describes inputs, not accuracy: every sample fits it (the tuning half alone was
            # often under the 50 a reference needs, and the optimized version lost its drift monitor)
            _register(report, source, reg, run_id, reference_data=np.concatenate([tune[0], held[0]]))
            report.write(folder)  # again, now naming the registered version
        if run_id is not None:
            for name, path in report.files.items():
                reg.add_run_artifact(run_id, name, path)
            reg.finish_run(run_id, summary=_summary(report))
    except BaseException as exc:
        if run_id is not None:
            reg.finish_run(run_id, status="failed", summary={"error": f"{type(exc).__name__}: {exc}"[:2000]})
        raise
    return report


def _run(source: Source, requested: tuple[str, ...], target: Target, max_accuracy_drop: float, num_threads: int,
         num_rounds: int, tune: tuple[np.ndarray, np.ndarray], held: tuple[np.ndarray, np.ndarray],
         calibration_samples: int, folder: Path) -> OptimizationReport:
    name = source.input_name
    base_runner = source.runner(num_threads)
    outputs = predict(base_runner, name, held[0])
    _check_classifier(outputs, held[1], source)
    binary = binary_probabilities(predict(base_runner, name, np.concatenate([tune[0], held[0]])))
    accuracy = measured_accuracy(outputs, held[1], binary)
    original = Variant("original", (), source.kind, accuracy=accuracy, accuracy_drop_pts=0.0,
                       size_bytes=source.size_bytes, threads=num_threads, candidate=False,
                       notes=[f"{source.label} as kaon serves it today ({source.kind})"])
    ctx = Context(source, folder, requested, target, max_accuracy_drop, num_threads, num_rounds, tune, held,
                  calibration_samples, accuracy, outputs, base_runner, binary)
    builder = Builder(ctx)
    builder.build_all()
    timings = time_runners({"original": base_runner, **builder.runners}, name, held[0], num_rounds=num_rounds)
    for variant in [original, *builder.variants]:
        timing = timings.get(variant.name)
        if timing is not None:
            variant.p50_ms_b1, variant.throughput_b64 = timing.p50_ms_b1, timing.throughput_b64
    scores = [_score(v) for v in builder.variants if v.candidate and v.measured and v.device == "cpu"]
    choice = choose_variant(scores, original=_score(original), max_accuracy_drop=max_accuracy_drop, target=target)
    return OptimizationReport(source.label, target, max_accuracy_drop, list(requested), num_threads, original,
                              builder.variants, choice.chosen, choice.reasons, parity=builder.parity)


def _register(report: OptimizationReport, source: Source, registry: Any, run_id: int | None,
              reference_data: np.ndarray) -> None:
    variant, original = report.chosen_variant, report.original
    assert variant is not None and variant.measured and original.measured
    assert variant.throughput_b64 and original.throughput_b64 and variant.size_bytes and original.size_bytes
    record = source.record
    metrics = {"accuracy": variant.accuracy, "accuracy_drop_pts": variant.accuracy_drop_pts,
               "original_accuracy": original.accuracy, "size_bytes": variant.size_bytes,
               "p50_ms_b1": variant.p50_ms_b1, "throughput_b64": variant.throughput_b64,
               "threads": variant.threads, "speedup_throughput": variant.throughput_b64 / original.throughput_b64,
               "size_ratio": variant.size_bytes / original.size_bytes}
    description = (f"kaon optimize: {variant.name} of {record.ref} (target {report.target}, budget "
                   f"{report.max_accuracy_drop:g} pts)")
    with tempfile.TemporaryDirectory(prefix="kaon-optimize-reference-") as tmp:
        reference = _reference_for(variant, record, reference_data, Path(tmp))
        files = {**variant.files, **report.files, **({reference.name: reference} if reference else {})}
        version = registry.register_version(record.name, files, framework=variant.framework,
                                            signature=record.signature, metrics=metrics, parent=record.ref,
                                            run_id=run_id, description=description)
    report.registered = version.ref


def _reference_for(variant: Variant, record: Any, x: np.ndarray, folder: Path) -> Path | None:
    """Drift reference statistics for the variant, when its parent has them: refitted on the samples,
    since the variant's features (an ONNX model's outputs, not the torch parent's penultimate layer) differ."""
    from kaon.monitoring import REFERENCE_FILENAME

    if REFERENCE_FILENAME not in record.files:
        return None
    if len(x) < MIN_REFERENCE_ROWS:
        log.warning("%s has drift reference statistics but the optimized version gets none: %d samples, "
                    "fewer than the %d a reference needs. Register it again with reference_data=x_train.",
                    record.ref, len(x), MIN_REFERENCE_ROWS)
        return None
    main = {"onnx": "model.onnx", "torch": "model.pt2", "keras": "model.keras"}.get(variant.framework, "")
    path = variant.files.get(main)
    if path is None:
        log.warning("%s has drift reference statistics but the optimized version gets none: no %s model file "
                    "among %s to fit them with.", record.ref, variant.framework, sorted(variant.files))
        return None
    try:
        model = load_folder(Path(path).parent, {Path(path).name: None}, variant.framework, record.signature,
                            record.name)
        reference = fit_reference_file(model, x, folder)
    except KaonError as exc:  # the optimized model is still worth registering; only its drift monitor is off
        log.warning("%s has drift reference statistics but the optimized version gets none: fitting them "
                    "failed (%s). Register it again with reference_data=x_train.", record.ref, exc.message)
        return None
    log.info("drift reference statistics refitted for %s (%s) on %d samples", variant.name,
             variant.framework, len(x))
    return reference


def _samples(source: Source, given: Samples | None, registry: Any) -> Samples:
    if given is not None:
        if len(source.signature.inputs) == 1:
            spec = source.signature.inputs[0]
            if not spec.accepts_shape(tuple(int(d) for d in given.x.shape)):
                raise InvalidInputError(
                    f"--calibration-data x does not fit the model's input '{spec.name}', which expects "
                    f"{spec.describe()}. Received: x shape={given.x.shape}."
                )
        samples = given
    elif source.record is not None:
        found = find_samples(source.record.ref, registry=registry, signature=source.signature)
        if found is None:
            raise ConfigError(
                f"no calibration data for {source.record.ref}: no samples are stored with it (or its parents). "
                f"Pass --calibration-data FILE.npz (arrays x and y; in Python calibration_data=...), or store them "
                f"once with kaon.optimization.attach_samples('{source.record.ref}', x, y)."
            )
        samples = found
    else:
        raise ConfigError(
            f"no calibration data for {source.label}. Pass --calibration-data FILE.npz with arrays x (inputs) and "
            f"y (labels) (in Python calibration_data=...): they calibrate int8 and measure accuracy."
        )
    if len(source.signature.inputs) != 1:
        raise InvalidInputError(
            f"optimize handles models with one input; {source.label} has {len(source.signature.inputs)}: "
            f"{[s.name for s in source.signature.inputs]}. Use kaon.optimization.export_onnx and quantize_model "
            f"directly for multi-input models (see bench/optimize.py)."
        )
    return samples


def _check_classifier(outputs: np.ndarray, y: np.ndarray, source: Source) -> None:
    scores = class_scores(outputs)  # a binary model's one logit or probability counts as two classes
    if scores.ndim != 2 or int(y.max()) >= scores.shape[1]:
        raise InvalidInputError(
            f"optimize scores classifiers by accuracy: their first output is (N, classes), or (N, 1) for a binary "
            f"model, and y holds class indices. Received: output shape {outputs.shape} from {source.label}, labels "
            f"up to {int(y.max())}. A regression model has no accuracy to keep: export it with "
            f"kaon.optimization.export_onnx and quantize_model directly."
        )


def _check_arguments(max_accuracy_drop: float, target: str, methods: Any, calibration_samples: int,
                     num_threads: int, num_rounds: int) -> tuple[str, ...]:
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}. Received: target={target!r}",
                          fields=[{"name": "target", "expected": list(TARGETS)}])
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) \
            or not 0 <= max_accuracy_drop <= 100:
        raise ConfigError(f"max_accuracy_drop is in accuracy points, between 0 and 100 (0.5 = half a point). "
                          f"Received: max_accuracy_drop={max_accuracy_drop!r}")
    for name, value in (("calibration_samples", calibration_samples), ("num_threads", num_threads),
                        ("num_rounds", num_rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1. Received: {name}={value!r}")
    return parse_methods(methods)


def _score(v: Variant) -> Score:
    return Score(v.name, v.accuracy or 0.0, v.size_bytes or 0, v.p50_ms_b1 or 0.0, v.throughput_b64 or 0.0)


def _default_folder(source: Source) -> Path:
    root = kaon_home() / "optimize"
    root.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in source.label.split(" ")[0])[:60]
    return Path(tempfile.mkdtemp(prefix=f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=root))


def _summary(report: OptimizationReport) -> dict[str, Any]:
    return {"chosen": report.chosen, "registered": report.registered, "before_after": report.before_after(),
            "variants": {v.name: {"status": v.status, "accuracy": v.accuracy, "size_bytes": v.size_bytes,
                                  "p50_ms_b1": v.p50_ms_b1, "throughput_b64": v.throughput_b64}
                         for v in [report.original, *report.variants]}}
