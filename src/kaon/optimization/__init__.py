"""kaon.optimization: make a model fast and small within an accuracy budget (ONNX, int8, pruning, fp16)."""

from kaon.optimization.choose import Choice, Score, choose_variant
from kaon.optimization.export import ExportResult, Parity, UnexportableModelError, compare_outputs, export_onnx
from kaon.optimization.optimize import METHODS, TARGETS, optimize, parse_methods
from kaon.optimization.plan import GroupTiming, QuantizationPlan, plan_quantization
from kaon.optimization.quantize import OpGroup, op_groups, prepare, quantize_model
from kaon.optimization.report import OptimizationReport, Variant
from kaon.optimization.samples import Samples, attach_samples, find_samples, read_samples

__all__ = [
    "METHODS",
    "TARGETS",
    "Choice",
    "ExportResult",
    "GroupTiming",
    "OpGroup",
    "OptimizationReport",
    "Parity",
    "QuantizationPlan",
    "Samples",
    "Score",
    "UnexportableModelError",
    "Variant",
    "attach_samples",
    "choose_variant",
    "compare_outputs",
    "export_onnx",
    "find_samples",
    "op_groups",
    "optimize",
    "parse_methods",
    "plan_quantization",
    "prepare",
    "quantize_model",
    "read_samples",
]
