"""`kaon quickstart`: the whole workflow on the bundled digits, in one command.

train (progress bar, curves) -> evaluate -> register as `digits` -> serve on 127.0.0.1 until Ctrl-C.
KAON_HOME decides where the registry lives, so runs with different homes never mix.
"""

from __future__ import annotations

import time

import typer
from rich.rule import Rule

from kaon.cli.app import app, fill_width, handles_errors, make_console
from kaon.config import ServeConfig, kaon_home

console = make_console()


@app.command()
@handles_errors
def quickstart(
    port: int = typer.Option(8000, help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    epochs: int = typer.Option(12, min=1, help="Training epochs."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the model after registering it."),
    seed: int = typer.Option(0, help="Seed for a reproducible run."),
) -> None:
    """Train a CNN on the bundled digits, register it and serve it: kaon end to end."""
    import numpy as np
    import torch

    from kaon.sdk import register
    from kaon.training import Trainer, plot_history
    from kaon.training.data import load_digits
    from kaon.training.models import DigitsCNN
    from kaon.types import Signature, TensorSpec

    config = None
    if serve:  # bad serving flags, or a taken port, fail now rather than after training
        from kaon.serving.workers import bind_listener

        config = ServeConfig.from_env(host=host, port=port, name="digits")
        bind_listener(config.host, config.port).close()
    started = time.perf_counter()
    home = kaon_home()
    console.print(Rule("[bold]kaon quickstart"), width=fill_width(console))
    console.print(f"KAON_HOME: {home}")

    console.print("[bold]1. train[/] a CNN on scikit-learn's bundled digits (8x8, 10 classes)")
    x_train, y_train, x_test, y_test = load_digits(seed=seed)
    torch.manual_seed(seed)  # the starting weights too: the same --seed gives the same run
    model = DigitsCNN()
    trainer = Trainer(model, optimizer="adam", loss="cross_entropy", metrics=["accuracy"], lr=3e-3, seed=seed,
                      run_name="quickstart-digits")
    history = trainer.fit(x_train, y_train, epochs=epochs, batch_size=32, validation_data=(x_test, y_test))
    curves = home / "quickstart" / "curves.png"
    plot_history(history, curves)

    console.print("[bold]2. evaluate[/] on the held-out digits")
    scores = trainer.evaluate(x_test, y_test)
    console.print(f"   test accuracy {scores['accuracy']:.3f}, loss {scores['loss']:.3f}")

    console.print("[bold]3. register[/] it as 'digits' (torch.export program, sha256-checked), with the "
                  "training digits' statistics for drift monitoring (reference.npz)")
    served = torch.nn.Sequential(model.eval(), torch.nn.Softmax(dim=1))
    signature = Signature([TensorSpec("image", "float32", (-1, 1, 8, 8))],
                          [TensorSpec("probabilities", "float32", (-1, 10))])
    version = register(served, "digits", input_example=x_test[:2], signature=signature,
                       metrics={"test_accuracy": float(scores["accuracy"]), "test_loss": float(scores["loss"])},
                       run_id=history.run_id if isinstance(history.run_id, int) else None, reference_data=x_train,
                       description="kaon quickstart: DigitsCNN on sklearn digits")
    console.print(f"   registered {version.ref} (run {history.run_id}); curves: {curves}")

    console.print("[bold]4. explain[/] one prediction with integrated gradients")
    from kaon.explanation import explain

    explanation = explain(version.ref, x_test[:1], method="integrated_gradients", heatmap=True)
    heatmap = home / "quickstart" / "explanation.png"
    heatmap.write_bytes((explanation.heatmaps or [b""])[0])
    (row, col), weight = _pixel(explanation.top_features(1)[0][0])
    console.print(f"   predicted {int(explanation.targets[0])}; the pixel that mattered most is row {row}, "
                  f"column {col} (attribution {weight:+.3f}); heatmap: {heatmap}")

    console.print("[bold]5. audit[/] robustness and calibration")
    from kaon.robustness import audit

    report = audit(version.ref, (x_test, y_test), epsilons=(0.05, 0.1), pgd_steps=5)
    console.print(f"   {report.summary()}")

    console.print("[bold]6. optimize[/] it: ONNX, int8 where it pays on this CPU, pruning; within 0.5 accuracy points")
    from kaon.optimization import attach_samples, optimize

    attach_samples(version.ref, x_test, y_test, x_train=x_train, y_train=y_train)
    optimized = optimize(version.ref, max_accuracy_drop=0.5, methods="onnx,int8-dynamic,prune-structured",
                         num_rounds=3)
    console.print(f"   {optimized.before_after()}")
    served_ref = optimized.registered or version.ref
    sample = np.asarray(x_test[:1]).tolist()
    elapsed = time.perf_counter() - started
    console.print(f"   done in {elapsed:.1f} s. Inspect: kaon models show digits   kaon runs show {history.run_id}")
    if config is None:
        return

    console.print(f"[bold]7. serve[/] {served_ref} (the V2 routes answer at /v2/models/digits)\n")
    from kaon.serving import serve as run
    from kaon.serving.targets import resolve_target

    console.print(f"   a real digit to send: curl -s -X POST http://{host}:{port}/predict "
                  f"-H 'content-type: application/json' -d '{{\"inputs\": {_round(sample)}}}'\n", soft_wrap=True)
    run(resolve_target(served_ref, name="digits"), config)


def _pixel(feature: tuple[tuple[int, ...], float]) -> tuple[tuple[int, int], float]:
    index, weight = feature  # index within one (1, 8, 8) image
    return (int(index[-2]), int(index[-1])), float(weight)


def _round(value: object) -> object:
    if isinstance(value, list):
        return [_round(v) for v in value]
    return round(float(value), 2)  # type: ignore[arg-type]
