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


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _top_k(row):
    return [(s["label"], s["score"]) for s in row["top_k"]]


def test_top_k_scores_of_a_logits_classifier_are_its_softmax_probabilities():
    """`--top-k` on a model that answers logits reported the logits as 'scores' (4.0, -1.0...)."""
    logits = np.array([[2.0, -1.0, 0.5, 4.0], [-4.0, 1.0, 1.5, 0.0]], dtype=np.float32)
    labels = ["a", "b", "c", "d"]
    rows = rows_to_predictions({"logits": logits}, labels, top_k=4)
    full = rows_to_predictions({"logits": logits}, labels)
    for row, probs, plain in zip(rows, _softmax(logits.astype(np.float64)), full, strict=True):
        order = np.argsort(-probs)
        assert _top_k(row) == [(labels[i], pytest.approx(probs[i], rel=1e-5)) for i in order]
        assert sum(score for _, score in _top_k(row)) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == plain["label"]  # the same class as /predict without top-k names
    two = rows_to_predictions({"logits": logits}, labels, top_k=2)
    assert [_top_k(r) for r in two] == [_top_k(r)[:2] for r in rows]  # the k best of the same distribution


def test_top_k_scores_of_a_probabilities_classifier_are_its_own_even_rounded_to_bf16():
    """Rows that already are distributions stay as they are; a softmax of them would flatten them. bf16 rounds a
    probability by up to 0.002, so such a row's sum can miss 1 by more than 1e-3."""
    import torch

    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(64, 10) * 4, dim=1).bfloat16().float().numpy()
    assert np.abs(probs.sum(axis=1) - 1).max() > 1e-3  # the case: rows off by more than 1e-3
    rows = rows_to_predictions({"probabilities": probs}, None, top_k=3)
    for row, p in zip(rows, probs, strict=True):
        order = np.argsort(-p, kind="stable")[:3]
        assert _top_k(row) == [(int(i), pytest.approx(float(p[i]))) for i in order]


def _served(model, top_k: int, inputs: list) -> list[dict]:
    import asyncio

    import orjson

    from kaon.config import ServeConfig
    from kaon.serving.app import KaonApp
    from kaon.serving.targets import resolve_target

    async def send() -> list[dict]:
        app = KaonApp(resolve_target(model, top_k=top_k), ServeConfig())
        await app.startup()
        try:
            answers = []
            for batch in inputs:
                answer = await app.answer("POST", "/predict", {"content-type": "application/json"},
                                          orjson.dumps({"inputs": batch}))
                assert answer is not None and answer.response.status == 200, answer
                answers += orjson.loads(answer.response.body)
            return answers
        finally:
            await app.shutdown()

    return asyncio.run(send())


class _Linear:
    """A numpy model answering x @ weights: logits, as most torch classifiers do."""

    @staticmethod
    def make(weights: np.ndarray, labels: list[str] | None, output: str = "logits"):
        from kaon.models import Model
        from kaon.types import Signature, TensorSpec

        class Linear(Model):
            framework = "numpy"

            def _run(self, inputs):
                return {output: inputs["x"] @ weights}

        signature = Signature([TensorSpec("x", "float32", (-1, weights.shape[0]))],
                              [TensorSpec(output, "float32", (-1, weights.shape[1]))], labels)
        return Linear(signature, "linear")


def test_a_served_logits_classifier_answers_top_k_probabilities_that_agree_with_predict():
    weights = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32) * 3
    labels = ["a", "b", "c", "d", "e"]
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32).round(3).tolist()
    plain = _served(_Linear.make(weights, labels), 0, [x])
    top = _served(_Linear.make(weights, labels), 3, [x])
    for row, full in zip(top, plain, strict=True):
        probs = _softmax(np.asarray(full["logits"], dtype=np.float64)[None])[0]
        order = np.argsort(-probs)[:3]
        assert row["label"] == full["label"]
        assert _top_k(row) == [(labels[i], pytest.approx(probs[i], rel=1e-4)) for i in order]
