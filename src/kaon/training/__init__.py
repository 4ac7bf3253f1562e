"""kaon.training: Keras-style fit for PyTorch models, with callbacks, privacy and run tracking."""

from kaon.training.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TensorBoard,
)
from kaon.training.history import History
from kaon.training.plots import plot_history
from kaon.training.privacy import DifferentialPrivacy
from kaon.training.trainer import Trainer

__all__ = [
    "CSVLogger",
    "Callback",
    "DifferentialPrivacy",
    "EarlyStopping",
    "History",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "TensorBoard",
    "Trainer",
    "plot_history",
]
