"""A served model's batched outputs become one JSON-ready row per input, the same for every kind of output."""

from __future__ import annotations

import numpy as np
import pytest

from kaon.serving.model_service import rows_to_predictions, stacked


def _by_index(outputs, labels):
    """Row i as the rule says: every output's i-th value, and for a classifier the best class's label (its
    index where the model has no name for it)."""
    names = list(outputs)
    classify = (len(names) == 1 and outputs[names[0]].ndim == 2 and outputs[names[0]].shape[1] > 1
                and (bool(labels) or "embedding" not in names[0]))
    rows = []
    for i in range(len(outputs[names[0]])):
        row = {n: outputs[n][i].tolist() for n in names}
        if classify:
            best = int(np.argmax(outputs[names[0]][i]))
            row["label"] = labels[best] if labels and best < len(labels) else best
        rows.append(row)
    return rows


@pytest.mark.parametrize(("outputs", "labels"), [
    ({"probabilities": np.random.default_rng(0).random((5, 4), dtype=np.float32)}, None),
    ({"probabilities": np.random.default_rng(1).random((5, 4), dtype=np.float32)}, ["a", "b", "c", "d"]),
    ({"scores": np.eye(4, dtype=np.float32)[[3, 0, 2]]}, ["only", "two"]),  # fewer names than classes
    ({"value": np.arange(6, dtype=np.float32).reshape(6, 1)}, None),  # one number: not a classifier
    ({"embedding": np.ones((2, 8), dtype=np.float32)}, None),
    ({"boxes": np.zeros((3, 4, 4)), "scores": np.ones((3, 4))}, ["x"]),  # several outputs
])
def test_each_row_holds_its_inputs_outputs_and_a_classifiers_label(outputs, labels):
    assert rows_to_predictions(outputs, labels) == _by_index(outputs, labels)


def test_stacked_is_np_stack_for_items_of_one_shape():
    for shape in [(), (3,), (1, 8, 8)]:
        items = list(np.random.default_rng(2).random((5, *shape)).astype(np.float32))
        got = stacked(items)
        assert got.dtype == np.float32 and got.flags.writeable
        np.testing.assert_array_equal(got, np.stack(items))
