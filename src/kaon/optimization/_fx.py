"""Make a loaded torch.export program editable again: real nn.Conv2d/nn.Linear/norm modules, train mode.

A `.pt2` program's `.module()` calls `aten.conv2d(x, weight, bias)` with the weights as plain
attributes, and refuses `.train()`. Pruning tools find layers by module type and fine-tuning needs
train mode, so each such call becomes a call to the matching `nn` module holding the same tensors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

aten = torch.ops.aten
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def editable_module(source: Any) -> nn.Module:
    """A trainable nn.Module computing what `source` (an ExportedProgram or nn.Module) computes."""
    if isinstance(source, torch.export.ExportedProgram):
        module = source.module()
        for name in ("train", "eval"):  # export replaces these with stubs that raise
            module.__dict__.pop(name, None)
        _to_modules(module)
        return module
    return copy.deepcopy(source)


def _to_modules(gm: fx.GraphModule) -> None:
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        built = _module_for(gm, node)
        if built is None:
            continue
        path, module, call_input = built
        _set_submodule(gm, path, module)
        with graph.inserting_before(node):
            call = graph.call_module(path, (call_input,))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()


def _module_for(gm: fx.GraphModule, node: fx.Node) -> tuple[str, nn.Module, fx.Node] | None:
    """(owner path, module, input node) for a conv/linear/norm call whose tensors one plain module owns."""
    target, args = node.target, list[Any](node.args)
    if target in (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default):
        tensors = _attrs(gm, args[1:3])
        if tensors is None:
            return None
        path, (weight, bias) = tensors
        stride, padding, dilation, groups = (args + [None] * 7)[3:7]
        cls: Any = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[weight.dim() - 2]
        module: nn.Module = cls(weight.shape[1] * (groups or 1), weight.shape[0], tuple(weight.shape[2:]),
                                stride=stride or 1, padding=padding or 0, dilation=dilation or 1,
                                groups=groups or 1, bias=bias is not None)
        names = {"weight": weight, "bias": bias}
    elif target == aten.linear.default:
        tensors = _attrs(gm, args[1:3])
        if tensors is None:
            return None
        path, (weight, bias) = tensors
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        names = {"weight": weight, "bias": bias}
    elif target == aten.layer_norm.default:
        tensors = _attrs(gm, (args + [None] * 5)[2:4])
        if tensors is None:
            return None
        path, (weight, bias) = tensors
        eps = (args + [None] * 5)[4]
        module = nn.LayerNorm(list(args[1]), eps=eps if eps is not None else 1e-5,
                              elementwise_affine=weight is not None, bias=bias is not None)
        names = {"weight": weight, "bias": bias}
    elif target == aten.batch_norm.default and not args[5]:  # training=False: running statistics
        tensors = _attrs(gm, args[1:5])
        value = node.meta.get("val")
        if tensors is None or value is None:
            return None
        path, (weight, bias, mean, var) = tensors
        cls_bn = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(value.dim())
        if cls_bn is None or mean is None:
            return None
        module = cls_bn(mean.shape[0], eps=args[7], momentum=args[6], affine=weight is not None)
        names = {"weight": weight, "bias": bias, "running_mean": mean, "running_var": var}
        owner = gm.get_submodule(path)
        if hasattr(owner, "num_batches_tracked"):
            names["num_batches_tracked"] = owner.num_batches_tracked
    else:
        return None
    owner = gm.get_submodule(path)
    owned = {n for n, _ in owner.named_parameters(recurse=False)} | {n for n, _ in owner.named_buffers(recurse=False)}
    if type(owner) is not nn.Module or list(owner.children()) or not owned <= {k for k, v in names.items()
                                                                                if v is not None}:
        return None  # the owner is a real module already, or holds more than this call uses
    for name, tensor in names.items():
        if tensor is None:
            continue
        if isinstance(tensor, nn.Parameter):
            setattr(module, name, tensor)
        else:
            module.register_buffer(name, tensor)
    return path, module, args[0]


def _attrs(gm: fx.GraphModule, nodes: list[Any]) -> tuple[str, list[Any]] | None:
    """The owner path and tensors of get_attr nodes (None stays None), if one module owns them all."""
    owners: set[str] = set()
    tensors: list[Any] = []
    for node in nodes:
        if node is None:
            tensors.append(None)
            continue
        if not isinstance(node, fx.Node) or node.op != "get_attr" or len(node.users) != 1:
            return None
        owner, _, leaf = str(node.target).rpartition(".")
        owners.add(owner)
        tensors.append(getattr(gm.get_submodule(owner), leaf))
    if len(owners) != 1 or "" in owners:
        return None
    return owners.pop(), tensors


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, leaf, module)
