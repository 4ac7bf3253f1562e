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

A run stopped by an error or by Ctrl-C ends `failed` or `interrupted` (`OptimizationInterrupted`, a
KeyboardInterrupt); unless it had registered a version already, the work folder it made
(KAON_HOME/optimize/..., or an `output_dir` that did not exist, with the parents it created for it) is
removed with the half-built variants in it. A folder that was there before the run is kept.
"""

from __future__ import annotations

import logging
import shutil
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
    # what this run creates, and so removes if it fails: the new output folder and its new parents (a/b of
    # a/b/c), or the default KAON_HOME/optimize/<name>-<time>; a folder that was there already is kept
    made = _new_folders(Path(output_dir)) if output_dir else []
    run_id = None
    report: OptimizationReport | None = None
    try:
        if output_dir:
            folder = Path(output_dir)
        else:
            folder = _default_folder(source)
            made = [folder]
        if source.record is not None:
            params = {"model": source.record.ref, "target": target, "max_accuracy_drop": max_accuracy_drop,
                      "methods": list(requested), "calibration_samples": calibration_samples,
                      "threads": num_threads}
            run_id = reg.create_run(f"optimize {source.record.ref}", params=params, kind="optimize").id
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
        registered = report.registered if report is not None else None
        _give_up(exc, reg, run_id, registered, made)
        if isinstance(exc, KeyboardInterrupt):
            raise OptimizationInterrupted(registered) from exc
        raise
    return report


class OptimizationInterrupted(KeyboardInterrupt):  # noqa: N818 - a KeyboardInterrupt, named as one
    """Ctrl-C during `optimize`: `registered` names the version registered before it came, else None."""

    def __init__(self, registered: str | None) -> None:
        super().__init__(registered or "")
        self.registered = registered


def _new_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first: the folders a run writing into
    `folder` creates."""
    new = []
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            break
        new.append(path)
    return new


def _give_up(exc: BaseException, registry: Any, run_id: int | None, registered: str | None,
             made: list[Path]) -> None:
    """After an error or Ctrl-C: the run ends 'failed' or 'interrupted' (as training records it), and the
    folders optimize made (`made`, deepest first: the output folder, then the parents it created for it) go
    unless a version was registered from them. Nobody is told about a report in them (the CLI prints the
    error, or that it was interrupted), and the variants half-built there are of no use; a finished run's
    folder stays (its report is printed and kept with the run, even when nothing qualified)."""
    if run_id is not None:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        summary: dict[str, Any] = {"error": f"{type(exc).__name__}: {exc}"[:2000]} if status == "failed" else {}
        if registered is not None:
            summary["registered"] = registered
        try:
            registry.finish_run(run_id, status=status, summary=summary)
        except Exception as problem:  # noqa: BLE001 - the error being raised is the one to tell about
            log.warning("could not record optimize run %s as %s: %s", run_id, status, problem)
    if registered is not None or not made:
        return
    shutil.rmtree(made[0], ignore_errors=True)
    for parent in made[1:]:
        try:
            parent.rmdir()
        except OSError:  # not empty: something else wrote there meanwhile, and it is kept
            break


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
        reference, report.drift_reference = _reference_for(variant, record, registry, reference_data, Path(tmp))
        files = {**variant.files, **report.files, **({reference.name: reference} if reference else {})}
        version = registry.register_version(record.name, files, framework=variant.framework,
                                            signature=record.signature, metrics=metrics, parent=record.ref,
                                            run_id=run_id, description=description)
    report.registered = version.ref


def _reference_for(variant: Variant, record: Any, registry: Any, x: np.ndarray,
                   folder: Path) -> tuple[Path | None, str]:
    """Drift reference statistics for the variant, when its parent has them, and one line that says which.

    First choice: refitted on the calibration samples, since the variant's features (an ONNX model's
    outputs, not the torch parent's penultimate layer) differ. With fewer samples than a reference needs,
    the parent's reference is carried over where it is valid for the variant (`_parents_reference`)."""
    from kaon.monitoring import REFERENCE_FILENAME

    if REFERENCE_FILENAME not in record.files:
        return None, (f"none: {record.ref} has no reference statistics either (register it with "
                      f"kaon.register(..., reference_data=x_train), or serve with --drift-reference)")
    if len(x) >= MIN_REFERENCE_ROWS:
        reference, problem = _refit_reference(variant, record, x, folder)
        if reference is not None:
            log.info("drift reference statistics refitted for %s (%s) on %d samples", variant.name,
                     variant.framework, len(x))
            return reference, f"refitted for the optimized model on the {len(x)} calibration samples"
        why = f"refitting it on the {len(x)} calibration samples failed ({problem})"
    else:
        why = f"the {len(x)} calibration samples are fewer than the {MIN_REFERENCE_ROWS} a reference is fitted on"
    reference, how = _parents_reference(variant, record, registry, folder)
    if reference is not None:
        return reference, f"{how} ({why})"
    log.warning("%s has drift reference statistics but the optimized version gets none: %s; %s.", record.ref,
                why, how)
    advice = (f". Run kaon optimize again with --calibration-data holding at least {MIN_REFERENCE_ROWS} samples"
              if len(x) < MIN_REFERENCE_ROWS else "")
    return None, f"none: {why}, and {how}{advice}"


def _parents_reference(variant: Variant, record: Any, registry: Any, folder: Path) -> tuple[Path | None, str]:
    """The parent's reference, for the variant, where it is valid for it; else None and why not.

    Which parts of a reference hold for another model of the same inputs:
    - source 'inputs' (a tabular model without a reachable penultimate layer): every statistic is of the
      inputs (KS, PSI, MMD, the Mahalanobis outlier model), whatever model reads them; only the
      predicted-class counts (and the outlier model's grouping by class) come from the parent's answers,
      which the variant gives too, within the accuracy budget. Kept as it is.
    - a tabular reference on the parent's penultimate layer or outputs also holds a sample of the inputs it
      was fitted on (the `reference_data` the user registered, up to 1000 rows): it is refitted on them, so
      that its features are the variant's own.
    - other 'penultimate' references: an ONNX variant has no penultimate layer to compare with (and a pruned,
      fine-tuned one computes another), and without the inputs nothing can be refitted. None.
    - other 'outputs' references (logits or probabilities): kept for the plain ONNX export only, which the
      export check found to compute the original's outputs. The accuracy budget of a quantized or pruned
      variant bounds how many top-1 answers change, not how far its scores move, and the MMD test and the
      outlier quantiles are fitted on those scores: clean traffic could read as drift. None for those.
    """
    from kaon.monitoring import REFERENCE_FILENAME, Reference

    try:
        path = registry.materialize(record) / REFERENCE_FILENAME
        parent = Reference.load(path)
    except KaonError as exc:
        return None, f"{record.ref}'s {REFERENCE_FILENAME} could not be read ({exc.message})"
    if parent.source == "inputs":
        return Path(shutil.copyfile(path, folder / REFERENCE_FILENAME)), (
            f"{record.ref}'s {REFERENCE_FILENAME} carried over as it is: its statistics are of the inputs, "
            f"which the optimized model reads as the original does")
    if parent.features is not None and len(parent.features) >= MIN_REFERENCE_ROWS:
        x = parent.features.reshape((len(parent.features), *parent.input_shape))
        reference, problem = _refit_reference(variant, record, x, folder)
        if reference is not None:
            return reference, (f"refitted for the optimized model on the {len(x)} inputs kept in "
                               f"{record.ref}'s {REFERENCE_FILENAME}")
        return None, f"refitting it on the inputs kept in {record.ref}'s {REFERENCE_FILENAME} failed ({problem})"
    if parent.source == "outputs" and variant.methods == ("onnx",):
        return Path(shutil.copyfile(path, folder / REFERENCE_FILENAME)), (
            f"{record.ref}'s {REFERENCE_FILENAME} carried over as it is: it holds the model's outputs, and the "
            f"plain ONNX export computes the same outputs (export check)")
    held = "penultimate-layer features" if parent.source == "penultimate" else "outputs"
    return None, (f"{record.ref}'s {REFERENCE_FILENAME} holds its {held}, which {variant.name} does not "
                  f"reproduce, and no inputs to refit it on")


def _refit_reference(variant: Variant, record: Any, x: np.ndarray, folder: Path) -> tuple[Path | None, str]:
    """Reference statistics of the variant's own model on `x`; else None and why."""
    main = {"onnx": "model.onnx", "torch": "model.pt2", "keras": "model.keras"}.get(variant.framework, "")
    path = variant.files.get(main)
    if path is None:
        return None, f"no {variant.framework} model file among {sorted(variant.files)} to fit it with"
    try:
        model = load_folder(Path(path).parent, {Path(path).name: None}, variant.framework, record.signature,
                            record.name)
        return fit_reference_file(model, x, folder), ""
    except KaonError as exc:  # the optimized model is still worth registering; only its drift monitor is off
        return None, exc.message


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
