"""`kaon.register(..., reference_data=x)`: drift reference statistics registered with the version."""

from __future__ import annotations

import numpy as np
import pytest

import kaon
from kaon.errors import InvalidInputError
from kaon.monitoring import REFERENCE_FILENAME, Reference


def small_net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 10), torch.nn.Softmax(dim=1)).eval()


def images(count: int) -> np.ndarray:
    return np.random.default_rng(0).random((count, 1, 8, 8), dtype=np.float32)


def test_register_with_reference_data_stores_reference_npz_with_the_version():
    from kaon.registry import Registry

    x = images(120)
    version = kaon.register(small_net(), "lin", input_example=x[:2], reference_data=x)
    assert set(version.files) == {"model.pt2", REFERENCE_FILENAME}
    with Registry() as registry:
        reference = Reference.load(registry.materialize(version) / REFERENCE_FILENAME)
    assert reference.num_samples == 120 and reference.input_shape == (1, 8, 8)
    assert reference.source == "penultimate" and reference.num_classes == 10
    assert REFERENCE_FILENAME not in kaon.register(small_net(), "lin", input_example=x[:2]).files


def test_reference_data_as_nested_lists_of_float64_is_cast_to_the_input_dtype():
    x = images(60).astype(np.float64).tolist()
    version = kaon.register(small_net(), "lin", input_example=images(2), reference_data=x)
    assert REFERENCE_FILENAME in version.files


@pytest.mark.parametrize(("reference_data", "expected"), [
    (images(10), r"at least 50 inputs.*Received: shape=\(10, 1, 8, 8\)"),
    (images(60)[:, 0], r"expects shape \(N, 1, 8, 8\) float32.*Received: shape=\(60, 8, 8\)"),
    (np.zeros(100, np.float32), r"at least 50 inputs, shape \(N, \.\.\.\).*Received: shape=\(100,\)"),
    (np.array([["a"] * 64] * 60), r"numeric batch.*dtype=<U1"),
    ([[1.0, 2.0], [3.0]], r"must be an array of inputs"),
])
def test_bad_reference_data_is_refused_before_any_version_is_written(reference_data, expected):
    from kaon.errors import NotFoundError
    from kaon.registry import Registry

    with pytest.raises(InvalidInputError, match=expected):
        kaon.register(small_net(), "lin", input_example=images(2), reference_data=reference_data)
    with Registry() as registry, pytest.raises(NotFoundError):
        registry.list_versions("lin")


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"aliases": ["prod uction"]}, r"alias must be"),  # wrote m@1, then refused: each retry added a version
    ({"aliases": ["latest"]}, r"kept by the registry"),
    ({"labels": ["a", "b"]}, r"labels names 2 classes but the model's output .* has 10 columns"),
])
def test_a_bad_alias_or_label_list_is_refused_before_any_version_is_written(kwargs, expected):
    from kaon.errors import NotFoundError
    from kaon.registry import Registry

    for _ in range(2):
        with pytest.raises(InvalidInputError, match=expected):
            kaon.register(small_net(), "strays", input_example=images(2), **kwargs)
    with Registry() as registry, pytest.raises(NotFoundError):
        registry.list_versions("strays")
    assert kaon.register(small_net(), "strays", input_example=images(2), labels=[str(i) for i in range(10)],
                         aliases=["production"]).version == 1
