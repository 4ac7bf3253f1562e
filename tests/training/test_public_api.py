"""The public surface of kaon.training, and what importing it does not pull in."""

from __future__ import annotations

import subprocess
import sys

import kaon.training


def test_public_names_are_pinned():
    assert sorted(kaon.training.__all__) == [
        "CSVLogger", "Callback", "DifferentialPrivacy", "EarlyStopping", "History", "ModelCheckpoint",
        "ReduceLROnPlateau", "TensorBoard", "Trainer", "plot_history",
    ]
    for name in kaon.training.__all__:
        assert getattr(kaon.training, name).__module__.startswith("kaon.training.")


def test_importing_training_loads_no_optional_dependency():
    optional = ["opacus", "matplotlib", "rich", "tensorboard", "keras", "sklearn", "kaon.registry"]
    code = f"import sys, kaon.training; print([m for m in {optional!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
