from __future__ import annotations

from kaon.training import History, plot_history


def test_plot_history_writes_a_png_with_train_and_validation_curves(tmp_path):
    history = History()
    for epoch, (loss, val_loss) in enumerate([(1.0, 1.2), (0.6, 0.8), (0.4, 0.7)]):
        history.on_epoch_end(epoch, {"loss": loss, "accuracy": 1 - loss, "val_loss": val_loss,
                                     "val_accuracy": 1 - val_loss, "lr": 0.001})
    path = plot_history(history, tmp_path / "out" / "curves.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert path.stat().st_size > 5_000


def test_plot_history_accepts_a_plain_dict(tmp_path):
    assert plot_history({"loss": [0.3]}, tmp_path / "c.png").exists()
