"""Benchmark: kaon Trainer.fit vs a hand-written PyTorch loop vs Keras 3 fit (torch backend).

The same seed CNN, data split, epochs and batch size for all three; each epoch also runs the
validation pass, as the Keras seed example does. Rounds are interleaved (the order rotates) and
the median is reported, so a noisy neighbour on the machine hurts every runner alike.
Then MNIST (the 10k test split: train on 8,000, test on 2,000) with kaon, and the cost of
differential privacy (ghost vs standard clipping) on digits.

    python bench/training.py                      # everything, 1 and 2 threads
    python bench/training.py --threads 1 --rounds 3 --skip-mnist

Goals: kaon within 5% of the plain loop; at least 1.5x faster than Keras fit.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kaon.training import Callback, DifferentialPrivacy, Trainer  # noqa: E402
from kaon.training.data import load_digits  # noqa: E402
from kaon.training.models import DigitsCNN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("KAON_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process) of the fit call alone
Runner = Callable[[Data, int, int], tuple[Timing, float]]  # -> (timing, test accuracy)


class Clock:
    """Wall and process CPU time of a block; CPU time is steadier when other jobs share the cores."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    @property
    def timing(self) -> Timing:
        return self.wall, self.cpu


def fresh_model(image_size: int = 8) -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN(image_size=image_size)


def run_kaon(data: Data, epochs: int, batch_size: int, *, track: bool = False) -> tuple[Timing, float]:
    x_train, y_train, x_test, y_test = data
    trainer = Trainer(fresh_model(x_train.shape[-1]), seed=0, track=track)
    with Clock() as clock:
        trainer.fit(x_train, y_train, epochs=epochs, batch_size=batch_size,
                    validation_data=(x_test, y_test), verbose=False)
    return clock.timing, trainer.evaluate(x_test, y_test)["accuracy"]


def run_plain(data: Data, epochs: int, batch_size: int) -> tuple[Timing, float]:
    """The loop a PyTorch user writes by hand: shuffled index slices, loss and accuracy per epoch."""
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in data)
    model = fresh_model(x_train.shape[-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    n = len(x_train)
    clock = Clock().__enter__()
    for _ in range(epochs):
        model.train()
        total_loss, correct = 0.0, 0
        order = torch.randperm(n)
        for i in range(0, n, batch_size):
            index = order[i:i + batch_size]
            xb, yb = x_train[index], y_train[index]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
        model.eval()
        val_loss, val_correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(x_test), batch_size):
                out = model(x_test[i:i + batch_size])
                val_loss += F.cross_entropy(out, y_test[i:i + batch_size], reduction="sum").item()
                val_correct += (out.argmax(1) == y_test[i:i + batch_size]).sum().item()
    clock.__exit__()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return clock.timing, accuracy


def load_keras_seed() -> Any:
    spec = importlib.util.spec_from_file_location("keras_seed", ROOT / "examples" / "keras_seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_keras(data: Data, epochs: int, batch_size: int) -> tuple[Timing, float]:
    """The seed Keras code (examples/keras_seed.py): channels-last images, one-hot targets."""
    import keras

    seed = load_keras_seed()
    x_train, y_train, x_test, y_test = data
    x_train, x_test = x_train.transpose(0, 2, 3, 1), x_test.transpose(0, 2, 3, 1)
    y_train_onehot, y_test_onehot = np.eye(10, dtype=np.float32)[y_train], np.eye(10, dtype=np.float32)[y_test]
    keras.utils.set_random_seed(0)
    model = seed.build_model()
    with Clock() as clock:
        model.fit(x_train, y_train_onehot, epochs=epochs, batch_size=batch_size,
                  validation_data=(x_test, y_test_onehot), verbose=0)
    _, accuracy = model.evaluate(x_test, y_test_onehot, verbose=0)
    return clock.timing, float(accuracy)


def compare(runners: dict[str, Runner], data: Data, *, epochs: int, batch_size: int, rounds: int) -> None:
    names = list(runners)
    for name in names:  # warm-up: first-use imports and allocator growth, not timed
        runners[name](data, 1, batch_size)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    accuracy: dict[str, float] = {}
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            (wall_s, cpu_s), accuracy[name] = runners[name](data, epochs, batch_size)
            wall[name].append(wall_s / epochs)
            cpu[name].append(cpu_s / epochs)
    base_wall, base_cpu = statistics.median(wall["plain loop"]), statistics.median(cpu["plain loop"])
    print(f"  {'runner':<16}{'wall s/ep':>10}{'vs plain':>10}{'cpu s/ep':>10}{'vs plain':>10}{'test acc':>10}"
          f"   wall min..max (median of {rounds} rounds)")
    for name in names:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"  {name:<16}{w:>10.4f}{w / base_wall:>9.3f}x{c:>10.4f}{c / base_cpu:>9.3f}x"
              f"{accuracy[name]:>10.4f}   {min(wall[name]):.4f}..{max(wall[name]):.4f}")
    if "keras fit" in wall:
        by_wall = statistics.median(wall["keras fit"]) / statistics.median(wall["kaon fit"])
        by_cpu = statistics.median(cpu["keras fit"]) / statistics.median(cpu["kaon fit"])
        print(f"  kaon fit vs keras fit: {by_wall:.2f}x faster (wall), {by_cpu:.2f}x (cpu)")


def load_mnist(num_train: int = 8000, num_test: int = 2000) -> Data:
    with gzip.open(MNIST_DIR / "t10k-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16)
    with gzip.open(MNIST_DIR / "t10k-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    x = (images.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    y = labels.astype(np.int64)
    return x[:num_train], y[:num_train], x[num_train:num_train + num_test], y[num_train:num_train + num_test]


def bench_mnist(epochs: int, batch_size: int) -> None:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        print(f"MNIST: skipped, no data in {MNIST_DIR} (set KAON_MNIST_DIR)")
        return
    data = load_mnist()
    (seconds, _), accuracy = run_kaon(data, epochs, batch_size)
    verdict = "meets" if accuracy >= 0.97 else "MISSES"
    print(f"MNIST 8k/2k, DigitsCNN(image_size=28), {epochs} epochs, batch {batch_size}, "
          f"{torch.get_num_threads()} threads: test accuracy {accuracy:.4f} ({verdict} the 0.97 goal), "
          f"{seconds / epochs:.2f} s/epoch")


class EpochClock(Callback):
    """Wall seconds of each epoch (training, validation and accounting), without fit's setup."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def bench_privacy(data: Data, epochs: int, batch_size: int) -> None:
    """Per-epoch cost of DP-SGD (median epoch) and the one-off setup (noise calibration, hooks)."""
    x_train, y_train, x_test, y_test = data
    base = None
    for label, privacy in [("non-private", None), ("dp ghost", DifferentialPrivacy(8.0, mode="ghost")),
                           ("dp standard", DifferentialPrivacy(8.0, mode="standard"))]:
        Trainer(fresh_model(), lr=1e-2, seed=0, privacy=privacy, track=False).fit(  # warm-up
            x_train, y_train, epochs=1, batch_size=batch_size, verbose=False)
        trainer = Trainer(fresh_model(), lr=1e-2, seed=0, privacy=privacy, track=False)
        clock = EpochClock()
        start = time.perf_counter()
        history = trainer.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=False,
                              callbacks=[clock])
        setup = time.perf_counter() - start - sum(clock.seconds)
        per_epoch = statistics.median(clock.seconds)
        base = base or per_epoch
        accuracy = trainer.evaluate(x_test, y_test)["accuracy"]
        eps = f"epsilon {history.epsilon:.2f}" if history.epsilon is not None else ""
        print(f"  {label:<14}{per_epoch:>8.4f} s/epoch {per_epoch / base:>6.2f}x   setup {setup:5.2f} s   "
              f"test acc {accuracy:.4f}  {eps}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--mnist-epochs", type=int, default=6)
    parser.add_argument("--skip-keras", action="store_true")
    parser.add_argument("--skip-mnist", action="store_true")
    parser.add_argument("--skip-privacy", action="store_true")
    args = parser.parse_args()

    digits = load_digits()
    runners: dict[str, Runner] = {"plain loop": run_plain, "kaon fit": run_kaon,
                                  "kaon fit+track": lambda d, e, b: run_kaon(d, e, b, track=True)}
    if not args.skip_keras:
        runners["keras fit"] = run_keras
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; digits {len(digits[0])}/{len(digits[2])}, "
          f"DigitsCNN, {args.epochs} epochs, batch {args.batch_size}, validation every epoch")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s):")
        compare(runners, digits, epochs=args.epochs, batch_size=args.batch_size, rounds=args.rounds)
    if not args.skip_privacy:
        torch.set_num_threads(1)
        print("\ndifferential privacy on digits (1 thread, batch 64, 5 epochs):")
        bench_privacy(digits, 5, 64)
    if not args.skip_mnist:
        torch.set_num_threads(max(int(t) for t in args.threads.split(",")))
        print()
        bench_mnist(args.mnist_epochs, 32)


if __name__ == "__main__":
    main()
