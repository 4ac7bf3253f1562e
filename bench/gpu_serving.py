"""ResNet-50 served end to end on a GPU with JPEG request bodies, against the model alone on the same card.

    python bench/gpu_serving.py                 # on a machine with a CUDA GPU and torchvision
    python bench/gpu_serving.py --dry-run       # the same plumbing on the CPU with a tiny CNN (minutes)

In one run, on the first CUDA device:
  1. the model alone: kaon's TorchModel (a torch.export ResNet-50 with random weights, ImageNet
     normalisation inside, channels-last) on a batch already on the GPU, in fp32, bf16 and fp16 (img/s);
     the bf16 figure is the "model alone" limit, the three together are issue 4's precision figures;
  2. nvJPEG: torchvision's batched decode of 224x224 JPEGs, and its pixels against PIL's;
  3. `kaon serve resnet50.pt2 --precision bf16 --top-k 5 --max-batch-size 256 --workers N` for each N of
     --workers, loaded by wrk on 127.0.0.1 with JPEG bodies (64 distinct pictures, ~12 KB each) at each
     of --connections: requests/s (= img/s), p50/p99, errors (non-2xx answers count as errors), and the
     best figure's share of the model-alone limit.
Results go to bench/results/gpu-serving-*.json (and $OUT when set). Set KAON_BENCH_WRK to a wrk binary
that is not on the PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _load import ServerProcess, free_port, run_wrk  # noqa: E402


def make_jpegs(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """`count` distinct photo-like JPEGs (smooth gradients, shapes and grain, quality 90)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        base = np.stack([np.sin(xx * rng.uniform(1, 6) + rng.uniform(0, 6)),
                         np.cos(yy * rng.uniform(1, 6) + rng.uniform(0, 6)),
                         np.sin((xx + yy) * rng.uniform(1, 6))], axis=-1)
        pixels = ((base * 0.5 + 0.5) * 200 + rng.normal(0, 12, (size, size, 3))).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(pixels)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = rng.integers(0, size - 40, 2)
            w, h = rng.integers(20, size // 2, 2)
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.ellipse([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
        img = img.filter(ImageFilter.GaussianBlur(0.6))
        path = folder / f"img{i:03d}.jpg"
        img.save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def build_model(folder: Path, dry_run: bool) -> tuple[Path, int]:
    """Export the benchmark model to folder/<name>.pt2; returns the path and its image size."""
    import torch

    from kaon.models.torch import export_program

    if dry_run:
        size = 64
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(16, 1000))
    else:
        import torchvision

        size = 224
        net = torchvision.models.resnet50(weights=None)  # random weights: the speed is the same

    class Normalised(torch.nn.Module):
        """Takes pixels in [0, 1] as kaon decodes them; ImageNet's mean/std inside the model."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner((x - self.mean) / self.std)

    path = folder / ("tiny.pt2" if dry_run else "resnet50.pt2")
    export_program(Normalised(net).eval(), np.random.rand(2, 3, size, size).astype(np.float32), path)
    return path, size


def model_alone(path: Path, device: str, batch: int, precisions: list[str], seconds: float) -> dict[str, Any]:
    """img/s of kaon's TorchModel.run_tensors on a batch already on the device (outputs back to numpy)."""
    import torch

    from kaon.models import load_file

    results: dict[str, Any] = {}
    for precision in precisions:
        model = load_file(path).place(device, precision)
        x = torch.rand(batch, 3, *model.signature.inputs[0].shape[2:], device=device)
        for _ in range(3):
            model.run_tensors([x])
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.run_tensors([x])  # ends in .cpu(): synchronous
            count += batch
        elapsed = time.perf_counter() - started
        results[precision] = {"img_per_s": round(count / elapsed, 1), "batch": batch}
        print(f"  model alone {precision}: {count / elapsed:,.0f} img/s at batch {batch}", flush=True)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return results


def graphs_check(path: Path, device: str, precision: str, seconds: float) -> dict[str, Any]:
    """CUDA graphs against op-by-op launches: the same outputs (a batch of 50 runs in the 64 graph, its
    padding rows dropped), and img/s at small and large batches."""
    import torch

    from kaon.models import load_file

    eager = load_file(path).place(device, precision, cuda_graphs=False)
    graphed = load_file(path).place(device, precision)
    shape = eager.signature.inputs[0].shape[1:]
    x = torch.rand(50, *shape, device=device)
    graphed.run_tensors([torch.rand(64, *shape, device=device)])  # fill the 64 graph's rows with other data
    a, b = eager.run_tensors([x])["output"], graphed.run_tensors([x])["output"]
    out: dict[str, Any] = {"max_abs_diff": float(np.abs(a - b).max()), "max_abs_output": float(np.abs(a).max()),
                           "same_top1": bool((a.argmax(1) == b.argmax(1)).all()), "img_per_s": {}}
    print(f"  graphs vs eager ({precision}, batch 50): max |diff| {out['max_abs_diff']:.4g} of max |out| "
          f"{out['max_abs_output']:.4g}, same top-1: {out['same_top1']}", flush=True)
    for batch in (8, 32, 128):
        x = torch.rand(batch, *shape, device=device)
        for label, model in (("eager", eager), ("graphs", graphed)):
            for _ in range(3):
                model.run_tensors([x])
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                model.run_tensors([x])
                count += batch
            rate = count / (time.perf_counter() - started)
            out["img_per_s"][f"{label}_{batch}"] = round(rate, 1)
            print(f"  {label} batch {batch}: {rate:,.0f} img/s", flush=True)
    return out


def decode_rate(jpegs: list[Path], device: str, batch: int, seconds: float) -> dict[str, Any]:
    """Batched decode img/s on `device` (nvJPEG on a GPU) and the largest pixel difference against PIL."""
    import torch

    from kaon.serving.images import EncodedImage, decode_batch, decode_image_bytes

    datas = [p.read_bytes() for p in jpegs]
    items = [EncodedImage(datas[i % len(datas)], 3, False) for i in range(batch)]
    pixels = decode_batch(items, device)
    reference = np.stack([decode_image_bytes(datas[i % len(datas)], 3, None) for i in range(batch)])
    diff = np.abs(pixels.cpu().numpy() - reference)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        decode_batch(items, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        count += batch
    rate = count / (time.perf_counter() - started)
    print(f"  decode on {device}: {rate:,.0f} img/s at batch {batch}; |pixels - PIL's| max {diff.max():.3f}, "
          f"mean {diff.mean():.4f}", flush=True)
    return {"img_per_s": round(rate, 1), "batch": batch, "max_abs_vs_pil": float(diff.max()),
            "mean_abs_vs_pil": float(diff.mean())}


def served(path: Path, jpegs: list[Path], precision: str, connections: list[int], seconds: float,
           threads: int, max_batch: int, workdir: Path, workers: int) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "KAON_HOME": str(workdir / "home"), "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "kaon.cli", "serve", str(path), "--port", str(port), "--precision", precision,
            "--top-k", "5", "--max-batch-size", str(max_batch), "--max-wait-ms", "2", "--max-queue", "16384",
            "--no-monitor", "--workers", str(workers)]
    print(f"  kaon serve --workers {workers}", flush=True)
    server = ServerProcess("kaon", args, port=port, log_path=workdir / f"kaon-{workers}.log", env=env)
    server.start()
    try:
        _wait_ready(server.url, jpegs[0], timeout_s=300)
        answer = _post_jpeg(server.url + "/predict", jpegs[0])
        print(f"  served answer: {json.dumps(answer)[:160]}", flush=True)
        out: dict[str, Any] = {"answer_example": answer, "runs": {}}
        for c in connections:
            run_wrk(server.url + "/predict", b"", c, min(3.0, seconds), threads=threads,
                    content_type="image/jpeg", body_files=jpegs)  # warm-up: every batch size's kernels
            profiler = _profile(server.proc.pid if server.proc else 0, workers, c, seconds)
            result = run_wrk(server.url + "/predict", b"", c, seconds, threads=threads, timeout_s=30,
                             content_type="image/jpeg", body_files=jpegs)
            if profiler is not None:
                profiler.wait(timeout=30)
            out["runs"][str(c)] = result.to_dict()
            print(f"  served c{c}: {result.rps:,.0f} img/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
                  f"errors {result.errors}", flush=True)
        out["server_cpu_s"] = server.cpu_s()
        return out
    finally:
        server.stop()
        print((workdir / f"kaon-{workers}.log").read_text()[-800:], flush=True)


def _profile(pid: int, workers: int, connections: int, seconds: float) -> subprocess.Popen[bytes] | None:
    """With KAON_BENCH_PYSPY (a py-spy binary) and $OUT set: sample one serving process during the run."""
    pyspy, out = os.environ.get("KAON_BENCH_PYSPY"), os.environ.get("OUT")
    if not pyspy or not out or not pid:
        return None
    target = pid
    if workers > 1:  # the supervisor only waits: sample its first worker
        children = Path(f"/proc/{pid}/task/{pid}/children")
        found = children.read_text().split() if children.exists() else []
        if not found:
            return None
        target = int(found[0])
    return subprocess.Popen([pyspy, "record", "-p", str(target), "-d", str(max(1, int(seconds) - 2)), "-r", "200",
                             "-f", "raw", "-o", f"{out}/prof-w{workers}-c{connections}.txt", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _post_jpeg(url: str, path: Path) -> Any:
    request = urllib.request.Request(url, data=path.read_bytes(), method="POST",
                                     headers={"content-type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def _wait_ready(url: str, jpeg: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} was not ready within {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny CNN on the CPU: checks the plumbing")
    parser.add_argument("--seconds", type=float, default=10.0, help="per load run and per model-alone figure")
    parser.add_argument("--connections", default="64,256", help="wrk concurrencies, comma-separated")
    parser.add_argument("--wrk-threads", type=int, default=4)
    parser.add_argument("--workers", default="1,4", help="kaon serve --workers values to measure, comma-separated")
    parser.add_argument("--quick", action="store_true", help="model alone in the served precision only, no "
                                                               "decode or CUDA-graph checks")
    parser.add_argument("--batch", type=int, default=256, help="model-alone batch and the server's max batch")
    args = parser.parse_args()
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --dry-run to check the plumbing on the CPU")
    card = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor() or 'x86_64'})"
    results: dict[str, Any] = {"card": card, "torch": torch.__version__, "python": platform.python_version(),
                               "cpus": os.cpu_count()}
    print(f"on {card}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="kaon-bench-gpu-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        path, size = build_model(work, args.dry_run)
        print(f"  exported {path.name} in {time.perf_counter() - started:.1f} s", flush=True)
        jpegs = make_jpegs(work, 64, size)
        results["jpeg_bytes_mean"] = int(np.mean([p.stat().st_size for p in jpegs]))
        precision = "fp32" if args.dry_run else "bf16"
        precisions = [precision] if args.quick else ["fp32", "bf16"] if args.dry_run else ["fp32", "bf16", "fp16"]
        results["served_precision"] = precision
        stages = [
            ("model_alone", lambda: model_alone(path, device, args.batch, precisions, args.seconds / 2)),
        ]
        if not args.quick:
            stages.append(("decode", lambda: decode_rate(jpegs, device, 128, args.seconds / 4)))
        if device == "cuda" and not args.quick:
            stages.append(("graphs", lambda: graphs_check(path, device, precision, args.seconds / 8)))
        concurrencies = [int(c) for c in args.connections.split(",")]
        stages += [(f"served_workers_{n}", lambda n=n: served(path, jpegs, precision, concurrencies, args.seconds,
                                                               args.wrk_threads, args.batch, work, n))
                   for n in [int(w) for w in args.workers.split(",")]]
        for stage, run in stages:  # one stage failing still leaves the others' figures
            try:
                results[stage] = run()
            except Exception as exc:  # noqa: BLE001 - reported, and the run goes on
                traceback.print_exc()
                results[stage] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        limit = results["model_alone"][precision]["img_per_s"]
        best = max(r["rps"] for key, value in results.items() if key.startswith("served_workers_")
                   for r in value.get("runs", {}).values())
        results["served_share_of_model_alone"] = round(best / limit, 3)
        print(f"\nbest served {best:,.0f} img/s = {best / limit:.0%} of the model alone in {precision} "
              f"({limit:,.0f} img/s) on {card}")
    except KeyError:
        print("\nno served/model-alone ratio: a stage failed (see above)")
    name = f"gpu-serving-{time.strftime('%Y%m%d-%H%M%S')}.json"
    for folder in [BENCH / "results", Path(os.environ["OUT"]) if os.environ.get("OUT") else None]:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(json.dumps(results, indent=2))
    print(f"results: bench/results/{name}")


if __name__ == "__main__":
    main()
