"""Per-operator profiling: time the model with one operator group at a time in int8, against fp32.

    >>> timings, notes = profile_groups(prepared, groups, scheme="dynamic", feeds={"image": x64},
    ...                                 num_threads=1, folder=tmp)                          # doctest: +SKIP
    >>> plan_quantization(timings, target="throughput")                                 # doctest: +SKIP

Each group is quantized alone and the whole model is timed (interleaved with the fp32 model), so
the figure includes the quantize/dequantize work that int8 adds around the group's operators.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from kaon.optimization.measure import Runner, onnx_runner, time_interleaved
from kaon.optimization.plan import GroupTiming
from kaon.optimization.quantize import OpGroup, Scheme, quantize_model


def profile_groups(prepared: Path, groups: Sequence[OpGroup], *, scheme: Scheme, feeds: dict[str, np.ndarray],
                   num_threads: int, folder: Path, calibration: Sequence[dict[str, np.ndarray]] | None = None,
                   num_rounds: int = 5, round_s: float = 0.03,
                   accuracy_drop: Callable[[Runner], float] | None = None) -> tuple[list[GroupTiming], list[str]]:
    """(one GroupTiming per group that could be quantized, notes on those that could not).

    `accuracy_drop(runner)`, when given, scores each group's int8 model (points lost vs fp32).
    """
    fp32 = onnx_runner(prepared, num_threads=num_threads)
    calls: dict[str, Callable[[], object]] = {"fp32": partial(fp32, feeds)}
    drops: dict[str, float] = {}
    runners, notes = _probes(prepared, groups, scheme=scheme, feeds=feeds, num_threads=num_threads, folder=folder,
                             calibration=calibration)
    for label, runner in runners:
        if accuracy_drop is not None:
            drops[label] = accuracy_drop(runner)
        calls[label] = partial(runner, feeds)
    if len(calls) == 1:
        return [], notes
    durations = time_interleaved(calls, num_rounds=num_rounds, round_s=round_s)
    _remove_probes(folder, scheme)
    base_ms = statistics.median(durations["fp32"]) * 1000
    timings = [GroupTiming(label, base_ms, statistics.median(samples) * 1000, drops.get(label))
               for label, samples in durations.items() if label != "fp32"]
    return timings, notes


def score_groups(prepared: Path, groups: Sequence[OpGroup], *, scheme: Scheme, feeds: dict[str, np.ndarray],
                 num_threads: int, folder: Path, accuracy_drop: Callable[[Runner], float],
                 calibration: Sequence[dict[str, np.ndarray]] | None = None) -> tuple[dict[str, float], list[str]]:
    """({group: what quantizing only it loses}, notes): `profile_groups`' scores without the timing,
    for many small groups (one per layer, from `layer_groups`) fed to `plan.keep_most_sensitive`."""
    notes: list[str] = []
    drops: dict[str, float] = {}
    for group in groups:  # one probe at a time: a model's worth of weights each
        runners, more = _probes(prepared, [group], scheme=scheme, feeds=feeds, num_threads=num_threads,
                                folder=folder, calibration=calibration)
        notes += more
        drops.update({label: accuracy_drop(runner) for label, runner in runners})
        _remove_probes(folder, scheme)
    return drops, notes


def _probes(prepared: Path, groups: Sequence[OpGroup], *, scheme: Scheme, feeds: dict[str, np.ndarray],
            num_threads: int, folder: Path, calibration: Sequence[dict[str, np.ndarray]] | None,
            ) -> tuple[list[tuple[str, Runner]], list[str]]:
    """A runner per group with only that group in int8, and notes on the groups that could not be."""
    runners: list[tuple[str, Runner]] = []
    notes: list[str] = []
    for index, group in enumerate(groups):
        probe = folder / f"probe-{scheme}-{index}.onnx"
        try:
            quantize_model(prepared, probe, scheme=scheme, groups=[group], calibration=calibration)
            runner = onnx_runner(probe, num_threads=num_threads)
            runner(feeds)
        except Exception as exc:  # noqa: BLE001 - a group onnxruntime cannot quantize stays fp32
            notes.append(f"{group.label}: kept fp32 ({scheme} int8 failed: {type(exc).__name__}: {str(exc)[:200]})")
            continue
        runners.append((group.label, runner))
    return runners, notes


def _remove_probes(folder: Path, scheme: Scheme) -> None:
    for probe in folder.glob(f"probe-{scheme}-*.onnx*"):
        probe.unlink()
