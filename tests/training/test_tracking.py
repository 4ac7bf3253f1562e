"""fit records a Run in the registry: params, per-epoch metrics, the curves PNG, and failures."""

from __future__ import annotations

import pytest

from kaon.errors import TrainingError
from kaon.training import Callback, Trainer
from kaon.training._tracking import _registry_class

from .conftest import make_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def registry():
    return _registry_class()()


def test_fit_records_a_completed_run_with_params_metrics_and_curves(small):
    x_train, y_train, x_test, y_test = small
    history = Trainer(make_model(), seed=5, run_name="digits-cnn").fit(
        x_train, y_train, epochs=3, batch_size=50, validation_data=(x_test, y_test), verbose=False)
    reg = registry()
    run = reg.get_run(history.run_id)
    assert run.name == "digits-cnn" and run.kind == "train" and run.status == "completed"
    assert run.params["optimizer"] == "adam" and run.params["lr"] == 1e-3
    assert run.params["epochs"] == 3 and run.params["batch_size"] == 50 and run.params["seed"] == 5
    assert run.params["model_class"] == "DigitsCNN"
    assert run.params["num_params"] == sum(p.numel() for p in make_model().parameters())
    metrics = reg.metric_history(history.run_id)
    assert set(metrics) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert [step for step, _ in metrics["val_loss"]] == [0, 1, 2]
    assert [value for _, value in metrics["loss"]] == pytest.approx(history.history["loss"])
    assert run.summary["epochs_completed"] == 3
    assert run.summary["val_accuracy"] == pytest.approx(history.history["val_accuracy"][-1])
    artifacts = reg.run_artifacts(history.run_id)
    assert list(artifacts) == ["curves.png"]
    assert reg.artifact_path(artifacts["curves.png"]).read_bytes()[:8] == PNG_MAGIC


def test_a_failed_fit_marks_the_run_failed_with_the_error_and_reraises(small):
    x_train, y_train, _, _ = small

    class Broken(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                raise RuntimeError("disk full")

    with pytest.raises(TrainingError, match="callback Broken") as info:
        Trainer(make_model()).fit(x_train, y_train, epochs=4, callbacks=[Broken()], verbose=False)
    run_id = info.value.history.run_id  # type: ignore[attr-defined]
    reg = registry()
    run = reg.get_run(run_id)
    assert run.status == "failed"
    assert "callback Broken raised RuntimeError" in run.summary["error"]
    assert [step for step, _ in reg.metric_history(run_id)["loss"]] == [0]
    assert "curves.png" in reg.run_artifacts(run_id)


def test_training_goes_on_when_the_registry_is_broken(small, monkeypatch):
    x_train, y_train, _, _ = small

    def broken():
        raise OSError("database is locked")

    monkeypatch.setattr("kaon.training._tracking._registry_class", broken)
    with pytest.warns(RuntimeWarning, match="training goes on without tracking"):
        history = Trainer(make_model()).fit(x_train, y_train, epochs=1, verbose=False)
    assert history.run_id is None and len(history.epoch) == 1


def test_track_false_writes_no_run(small):
    x_train, y_train, _, _ = small
    Trainer(make_model(), track=False).fit(x_train, y_train, verbose=False)
    assert registry().list_runs() == []


def test_ctrl_c_marks_the_run_interrupted_not_failed(small):
    x_train, y_train, _, _ = small

    class CtrlC(Callback):  # what a real Ctrl-C raises in the middle of an epoch
        def on_train_batch_end(self, batch, logs):
            if batch == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        Trainer(make_model()).fit(x_train, y_train, epochs=2, callbacks=[CtrlC()], verbose=False)
    run = registry().get_run(info.value.history.run_id)  # type: ignore[attr-defined]
    assert run.status == "interrupted" and run.summary["error"].startswith("KeyboardInterrupt")


def interrupt_in_epoch_2(x_train, y_train):
    """Ctrl-C in the second epoch: one epoch of curves, and the run is finished as interrupted."""

    class CtrlC(Callback):
        def on_epoch_begin(self, epoch, logs):
            if epoch == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        Trainer(make_model()).fit(x_train, y_train, epochs=3, batch_size=100, callbacks=[CtrlC()], verbose=False)
    return info.value


def test_a_second_ctrl_c_while_the_curves_are_plotted_keeps_the_interrupted_status(small, monkeypatch):
    """The curves (about 1.5 s: matplotlib's import) were drawn before the status was written, so a second Ctrl-C
    left the run 'running', later read as crashed ('killed (SIGKILL, out of memory)'), without its summary."""
    x_train, y_train, _, _ = small

    def second_ctrl_c(history, path):
        raise KeyboardInterrupt

    monkeypatch.setattr("kaon.training.plots.plot_history", second_ctrl_c)
    error = interrupt_in_epoch_2(x_train, y_train)
    reg = registry()
    run = reg.get_run(error.history.run_id)  # type: ignore[attr-defined]  # the first Ctrl-C's, with the history
    assert run.status == "interrupted"
    assert run.summary["epochs_completed"] == 1 and "loss" in run.summary
    assert run.summary["error"].startswith("KeyboardInterrupt")
    assert "curves.png" not in reg.run_artifacts(run.id)  # skipped: the user asked to stop


def test_a_ctrl_c_while_the_status_is_written_is_held_until_it_is_written(small, monkeypatch):
    import signal

    from kaon.registry import Registry

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is handled by someone else here")
    x_train, y_train, _, _ = small
    finish_run = Registry.finish_run

    def pressed_meanwhile(self, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # would abort the write without the hold
        return finish_run(self, *args, **kwargs)

    monkeypatch.setattr(Registry, "finish_run", pressed_meanwhile)
    error = interrupt_in_epoch_2(x_train, y_train)
    run = registry().get_run(error.history.run_id)  # type: ignore[attr-defined]
    assert run.status == "interrupted" and run.summary["epochs_completed"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back

    # a completed fit: the status is written, then the Ctrl-C pressed meanwhile stops the program
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_model(), run_name="completed").fit(x_train, y_train, epochs=1, batch_size=100, verbose=False)
    run = next(r for r in registry().list_runs() if r.name == "completed")
    assert run.status == "completed" and run.summary["epochs_completed"] == 1


def test_curves_that_cannot_be_drawn_leave_the_run_finished(small, monkeypatch):
    x_train, y_train, _, _ = small

    def broken(history, path):
        raise OSError("no space left on device")

    monkeypatch.setattr("kaon.training.plots.plot_history", broken)
    with pytest.warns(RuntimeWarning, match="could not add the training curves.*no space left"):
        history = Trainer(make_model()).fit(x_train, y_train, epochs=1, batch_size=100, verbose=False)
    run = registry().get_run(history.run_id)
    assert run.status == "completed" and run.summary["epochs_completed"] == 1


KILLED_FIT = """
import os, signal, time
import numpy as np
from sklearn.datasets import load_digits
from kaon.training import Callback, Trainer
from kaon.training.models import DigitsCNN

digits = load_digits()
x = (digits.images[:200] / 16.0).astype("float32")[:, None]
y = digits.target[:200]

class OutOfMemory(Callback):  # what the kernel's OOM killer does: SIGKILL, no chance to finish the run
    def on_epoch_end(self, epoch, logs):
        if epoch == 0:
            time.sleep(1.1)  # metrics are written at most once a second: epoch 0's is written
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)

Trainer(DigitsCNN(), run_name="killed").fit(x, y, epochs=5, batch_size=50, callbacks=[OutOfMemory()],
                                            verbose=False)
"""


def test_a_fit_killed_with_sigkill_reads_as_crashed_with_its_metrics_kept(tmp_path):
    """A SIGKILLed (e.g. out-of-memory) fit cannot mark its run; it stayed 'running' forever."""
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "killed.py"
    script.write_text(KILLED_FIT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy())
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    reg = registry()
    run = next(r for r in reg.list_runs() if r.name == "killed")
    assert run.status == "crashed", run
    assert f"pid {run.owner.split(':')[1]}" in run.summary["error"] and "killed" in run.summary["error"]
    assert run.finished_at is not None
    assert reg.get_run(run.id).status == "crashed"  # stored, not only shown
    assert [step for step, _ in reg.metric_history(run.id)["loss"]] == [0]  # what it wrote is kept
    cli = subprocess.run([sys.executable, "-m", "kaon.cli", "runs", "list"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert "│ crashed │" in cli.stdout and "│ running │" not in cli.stdout, cli.stdout
