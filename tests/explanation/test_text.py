"""Text models: token attributions, attention maps and rollout on the packaged all-MiniLM-L6-v2 (offline),
and a small sequence classifier built from a config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kaon.explanation as ke
from kaon.errors import InvalidInputError

TEXTS = ["the movie was wonderful", "a terrible, boring film about cats"]


def test_integrated_gradients_scores_each_token_and_adds_up(minilm):
    exp = ke.explain(minilm, TEXTS, method="integrated_gradients")
    assert [t[0] for t in exp.tokens] == ["[CLS]", "[CLS]"] and exp.tokens[0][-1] == "[SEP]"
    assert exp.attributions.shape == (2, max(len(t) for t in exp.tokens))
    assert np.all(exp.attributions[0, len(exp.tokens[0]):] == 0)  # padding scores nothing
    assert exp.top_tokens(1)[0][0][0] in {"wonderful", "movie"}
    # completeness: the token scores add up to the distance from the empty sentence, 1 - cos(x, [PAD]...)
    with torch.no_grad():
        enc = minilm.encode(TEXTS)
        special = torch.isin(enc["input_ids"], torch.tensor(minilm.tokenizer.all_special_ids))
        empty_ids = torch.where(special | (enc["attention_mask"] == 0), enc["input_ids"], 0)
        empty = minilm.sentence_embedding(minilm.run({**enc, "input_ids": empty_ids}), enc["attention_mask"])
        distance = 1 - (minilm.embed(TEXTS) * empty).sum(-1)
    np.testing.assert_allclose(exp.attributions.sum(1), distance.numpy(), atol=0.05)


def test_a_reference_text_explains_the_similarity_to_it(minilm):
    exp = ke.explain(minilm, TEXTS[1], method="integrated_gradients", target="cats and dogs")
    assert exp.targets == ["cats and dogs"]
    assert exp.top_tokens(1)[0][0][0] == "cats"
    page = exp.to_html()
    assert page.startswith("<!doctype html>") and ">cats</span>" in page and "similarity to" in page


@pytest.mark.parametrize("method", ["saliency", "occlusion"])
def test_saliency_and_occlusion_find_the_content_words(minilm, method):
    exp = ke.explain(minilm, TEXTS, method=method)
    top = {token for token, _ in exp.top_tokens(3)[0]}
    assert "wonderful" in top and "movie" in top


def test_attention_maps_per_layer_and_head_and_rollout(minilm):
    exp = ke.explain(minilm, TEXTS, method="attention")
    n, layers, heads, t, _ = exp.attentions.shape
    assert (n, layers, heads) == (2, 6, 12) and t == exp.attributions.shape[1]
    np.testing.assert_allclose(exp.attentions.sum(-1)[0, :, :, : len(exp.tokens[0])], 1.0, atol=1e-4)
    rollout = ke.explain(minilm, TEXTS, method="attention_rollout")
    assert rollout.attributions.shape == exp.attributions.shape
    np.testing.assert_allclose(rollout.attributions.sum(1), 1.0, atol=1e-4)  # a distribution over tokens


def test_attention_rollout_composes_layers_with_the_residual():
    maps = torch.softmax(torch.randn(1, 3, 2, 4, 4), dim=-1)
    rollout = ke.attention_rollout(maps)
    expected = torch.eye(4)
    for layer in range(3):
        a = 0.5 * torch.eye(4) + 0.5 * maps[0, layer].mean(0)
        expected = (a / a.sum(-1, keepdim=True)) @ expected
    torch.testing.assert_close(rollout[0], expected)
    identity = ke.attention_rollout(maps, residual=1.0)
    torch.testing.assert_close(identity[0], torch.eye(4))


def test_text_models_refuse_methods_they_cannot_run_and_bad_inputs(minilm):
    with pytest.raises(InvalidInputError, match="integrated_gradients, saliency, occlusion, attention"):
        ke.explain(minilm, TEXTS, method="kernel_shap")
    with pytest.raises(InvalidInputError, match="non-empty string"):
        ke.explain(minilm, [""], method="saliency")
    with pytest.raises(InvalidInputError, match="sentence encoder"):
        ke.explain(minilm, TEXTS, target=3)


def test_a_sequence_classifier_explains_its_classes(minilm_path, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                        label2id={"neg": 0, "neu": 1, "pos": 2})
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(minilm_path), local_files_only=True).save_pretrained(tmp_path)
    model = ke.TextModel.load(tmp_path)
    assert model.is_classifier and model.labels == ["neg", "neu", "pos"]
    exp = ke.explain(model, TEXTS, method="integrated_gradients", target=2)
    assert exp.targets == [2, 2] and exp.predictions.shape == (2, 3) and exp.label_of(2) == "pos"
    with torch.no_grad():
        enc = model.encode(TEXTS)
        logits = model.model(**enc).logits[:, 2]
        special = torch.isin(enc["input_ids"], torch.tensor(model.tokenizer.all_special_ids))
        baseline = model.model(**{**enc, "input_ids": torch.where(special, enc["input_ids"], 0)}).logits[:, 2]
    np.testing.assert_allclose(exp.attributions.sum(1), (logits - baseline).numpy(), atol=2e-2)
    with pytest.raises(InvalidInputError, match=r"target 3 is out of range.*\[0, 2\]"):
        ke.explain(model, TEXTS, target=3)
    assert ke.explain(model, TEXTS, method="attention_rollout").attentions.shape[1:3] == (2, 2)
