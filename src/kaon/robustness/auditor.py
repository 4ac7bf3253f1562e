"""`kaon.audit`: how a classifier holds up: clean, per class, under attack, under corruption, calibrated.

    >>> report = kaon.audit("digits@latest")               # doctest: +SKIP
    >>> print(report.summary())                             # doctest: +SKIP
    digits@1: clean 0.969 | FGSM@0.1 0.289 | PGD@0.1 0.192 | noise@0.1 0.958 | ECE 0.021 (360 samples, run 4)

Data: a `.npz` file with the inputs and true labels (keys `x`/`y`, or `inputs`/`labels`,
`images`/`labels`, `x_test`/`y_test`), or an (x, y) pair. A digits model (one input (N, 1, 8, 8),
10 outputs) with no data is audited on the bundled digits test split, and the report says so.

Where the report goes: a registered version's audit is recorded as a run of kind 'audit' whose
params name the version (`{"model": "digits@3"}`), with the report files as the run's artifacts and
the headline figures as its metrics and summary. A ModelVersion is immutable (its record is pinned
by its files' sha256), while a model is audited again with new data or new attacks; a run keeps each
audit with its own params and date, content-addresses its files like every artifact, and shows in
`kaon runs list/show`. `audits_of("digits@3")` finds them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kaon._internal.arrays import load_arrays
from kaon._internal.scores import (
    are_probabilities,
    binary_probabilities,
    class_indices,
    class_scores,
    probabilities,
    two_class_tensor,
)
from kaon.errors import InvalidInputError
from kaon.models import Model
from kaon.robustness import corruptions as corrupt
from kaon.robustness._digits import DIGITS_INPUT_SHAPE, DIGITS_NUM_CLASSES, DIGITS_SOURCE, digits_test_split
from kaon.robustness.calibration import expected_calibration_error, reliability_bins
from kaon.robustness.report import AuditReport

EPSILONS = (0.01, 0.03, 0.05, 0.1, 0.2)
_NPZ_KEYS = (("x", "y"), ("inputs", "labels"), ("images", "labels"), ("x_test", "y_test"))


def audit(model: Any, data: Any = None, *, epsilons: Sequence[float] = EPSILONS, pgd_steps: int = 10,
          max_samples: int | None = None, batch_size: int = 256, out: str | Path | None = None,
          store: bool = True, registry: Any = None, seed: int = 0) -> AuditReport:
    """Audit `model` (a Model, registry reference or model file) on `data`; see the module docstring.

    `out` also writes the report files there. `store` records a registered version's audit as a run.
    """
    started = time.perf_counter()
    ref = model if isinstance(model, str) else None
    loaded = _load(model, registry, data)
    spec = _single_input(loaded)
    x, y, source = _data(data, loaded, spec)
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    x = spec.validate(x)
    low, high = float(min(0.0, x.min())), float(max(1.0, x.max()))

    raw = _predict(loaded, spec.name, x, batch_size)
    binary = binary_probabilities(raw)  # a binary model's one output: probabilities or logits, decided once
    probs = _probabilities(raw, binary)
    num_classes = probs.shape[1]
    if y.min() < 0 or y.max() >= num_classes:
        raise InvalidInputError(
            f"labels must be class indices in [0, {num_classes - 1}] for model '{loaded.name}' "
            f"({num_classes} outputs). Received: labels from {int(y.min())} to {int(y.max())}.")
    labels = list(loaded.signature.labels or [str(i) for i in range(num_classes)])
    predicted = probs.argmax(1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    per_class = {labels[c]: round(float(confusion[c, c] / confusion[c].sum()), 4)
                 for c in range(num_classes) if confusion[c].sum()}
    notes = [f"no data was given: audited on {source}."] if data is None else []

    adversarial = _adversarial(loaded, x, y, epsilons, pgd_steps, low, high, batch_size, seed, notes, binary)
    corrupted = _corruptions(loaded, spec.name, x, y, low, high, batch_size, seed, notes, binary)
    bins = reliability_bins(probs, y)
    version = getattr(loaded, "version", None)
    name = version.ref if version is not None else (ref or loaded.name)
    report = AuditReport(
        model=name, framework=loaded.framework, data_source=source, num_samples=int(len(y)),
        clean_accuracy=round(float((predicted == y).mean()), 4), per_class_accuracy=per_class,
        confusion_matrix=confusion.tolist(), adversarial=adversarial, corruptions=corrupted,
        ece=round(expected_calibration_error(probs, y), 4), reliability=bins, labels=labels, notes=notes,
    )
    report.duration_s = round(time.perf_counter() - started, 2)
    if store and version is not None:
        _store(report, version.ref, epsilons, pgd_steps, registry)
    if out is not None:
        report.write(out)
    return report


def audits_of(ref: str, registry: Any = None, limit: int = 200) -> list[Any]:
    """The 'audit' runs recorded for the version `ref` (e.g. "digits@3"), newest first."""
    from kaon.registry import Registry

    reg = registry or Registry()
    version = reg.get_version(ref)
    return [run for run in reg.list_runs(limit=limit)
            if run.kind == "audit" and run.params.get("model") == version.ref]


# ---- the pieces --------------------------------------------------------------------------------


def _load(model: Any, registry: Any, data: Any) -> Model:
    if isinstance(model, Model):
        return model
    if isinstance(model, str | Path):
        from kaon.sdk import load

        return load(str(model), registry=registry)
    import torch

    if isinstance(model, torch.nn.Module) and isinstance(data, tuple | list) and len(data) == 2:
        from kaon.models.torch import TorchModel  # a module in memory, as kaon.explain and kaon.optimize take

        example = np.asarray(data[0])[:2]
        return TorchModel.from_module(model.eval(), example.astype(np.float32) if example.dtype.kind == "f"
                                      else example, name=type(model).__name__)
    raise InvalidInputError(
        f"model must be a kaon Model, a registry reference ('digits@latest'), a model file, or a torch module "
        f"with data=(x, y). Received: {type(model).__name__}" + (" without data=(x, y)" if isinstance(
            model, torch.nn.Module) else ""))


def _single_input(model: Model) -> Any:
    if len(model.signature.inputs) != 1:
        raise InvalidInputError(f"kaon audits classifiers with one input; model '{model.name}' has "
                                f"{[s.name for s in model.signature.inputs]}.")
    return model.signature.inputs[0]


def _is_digits_model(model: Model, spec: Any) -> bool:
    outputs = model.signature.outputs[0].shape if model.signature.outputs else ()
    return tuple(spec.shape[1:]) == DIGITS_INPUT_SHAPE and tuple(outputs[1:]) == (DIGITS_NUM_CLASSES,)


def _data(data: Any, model: Model, spec: Any) -> tuple[np.ndarray, np.ndarray, str]:
    if data is None:
        if _is_digits_model(model, spec):
            x, y = digits_test_split()
            return x, y, DIGITS_SOURCE
        raise InvalidInputError(
            f"auditing model '{model.name}' needs labelled data: pass --data FILE.npz (Python: data='file.npz' "
            f"or data=(x, y)) with inputs {spec.describe()} and integer labels. Only a digits model "
            f"(input (N, 1, 8, 8), 10 outputs) defaults to the bundled digits test split.")
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
        source = "the (x, y) arrays passed in"
    else:
        path = Path(data)
        if not path.exists():
            raise InvalidInputError(f"data file not found. Received: {str(data)!r}. Expected a .npz file of "
                                    f"inputs and labels (np.savez(path, x=x, y=y)).")
        if path.suffix != ".npz":
            raise InvalidInputError(f"data must be a .npz file of inputs and labels, or an (x, y) pair. "
                                    f"Received: {str(data)!r}")
        archive = load_arrays(path, "the --data file")
        keys = next(((a, b) for a, b in _NPZ_KEYS if a in archive and b in archive), None)
        if keys is None:
            raise InvalidInputError(
                f"'{path}' has arrays {sorted(archive)}; expected inputs and labels under one of "
                f"{[f'{a}/{b}' for a, b in _NPZ_KEYS]}. Save it with np.savez(path, x=x, y=y).")
        x, y = archive[keys[0]], archive[keys[1]]
        source = str(path)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(1)  # one-hot labels
    y = class_indices(y)  # a (N, 1) column, 0.0/1.0 floats: the class indices they are
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise InvalidInputError(f"labels must be one integer class per input. Received: labels of shape "
                                f"{y.shape} and dtype {y.dtype} for {len(x)} inputs.")
    return x, y.astype(np.int64), source


def _predict(model: Model, name: str, x: np.ndarray, batch_size: int) -> np.ndarray:
    out_name = model.signature.outputs[0].name
    return np.concatenate([model.run({name: x[i: i + batch_size]})[out_name] for i in range(0, len(x), batch_size)])


def _probabilities(raw: np.ndarray, binary: bool | None) -> np.ndarray:
    outputs = probabilities(raw, binary)  # a binary model's one logit or probability: two classes
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        raise InvalidInputError(f"kaon audits classifiers: the first output must be (N, classes), or (N, 1) for a "
                                f"binary model. Received: shape {raw.shape}.")
    return outputs


def _adversarial(model: Model, x: np.ndarray, y: np.ndarray, epsilons: Sequence[float], pgd_steps: int,
                 low: float, high: float, batch_size: int, seed: int, notes: list[str],
                 binary: bool | None) -> dict[str, dict[str, float]]:
    module = model.differentiable_module()  # a torch model, or Keras 3 on the torch backend
    import torch

    if not isinstance(module, torch.nn.Module):
        parent = getattr(getattr(model, "version", None), "parent", None)
        hint = f" Audit the torch version it was made from ({parent})." if parent else \
            " Audit the torch version of this model."
        notes.append(f"FGSM and PGD need gradients, and this model runs on {model.framework}: not run.{hint}")
        return {}
    from kaon.robustness.attacks import FGSM, PGD

    device = getattr(model, "device", torch.device("cpu"))
    with torch.no_grad():
        probe = module(torch.from_numpy(x[:8]).to(device))
    probe = probe if isinstance(probe, torch.Tensor) else probe[0]
    outputs_probabilities = (binary if binary is not None
                             else are_probabilities(class_scores(probe.float().cpu().numpy())))

    def loss_fn(raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = two_class_tensor(raw, outputs_probabilities)  # binary: cross-entropy on it is BCE
        if outputs_probabilities:
            return torch.nn.functional.nll_loss(output.clamp_min(1e-12).log(), target)
        return torch.nn.functional.cross_entropy(output, target)

    results: dict[str, dict[str, float]] = {"fgsm": {}, "pgd": {}}
    for eps in epsilons:
        attacks: dict[str, FGSM | PGD] = {"fgsm": FGSM(eps, clip_min=low, clip_max=high),
                   "pgd": PGD(eps, steps=pgd_steps, clip_min=low, clip_max=high, seed=seed)}
        for name, attack in attacks.items():
            correct = 0
            for i in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i: i + batch_size])).to(device)
                yb = torch.from_numpy(y[i: i + batch_size]).to(device)
                adv = attack.perturb(module, xb, yb, loss_fn)
                with torch.no_grad():
                    out = module(adv)
                out = two_class_tensor(out if isinstance(out, torch.Tensor) else out[0], outputs_probabilities)
                correct += int((out.argmax(1) == yb).sum())
            results[name][f"{eps:g}"] = round(correct / len(y), 4)
    return results


def _corruptions(model: Model, name: str, x: np.ndarray, y: np.ndarray, low: float, high: float, batch_size: int,
                 seed: int, notes: list[str], binary: bool | None) -> dict[str, dict[str, float]]:
    def accuracy(batch: np.ndarray) -> float:
        scores = class_scores(_predict(model, name, batch, batch_size), binary)
        return round(float((scores.argmax(1) == y).mean()), 4)

    results: dict[str, dict[str, float]] = {
        "gaussian_noise": {f"{s:g}": accuracy(corrupt.gaussian_noise(x, s, seed=seed, low=low, high=high))
                           for s in corrupt.NOISE_SIGMAS},
    }
    if corrupt.spatial_axes(x.shape) is not None:
        results["blur"] = {f"{s:g}": accuracy(corrupt.blur(x, s, low=low, high=high)) for s in corrupt.BLUR_SIGMAS}
    else:
        notes.append("blur needs image inputs (N, C, H, W) or (N, H, W, C): not run.")
    results["contrast"] = {f"{c:g}": accuracy(corrupt.contrast(x, c, low=low, high=high))
                           for c in corrupt.CONTRAST_FACTORS}
    return results


def _store(report: AuditReport, ref: str, epsilons: Sequence[float], pgd_steps: int, registry: Any) -> None:
    from kaon.registry import Registry

    reg = registry or Registry()
    run = reg.create_run(f"audit {ref}", params={
        "model": ref, "data": report.data_source, "num_samples": report.num_samples,
        "epsilons": [float(e) for e in epsilons], "pgd_steps": pgd_steps}, kind="audit")
    report.run_id = run.id
    metrics: dict[str, float] = {"clean_accuracy": report.clean_accuracy, "ece": report.ece}
    for attack, table in report.adversarial.items():
        metrics.update({f"{attack}_{eps}": acc for eps, acc in table.items()})
    for corruption, table in report.corruptions.items():
        metrics.update({f"{corruption}_{severity}": acc for severity, acc in table.items()})
    try:
        reg.log_metrics(run.id, metrics, step=0)
        with tempfile.TemporaryDirectory(prefix="kaon-audit-") as tmp:
            files = report.write(tmp)
            for file_name, path in files.items():
                reg.add_run_artifact(run.id, file_name, path)
        report.files = {}
    except BaseException:
        reg.finish_run(run.id, "failed")
        raise
    reg.finish_run(run.id, summary={"summary": report.summary(), **metrics})
