"""Models: loaded artifacts with a runtime and a Signature (onnxruntime, torch.export, Keras on torch)."""

from kaon.models.loader import load_file, load_folder, sniff_format
from kaon.models.model import Model
from kaon.models.save import SavedModel, save_model

__all__ = ["Model", "SavedModel", "load_file", "load_folder", "save_model", "sniff_format"]
