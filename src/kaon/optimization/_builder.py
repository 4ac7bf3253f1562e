"""Build the candidate variants of one `optimize` call. Each method fails alone: its row says why.

Order: the ONNX export (every other ONNX variant starts from it), int8 of it, structured pruning
(then int8 of the pruned model), unstructured pruning, fp16 on a GPU.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from kaon.errors import KaonError, require
from kaon.optimization._source import Source
from kaon.optimization.export import compare_outputs, export_onnx, onnx_files, save_onnx, to_probabilities
from kaon.optimization.layout import channels_last_flatten
from kaon.optimization.measure import (
    BATCH_LATENCY,
    BATCH_THROUGHPUT,
    Runner,
    accuracy,
    batch_dependence,
    onnx_runner,
    predict,
    torch_runner,
)
from kaon.optimization.plan import Target, plan_quantization
from kaon.optimization.profile import profile_groups
from kaon.optimization.quantize import (
    Scheme,
    calibration_batches,
    op_groups,
    prepare,
    quantize_model,
    split_outlier_rows,
)
from kaon.optimization.report import Variant

PRUNE_RATIOS = (0.75, 0.5, 0.25)  # each is tried only when the one before it loses more accuracy than the budget
SPARSITY = 0.5
_PARITY_SAMPLES = 256
_SCORING_SAMPLES = 2048
_BATCH_CHECK_SAMPLES = 64  # held-out inputs run alone and in one batch, for int8-dynamic's note


@dataclass
class Context:
    source: Source
    folder: Path
    requested: tuple[str, ...]
    target: Target
    max_accuracy_drop: float
    num_threads: int
    num_rounds: int
    tune: tuple[np.ndarray, np.ndarray]
    held: tuple[np.ndarray, np.ndarray]
    calibration_samples: int
    original_accuracy: float
    original_outputs: np.ndarray
    original_runner: Runner
    binary_probabilities: bool | None = None  # a binary model's one output: probabilities or logits, decided once


@dataclass
class Builder:
    ctx: Context
    variants: list[Variant] = field(default_factory=list)
    runners: dict[str, Runner] = field(default_factory=dict)
    parity: str = ""
    _teacher: np.ndarray | None = None

    def teacher(self) -> np.ndarray:
        """The original's probabilities on the tuning samples: the targets pruned models are distilled to."""
        if self._teacher is None:
            outputs = predict(self.ctx.original_runner, self.ctx.source.input_name, self.ctx.tune[0])
            self._teacher = to_probabilities(outputs, self.ctx.binary_probabilities).astype(np.float32)
        return self._teacher

    # ---- entry ------------------------------------------------------------------------------------

    def build_all(self) -> None:
        base = self._onnx_base()
        for scheme in ("dynamic", "static"):
            if f"int8-{scheme}" not in self.ctx.requested:
                continue
            if base is None:
                self._skip(f"int8-{scheme}", (f"int8-{scheme}",), "needs the ONNX export, which failed (see onnx-fp32)")
            else:
                self._int8(base, scheme)  # type: ignore[arg-type]
        if "prune-structured" in self.ctx.requested:
            self._pruned()
        if "prune-unstructured" in self.ctx.requested:
            self._sparse()
        if "fp16" in self.ctx.requested:
            self._fp16(base)

    # ---- ONNX -------------------------------------------------------------------------------------

    def _onnx_base(self) -> Variant | None:
        ctx = self.ctx
        variant = Variant("onnx-fp32", ("onnx",), "onnx", threads=ctx.num_threads,
                          candidate="onnx" in ctx.requested)
        if ctx.source.kind == "onnx":
            onnx = require("onnx", "onnx", "Optimizing an ONNX model")
            path = ctx.folder / "onnx-fp32" / "model.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            # Loaded and saved rather than copied: external weights, whatever their file is called,
            # end up in model.onnx.data beside it (or inline), as a registered version names them.
            save_onnx(onnx.load(str(ctx.source.onnx_path)), path)
            self._channels_last(variant, path)
            base = self._finish_onnx(variant, path, reference=None)
            if base is not None:  # the base of the int8 variants, but not a row: it is the original itself
                self.variants.remove(base)
                self.runners.pop(base.name)
            return base

        def build() -> Path:
            path = ctx.folder / "onnx-fp32" / "model.onnx"
            result = export_onnx(ctx.source.exportable(), {ctx.source.input_name: ctx.held[0][:2]}, path,
                                 output_names=ctx.source.output_names)
            variant.notes.append(f"exported with the {result.exporter} exporter" +
                                 (f" ({'; '.join(result.notes)})" if result.notes else ""))
            self._channels_last(variant, path)
            return path

        path = self._attempt(variant, build)
        if path is None:
            return None
        return self._finish_onnx(variant, path, reference=ctx.original_outputs, record_parity=True)

    def _finish_onnx(self, variant: Variant, path: Path, *, reference: np.ndarray | None,
                     record_parity: bool = False) -> Variant | None:
        """Check parity against `reference` outputs (if any), then score the variant; None if it failed."""
        ctx = self.ctx
        try:
            runner = onnx_runner(path, num_threads=ctx.num_threads)
            outputs = predict(runner, ctx.source.input_name, ctx.held[0])
        except Exception as exc:  # noqa: BLE001
            return self._fail(variant, exc)
        if reference is not None:
            parity = compare_outputs(reference[:_PARITY_SAMPLES], outputs[:_PARITY_SAMPLES], ctx.binary_probabilities)
            if record_parity:
                self.parity = f"{variant.name} vs the original: {parity.describe()}"
            if not parity.ok:
                variant.status = "failed"
                variant.notes.append(f"the export does not match the original: {parity.describe()}")
                self.variants.append(variant)
                return None
        variant.files = onnx_files(path)
        self._score(variant, runner, outputs)
        return variant

    # ---- int8 -------------------------------------------------------------------------------------

    def _int8(self, base: Variant, scheme: Scheme, prefix: str = "", methods: tuple[str, ...] = ()) -> None:
        """Profile each operator group (time and accuracy), quantize the plan; drop groups while over budget."""
        ctx = self.ctx
        name = f"{prefix}int8-{scheme}"
        variant = Variant(name, (*methods, f"int8-{scheme}"), "onnx", threads=ctx.num_threads)
        folder = ctx.folder / name
        assert base.accuracy_drop_pts is not None
        budget_left = ctx.max_accuracy_drop - base.accuracy_drop_pts
        # Decisions are scored on the tuning samples, so that the held-out ones only ever measure.
        tune_x, tune_y = ctx.tune[0][:_SCORING_SAMPLES], ctx.tune[1][:_SCORING_SAMPLES]
        scored: dict[str, float] = {}

        def drop_vs_base(runner: Runner) -> float:
            if "base" not in scored:
                base_runner = onnx_runner(base.files["model.onnx"], num_threads=ctx.num_threads)
                scored["base"] = accuracy(predict(base_runner, ctx.source.input_name, tune_x), tune_y,
                                          ctx.binary_probabilities)
            return (scored["base"] - accuracy(predict(runner, ctx.source.input_name, tune_x), tune_y,
                                              ctx.binary_probabilities)) * 100

        def build() -> Path | None:
            folder.mkdir(parents=True, exist_ok=True)
            prepared, note = prepare(base.files["model.onnx"], folder / "prepared.onnx",
                                     optimize_graph=scheme == "static")
            if note:
                variant.notes.append(note)
            groups = op_groups(prepared, scheme)
            if not groups:
                variant.status = "skipped"
                variant.notes.append("the model has no operator onnxruntime quantizes (Conv, MatMul, Gemm, Gather)")
                return None
            tuning = calibration_batches({ctx.source.input_name: ctx.tune[0]}, ctx.calibration_samples)
            if scheme == "dynamic":  # one scale per tensor: an outlier first token (a [CLS]) gets its own
                try:
                    split, split_groups = split_outlier_rows(prepared, folder / "split.onnx", groups=groups,
                                                             calibration=tuning)
                except Exception as exc:  # noqa: BLE001 - a refinement: int8 goes on without it
                    variant.notes.append(f"first-token split skipped ({type(exc).__name__}: {str(exc)[:200]})")
                else:
                    num_split = sum(len(g.nodes) for g in split_groups) - sum(len(g.nodes) for g in groups)
                    prepared.unlink()
                    prepared, groups = split, split_groups
                    if num_split:
                        variant.notes.append(f"{num_split} dense layers: the first position's activations are over "
                                             f"3x any other's on the tuning samples, so it gets its own int8 scale")
            calibration = tuning if scheme == "static" else None
            batch = BATCH_LATENCY if ctx.target == "latency" else BATCH_THROUGHPUT
            timings, notes = profile_groups(prepared, groups, scheme=scheme,
                                            feeds={ctx.source.input_name: _tile(ctx.held[0], batch)},
                                            num_threads=ctx.num_threads, folder=folder, calibration=calibration,
                                            num_rounds=ctx.num_rounds, accuracy_drop=drop_vs_base)
            plan = plan_quantization(timings, target=ctx.target, max_accuracy_drop=budget_left)
            variant.notes += [f"per-operator profile at batch {batch}: {plan.describe()}", *notes]
            chosen = [g for g in groups if g.label in plan.quantize]
            drops = {t.group: t.accuracy_drop_pts or 0.0 for t in timings}
            path = None
            while chosen:
                path = quantize_model(prepared, folder / "model.onnx", scheme=scheme, groups=chosen,
                                      calibration=calibration)
                lost = drop_vs_base(onnx_runner(path, num_threads=ctx.num_threads))
                if lost <= budget_left or len(chosen) == 1:
                    break
                worst = max(chosen, key=lambda g: drops.get(g.label, 0.0))
                chosen.remove(worst)
                variant.notes.append(f"together the groups lost {lost:.2f} pts on the tuning samples: {worst.label} "
                                     f"back to fp32 (alone it lost {drops.get(worst.label, 0.0):.2f})")
            prepared.unlink()
            if path is None:
                variant.status = "skipped"
                variant.notes.append("no operator group is both faster in int8 here and within the accuracy "
                                     "budget, so nothing was quantized")
            return path

        path = self._attempt(variant, build)
        if path is not None:
            if scheme == "dynamic":
                variant.notes.append(self._batch_note(path))
            self._finish_onnx(variant, path, reference=None)
        elif variant.status == "skipped":
            self.variants.append(variant)

    def _batch_note(self, path: Path) -> str:
        """What int8-dynamic means for a served model's answers, measured on held-out inputs."""
        ctx = self.ctx
        x = ctx.held[0][:_BATCH_CHECK_SAMPLES]
        gap, changed = batch_dependence(onnx_runner(path, num_threads=ctx.num_threads), ctx.source.input_name, x)
        return (f"int8-dynamic scales each batch's activations by that batch's own range, so a served input's "
                f"outputs move a little with the inputs batched beside it: {len(x)} held-out inputs, alone against "
                f"in one batch, differ by up to {gap:.3g} ({changed} labels changed); int8-static's scales are fixed")

    # ---- pruning ----------------------------------------------------------------------------------

    def _pruned(self) -> None:
        ctx = self.ctx
        if ctx.source.kind != "torch":
            self._skip("pruned", ("prune-structured",), f"structured pruning needs a torch model; the original is "
                                                         f"{ctx.source.kind}")
            return
        best: Variant | None = None
        for ratio in PRUNE_RATIOS:
            name = f"pruned-{round(ratio * 100)}"
            variant = Variant(name, ("prune-structured",), "onnx", threads=ctx.num_threads)
            module = self._attempt(variant, partial(self._prune_and_tune, ratio, variant))
            if module is None:
                return
            built = self._torch_variant(variant, module)
            if built is None:
                return
            if (built.accuracy_drop_pts or 0) <= ctx.max_accuracy_drop:
                best = built
                break
            variant.notes.append(f"over the budget at {ratio:.0%}: trying a smaller ratio" if ratio != PRUNE_RATIOS[-1]
                                 else "over the budget")
        if best is None or best.framework != "onnx":
            return
        for scheme in ("dynamic", "static"):
            if f"int8-{scheme}" in ctx.requested:
                self._int8(best, scheme, prefix=f"{best.name}+", methods=("prune-structured",))  # type: ignore[arg-type]

    def _prune_and_tune(self, ratio: float, variant: Variant) -> Any:
        from kaon.optimization.prune import editable_module, fine_tune, prune_structured

        ctx = self.ctx
        module = editable_module(ctx.source.program if ctx.source.program is not None else ctx.source.module)
        changed = prune_structured(module, ctx.tune[0][:2], ratio=ratio)
        # The more channels go, the longer the fine-tune: 30 epochs at 75% (10 lost 0.6-1.7 pts on digits, 30 lost
        # 0-0.6), 20 at 50%, 10 at 25%; the step cap grows with it, for large tuning sets.
        epochs = max(10, round(40 * ratio))
        loss = fine_tune(module, *ctx.tune, teacher=self.teacher(), epochs=epochs, max_steps=60 * epochs,
                         binary_probabilities=ctx.binary_probabilities)
        widths = ", ".join(f"{k} {a}->{b}" for k, a, b in ((k, *v) for k, v in changed.items()))
        variant.notes.append(f"{ratio:.0%} of channels removed ({widths}); fine-tuned {epochs} epochs on "
                             f"{len(ctx.tune[0])} samples, distilled from the original (final loss {loss:.3f})")
        return module

    def _sparse(self) -> None:
        from kaon.optimization.prune import editable_module, fine_tune, prune_unstructured

        ctx = self.ctx
        name = f"sparse-{round(SPARSITY * 100)}"
        if ctx.source.kind != "torch":
            self._skip(name, ("prune-unstructured",), f"magnitude pruning needs a torch model; the original is "
                                                      f"{ctx.source.kind}")
            return
        variant = Variant(name, ("prune-unstructured",), "onnx", threads=ctx.num_threads)

        def build() -> Any:
            module = editable_module(ctx.source.program if ctx.source.program is not None else ctx.source.module)
            masks = prune_unstructured(module, ratio=SPARSITY)
            fine_tune(module, *ctx.tune, masks=masks, teacher=self.teacher(),
                      binary_probabilities=ctx.binary_probabilities)
            variant.notes.append(f"{SPARSITY:.0%} of each conv/linear layer's weights set to 0 and kept there "
                                 f"during the fine-tune; dense kernels and files do not get faster or smaller")
            return module

        module = self._attempt(variant, build)
        if module is not None:
            self._torch_variant(variant, module)

    def _torch_variant(self, variant: Variant, module: Any) -> Variant | None:
        """Export a modified torch module to ONNX; if it cannot be, keep it as a torch.export program."""
        ctx = self.ctx
        folder = ctx.folder / variant.name
        example = {ctx.source.input_name: ctx.tune[0][:2]}
        eager = torch_runner(module, [ctx.source.input_name])
        reference = predict(eager, ctx.source.input_name, ctx.held[0][:_PARITY_SAMPLES])
        try:
            result = export_onnx(module, example, folder / "model.onnx", output_names=ctx.source.output_names)
        except KaonError as exc:
            base = next((v for v in self.variants if v.name == "onnx-fp32"), None)
            same = base is not None and exc.message in base.notes
            variant.notes.append("kept as a torch program: " + ("the ONNX export failed as for onnx-fp32" if same
                                                                else exc.message))
            return self._torch_program(variant, module, folder)
        if result.notes:
            variant.notes += result.notes
        self._channels_last(variant, result.path)
        return self._finish_onnx(variant, result.path, reference=reference)

    def _channels_last(self, variant: Variant, path: Path) -> None:
        """Let flattens read channels-last where onnxruntime makes that free (layout.py); a refinement, never fatal."""
        try:
            count = channels_last_flatten(path)
        except Exception as exc:  # noqa: BLE001 - the variant goes on in its exported layout
            variant.notes.append(f"channels-last flatten skipped ({type(exc).__name__}: {str(exc)[:200]})")
            return
        if count:
            variant.notes.append(f"{count} flatten{'s' if count > 1 else ''} before a dense layer read channels-last "
                                 f"(onnxruntime writes its blocked conv layout straight to NHWC; weights permuted)")

    def _torch_program(self, variant: Variant, module: Any, folder: Path) -> Variant | None:
        from kaon.models.torch import export_program

        ctx = self.ctx
        variant.framework = "torch"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            export_program(module, ctx.tune[0][:2], folder / "model.pt2")
        except Exception as exc:  # noqa: BLE001
            return self._fail(variant, exc)
        variant.files = {"model.pt2": folder / "model.pt2"}
        module.eval()  # scored as it will serve: dropout off, batch norm on its running statistics
        runner = torch_runner(module, [ctx.source.input_name])
        self._score(variant, runner, predict(runner, ctx.source.input_name, ctx.held[0]))
        return variant

    # ---- fp16 -------------------------------------------------------------------------------------

    def _fp16(self, base: Variant | None) -> None:
        ort = require("onnxruntime", "onnx", "fp16 variants")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            self._skip("fp16", ("fp16",), "needs a CUDA GPU: onnxruntime's CUDAExecutionProvider is not available "
                                          "here (install onnxruntime-gpu on a GPU machine)")
            return
        if base is None:
            self._skip("fp16", ("fp16",), "needs the ONNX export, which failed")
            return
        from kaon.optimization._fp16 import build_fp16

        self._attempt(Variant("fp16", ("fp16",), "onnx", device="cuda", threads=self.ctx.num_threads),
                      lambda: build_fp16(self, base))

    # ---- shared -----------------------------------------------------------------------------------

    def _score(self, variant: Variant, runner: Runner, outputs: np.ndarray) -> None:
        ctx = self.ctx
        variant.accuracy = accuracy(outputs, ctx.held[1], ctx.binary_probabilities)
        variant.accuracy_drop_pts = (ctx.original_accuracy - variant.accuracy) * 100
        variant.size_bytes = int(sum(p.stat().st_size for p in variant.files.values()))
        self.runners[variant.name] = runner
        self.variants.append(variant)

    def _skip(self, name: str, methods: tuple[str, ...], reason: str) -> None:
        self.variants.append(Variant(name, methods, "-", status="skipped", threads=self.ctx.num_threads,
                                     notes=[reason]))

    def _fail(self, variant: Variant, exc: BaseException) -> Any:
        """Record `exc` on `variant` (now 'failed') and return None, so that callers can `return self._fail(...)`."""
        variant.status = "failed"
        message = exc.message if isinstance(exc, KaonError) else f"{type(exc).__name__}: {exc}"
        variant.notes.append(message[:1500])
        if not isinstance(exc, KaonError):
            where = traceback.extract_tb(exc.__traceback__)[-1:]
            variant.notes.append("at " + "; ".join(f"{f.filename}:{f.lineno}" for f in where))
        self.variants.append(variant)
        return None

    def _attempt(self, variant: Variant, build: Callable[[], Any]) -> Any:
        try:
            return build()
        except Exception as exc:  # noqa: BLE001 - one method failing must not stop the others
            return self._fail(variant, exc)


def _tile(x: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n] if reps > 1 else x[:n])
