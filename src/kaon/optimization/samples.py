"""Samples: the labelled inputs that calibrate int8, fine-tune pruned models and measure accuracy.

They live in an `.npz` file with arrays `x` (inputs, batch first) and `y` (integer labels), and
optionally `x_train`/`y_train` (data to calibrate and fine-tune on, so that `x`/`y` stay held out).
`attach_samples` stores such a file with a registered version::

    >>> attach_samples("digits@1", x_test, y_test, x_train=x_train, y_train=y_train)  # doctest: +SKIP

Where they are kept: a version is immutable (its files are part of its identity), so samples are a
*run artifact*: `samples/<name>-v<version>.npz` on the run that produced the version (its
`run_id`), or, for a version registered without a run, on a run of kind `samples` made for it.
`find_samples` looks there, then at the parent version (an optimized variant uses its original's).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kaon._internal.arrays import load_arrays
from kaon._internal.scores import class_indices
from kaon.errors import ConfigError, InvalidInputError, NotFoundError
from kaon.types import Signature

SAMPLES_RUN_KIND = "samples"
_MAX_PARENT_HOPS = 8
_MAX_RUNS_SCANNED = 10_000


@dataclass(frozen=True)
class Samples:
    """Held-out `x`/`y`, and optional separate tuning data `x_train`/`y_train`."""

    x: np.ndarray
    y: np.ndarray
    x_train: np.ndarray | None = None
    y_train: np.ndarray | None = None
    source: str = ""

    def split(self, seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], str]:
        """((x_tune, y_tune), (x_held, y_held), how): tune data calibrates and fine-tunes, held-out scores.

        Without `x_train`, half of `x` (a fixed shuffle) tunes and the other half is held out, so no
        variant is scored on data it was fitted to.
        """
        if self.x_train is not None and self.y_train is not None:
            how = f"held-out: {len(self.x)} samples (x, y); tuning: {len(self.x_train)} (x_train, y_train)"
            return (self.x_train, self.y_train), (self.x, self.y), how
        order = np.random.default_rng(seed).permutation(len(self.x))
        half = len(self.x) // 2
        tune, held = np.sort(order[:half]), np.sort(order[half:])
        how = (f"held-out: {len(held)} of the {len(self.x)} samples; the other {len(tune)} calibrate and "
               f"fine-tune (store x_train/y_train too to keep all of x held out)")
        return (self.x[tune], self.y[tune]), (self.x[held], self.y[held]), how


def check_samples(x: Any, y: Any, *, what: str = "samples", signature: Signature | None = None) -> tuple[
        np.ndarray, np.ndarray]:
    """x numeric with a batch axis, y integer class labels of the same length; shapes fit `signature`."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.dtype.kind not in "fiub" or x.ndim < 2 or len(x) < 2:
        raise InvalidInputError(
            f"{what}: x must be a numeric array of at least 2 inputs, batch axis first. "
            f"Received: x shape={x.shape}, dtype={x.dtype}."
        )
    y = class_indices(y)  # a (N, 1) column, 0.0/1.0 floats: the class indices they are
    if y.dtype.kind not in "iub" or y.ndim != 1 or len(y) != len(x):
        raise InvalidInputError(
            f"{what}: y must be integer class labels, one per input: shape ({len(x)},). "
            f"Received: y shape={y.shape}, dtype={y.dtype}. Optimization scores classifiers by accuracy."
        )
    if signature is not None and len(signature.inputs) == 1:
        spec = signature.inputs[0]
        if not spec.accepts_shape(tuple(int(d) for d in x.shape)):
            raise InvalidInputError(
                f"{what}: x does not fit the model's input '{spec.name}', which expects {spec.describe()}. "
                f"Received: x shape={x.shape}."
            )
    if x.dtype.kind == "f" and x.dtype != np.float32:
        x = x.astype(np.float32)
    return x, y.astype(np.int64, copy=False)


def read_samples(source: Any, *, signature: Signature | None = None) -> Samples:
    """Samples from an .npz file (arrays x and y; optional x_train and y_train; pickles are refused), or from
    an (x, y) pair of arrays."""
    if isinstance(source, tuple | list) and len(source) == 2:
        x, y = check_samples(source[0], source[1], what="calibration_data (x, y)", signature=signature)
        return Samples(x, y, source="calibration_data (x, y)")
    if not isinstance(source, str | Path):
        raise ConfigError(f"calibration_data is an .npz file with arrays x and y, or an (x, y) pair of arrays. "
                          f"Received: {type(source).__name__}.")
    path = Path(source)
    if not path.is_file():
        raise ConfigError(
            f"--calibration-data must be an existing .npz file with arrays x and y. Received: {str(path)!r} "
            f"(no such file)."
        )
    try:
        loaded = load_arrays(path, "--calibration-data")
    except InvalidInputError as exc:
        raise ConfigError(exc.message) from exc
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"--calibration-data {str(path)!r} holds one array; optimization needs inputs and their labels to "
            f"measure accuracy. Write an .npz: numpy.savez('samples.npz', x=inputs, y=labels).")
    arrays = loaded
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise ConfigError(
            f"--calibration-data {str(path)!r} has no array {' or '.join(map(repr, missing))}. "
            f"Expected arrays x (inputs) and y (integer labels). Received arrays: {sorted(arrays)}."
        )
    x, y = check_samples(arrays["x"], arrays["y"], what=str(path), signature=signature)
    x_train = y_train = None
    if "x_train" in arrays or "y_train" in arrays:
        if "x_train" not in arrays or "y_train" not in arrays:
            raise ConfigError(f"{str(path)!r} must hold both x_train and y_train, or neither. "
                              f"Received arrays: {sorted(arrays)}.")
        x_train, y_train = check_samples(arrays["x_train"], arrays["y_train"], what=f"{path} (x_train, y_train)",
                                         signature=signature)
    return Samples(x, y, x_train, y_train, source=str(path))


def write_samples(path: Path, samples: Samples) -> Path:
    arrays = {"x": samples.x, "y": samples.y}
    if samples.x_train is not None and samples.y_train is not None:
        arrays.update(x_train=samples.x_train, y_train=samples.y_train)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    return path


def artifact_name(record: Any) -> str:
    return f"samples/{record.name}-v{record.version}.npz"


def attach_samples(ref: str, x: Any, y: Any, *, x_train: Any = None, y_train: Any = None,
                   registry: Any = None) -> str:
    """Store labelled samples with the registered version `ref`; return the stored file's sha256.

    `x`/`y` are held out (accuracy); `x_train`/`y_train`, when given, calibrate and fine-tune.
    Attaching again replaces the samples.
    """
    from kaon.registry import Registry

    reg = registry or Registry()
    record = reg.get_version(ref)
    signature = Signature.from_dict(record.signature) if record.signature else None
    x, y = check_samples(x, y, signature=signature)
    xt = yt = None
    if (x_train is None) != (y_train is None):
        raise InvalidInputError("pass both x_train and y_train, or neither. "
                                f"Received: x_train={'set' if x_train is not None else None}, "
                                f"y_train={'set' if y_train is not None else None}.")
    if x_train is not None:
        xt, yt = check_samples(x_train, y_train, what="x_train/y_train", signature=signature)
    run_id = record.run_id or _samples_run(reg, record.ref, create=True)
    assert run_id is not None
    with tempfile.TemporaryDirectory(prefix="kaon-samples-") as folder:
        path = write_samples(Path(folder) / "samples.npz", Samples(x, y, xt, yt))
        return str(reg.add_run_artifact(run_id, artifact_name(record), path))


def find_samples(ref: str, *, registry: Any, signature: Signature | None = None) -> Samples | None:
    """The samples attached to `ref`, else to its parent (and so on); None if there are none."""
    record = registry.get_version(ref)
    for _ in range(_MAX_PARENT_HOPS):
        name = artifact_name(record)
        for run_id in (record.run_id, _samples_run(registry, record.ref, create=False)):
            if run_id is None:
                continue
            try:
                artifacts = registry.run_artifacts(run_id)
            except NotFoundError:  # the run was deleted
                continue
            if name in artifacts:
                samples = read_samples(registry.artifact_path(artifacts[name]), signature=signature)
                return Samples(samples.x, samples.y, samples.x_train, samples.y_train,
                               source=f"samples stored with {record.ref}")
        if not record.parent:
            return None
        record = registry.get_version(record.parent)
    return None


def _samples_run(registry: Any, ref: str, *, create: bool) -> int | None:
    """The run of kind 'samples' that holds the samples of a version registered without a run."""
    for run in registry.list_runs(limit=_MAX_RUNS_SCANNED):
        if run.kind == SAMPLES_RUN_KIND and run.params.get("model") == ref:
            return int(run.id)
    if not create:
        return None
    run = registry.create_run(f"samples for {ref}", params={"model": ref}, kind=SAMPLES_RUN_KIND)
    registry.finish_run(run.id, summary={"model": ref})
    return int(run.id)
