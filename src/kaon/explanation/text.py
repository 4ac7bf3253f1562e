"""Text models: a transformer with its tokenizer, explained per token.

    >>> model = TextModel.load("path/to/all-MiniLM-L6-v2")             # doctest: +SKIP
    >>> exp = kaon.explain(model, ["a wonderful film"], method="integrated_gradients")  # doctest: +SKIP
    >>> exp.top_tokens(2)                                              # doctest: +SKIP
    [[('wonderful', 0.31), ('film', 0.22)]]
    >>> Path("tokens.html").write_text(exp.to_html())                  # doctest: +SKIP

A sequence classifier (`...ForSequenceClassification`) explains a class, as an image classifier
does. An encoder (a sentence-embedding model such as MiniLM) explains a similarity: by default how
much each token moves the sentence's embedding away from that of an empty sentence (its tokens
replaced by [PAD]: 1 - cosine similarity); with `target="another text"`, how much each token makes
it similar to that text. Folders load offline (`local_files_only`): nothing is fetched from a model hub.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kaon.errors import InvalidInputError, ModelLoadError, require
from kaon.explanation import _gradients
from kaon.explanation._targets import Target, resolve_targets
from kaon.explanation.attention import attention_maps, attention_rollout, pooled_rows
from kaon.explanation.explanation import Explanation
from kaon.explanation.methods import TEXT_METHODS, check_method

_DEFAULT_TEXT_CHUNK_ROWS = 512  # path rows per forward pass: bounds memory for long texts


class TextModel:
    """A Hugging Face transformer and its tokenizer, with attention weights available."""

    framework = "transformers"

    def __init__(self, model: Any, tokenizer: Any, name: str = "text", max_length: int = 128,
                 device: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = max_length
        self.device = torch.device(device or "cpu")
        self.model.to(self.device).eval()
        architectures = getattr(model.config, "architectures", None) or []
        head = hasattr(model, "classifier") or any(a.endswith("ForSequenceClassification") for a in architectures)
        self.is_classifier = bool(head and hasattr(model.config, "num_labels") and hasattr(self.model, "classifier"))
        id2label = getattr(model.config, "id2label", None) or {}
        self.labels = [str(id2label[i]) for i in sorted(id2label)] if self.is_classifier and id2label else None

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None, max_length: int = 128,
             name: str | None = None) -> TextModel:
        """Load a transformer folder (config.json, weights, tokenizer files) without touching the network."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        transformers = require("transformers", "text", "Explaining a transformer text model")
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        folder = Path(path)
        if not (folder / "config.json").exists():
            raise ModelLoadError(f"'{folder}' is not a transformer folder: it has no config.json. Expected a folder "
                                 f"written by save_pretrained (config.json, model weights, tokenizer files).")
        try:
            config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
            classify = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
            auto = transformers.AutoModelForSequenceClassification if classify else transformers.AutoModel
            model = auto.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"'{folder}' could not be loaded as a transformer: {exc}") from exc
        return cls(model, tokenizer, name=name or folder.name, max_length=max_length, device=device)

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
        return {k: v.to(self.device) for k, v in enc.items()}

    def run(self, enc: dict[str, torch.Tensor], embeds: torch.Tensor | None = None, rows: int | None = None,
            output_attentions: bool = False) -> Any:
        """Run on token ids, or on `embeds` (B, T, D) whose rows repeat `enc`'s `rows // N` times."""
        extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        mask = enc["attention_mask"]
        if embeds is None:
            return self.model(input_ids=enc["input_ids"], attention_mask=mask, output_attentions=output_attentions,
                              **extra)
        repeat = (rows or embeds.shape[0]) // mask.shape[0]
        extra = {k: v.repeat(repeat, 1) for k, v in extra.items()}
        return self.model(inputs_embeds=embeds, attention_mask=mask.repeat(repeat, 1), **extra)

    def sentence_embedding(self, output: Any, mask: torch.Tensor) -> torch.Tensor:
        """Mean of the token states over the mask, L2-normalised (sentence-transformers' pooling)."""
        states = output.last_hidden_state  # (B, T, D)
        weights = mask.to(states.dtype).unsqueeze(-1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def embed(self, texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            enc = self.encode(texts)
            return self.sentence_embedding(self.run(enc), enc["attention_mask"])

    def __repr__(self) -> str:
        kind = "classifier" if self.is_classifier else "encoder"
        return f"<TextModel {self.name!r} ({type(self.model).__name__}, {kind})>"


def _texts(inputs: Any) -> list[str]:
    texts = [inputs] if isinstance(inputs, str) else list(inputs) if isinstance(inputs, list | tuple) else None
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise InvalidInputError(
            f"a text model explains a non-empty string or a list of them. Received: {inputs!r:.120}")
    return texts


def explain_text(tm: TextModel, inputs: Any, method: str | None, target: Target, *, n_steps: int = 50,
                 internal_batch_size: int | None = None) -> Explanation:
    """Token attributions (N, T) for a text model; see the module docstring."""
    method = check_method(method, list(TEXT_METHODS), tm.name, "is a text model, explained per token")
    texts = _texts(inputs)
    enc = tm.encode(texts)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    lengths = mask.sum(1).tolist()
    tokens = [tm.tokenizer.convert_ids_to_tokens(ids[i, : lengths[i]].tolist()) for i in range(len(texts))]
    with torch.no_grad():
        output = tm.run(enc, output_attentions=method in ("attention", "attention_rollout"))
    if method in ("attention", "attention_rollout"):
        maps = attention_maps(output.attentions)  # (N, L, H, T, T)
        flow = maps[:, -1].mean(dim=1) if method == "attention" else attention_rollout(maps, mask=mask)  # (N, T, T)
        scores = pooled_rows(flow, mask, cls=tm.is_classifier)
        return Explanation(
            attributions=(scores * mask).float().cpu().numpy(), targets=[0] * len(texts), method=method,
            tokens=tokens, attentions=maps.float().cpu().numpy(), labels=tm.labels)
    score, targets, predictions = _scorer(tm, enc, output, texts, target)
    embeddings = tm.model.get_input_embeddings()
    with torch.no_grad():
        x = embeddings(ids)  # (N, T, D)
        baseline = embeddings(_baseline_ids(tm, ids, mask))
    if method == "integrated_gradients":
        chunk = internal_batch_size or _DEFAULT_TEXT_CHUNK_ROWS
        per_dim = _gradients.integrated_gradients(score, x, baseline, n_steps, chunk)
        attributions = per_dim.sum(-1)  # (N, T)
    elif method == "saliency":
        leaf = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grads,) = torch.autograd.grad(score(leaf).sum(), leaf)
        attributions = grads.norm(dim=-1)
    else:
        attributions = _occlude_tokens(tm, enc, score, x)
    attributions = attributions * mask
    return Explanation(attributions=attributions.detach().float().cpu().numpy(), targets=targets, method=method,
                       predictions=predictions, tokens=tokens, labels=tm.labels)


def _scorer(tm: TextModel, enc: dict[str, torch.Tensor], output: Any, texts: list[str],
            target: Target) -> tuple[Any, list[Any], np.ndarray]:
    """The scalar per row to attribute, the targets it explains, and the predictions."""
    n = len(texts)
    mask = enc["attention_mask"]
    if tm.is_classifier:
        logits = output.logits
        predictions = torch.softmax(logits, -1).float().cpu().numpy()
        targets = resolve_targets(target, predictions, tm.name)
        index = torch.from_numpy(targets).to(tm.device)

        def classify(embeds: torch.Tensor) -> torch.Tensor:
            out = tm.run(enc, embeds, rows=embeds.shape[0]).logits
            return out.gather(1, index.repeat(embeds.shape[0] // n).view(-1, 1)).squeeze(1)

        return classify, targets.tolist(), predictions
    sign = 1.0
    if target is None:
        # Distance from an empty sentence: at the input itself a self-similarity would sit at its
        # maximum, where every gradient is zero and saliency says nothing.
        with torch.no_grad():
            reference = tm.sentence_embedding(tm.run({**enc, "input_ids": _baseline_ids(tm, enc["input_ids"], mask)}),
                                              mask)
        references: list[Any] = [None] * n
        sign = -1.0
    elif isinstance(target, str) or (isinstance(target, list | tuple) and all(isinstance(t, str) for t in target)):
        references = [target] * n if isinstance(target, str) else list(target)
        if len(references) != n:
            raise InvalidInputError(f"give one reference text per input ({n}). Received: {len(references)}")
        reference = tm.embed(references)
    else:
        raise InvalidInputError(
            f"model '{tm.name}' is a sentence encoder with no classes: target is None (explain how far each "
            f"sentence's embedding is from an empty one's) or a reference text to explain the similarity to. "
            f"Received: target={target!r}")
    reference = reference.detach()

    def similarity(embeds: torch.Tensor) -> torch.Tensor:
        repeat = embeds.shape[0] // n
        emb = tm.sentence_embedding(tm.run(enc, embeds, rows=embeds.shape[0]), mask.repeat(repeat, 1))
        cosine = (emb * reference.repeat(repeat, 1)).sum(-1)  # both are unit vectors
        return cosine if sign > 0 else 1.0 - cosine

    return similarity, references, tm.sentence_embedding(output, mask).float().cpu().numpy()


def _baseline_ids(tm: TextModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The input with every ordinary token replaced by [PAD]; [CLS], [SEP] and padding stay."""
    special = torch.tensor(tm.tokenizer.all_special_ids, device=ids.device)
    pad = tm.tokenizer.pad_token_id if tm.tokenizer.pad_token_id is not None else 0
    keep = torch.isin(ids, special) | (mask == 0)
    return torch.where(keep, ids, torch.full_like(ids, pad))


def _occlude_tokens(tm: TextModel, enc: dict[str, torch.Tensor], score: Any, x: torch.Tensor) -> torch.Tensor:
    """score(input) - score(input with token t replaced by [PAD]'s embedding), for every token t."""
    n, t, _ = x.shape
    pad_id = tm.tokenizer.pad_token_id if tm.tokenizer.pad_token_id is not None else 0
    pad = tm.model.get_input_embeddings()(torch.tensor([pad_id], device=x.device))[0]  # (D,)
    with torch.no_grad():
        full = score(x)  # (N,)
        variants = x.unsqueeze(0).repeat(t, 1, 1, 1)  # (T, N, T, D): variant j hides token j
        positions = torch.arange(t, device=x.device)
        variants[positions, :, positions, :] = pad
        hidden = score(variants.reshape(t * n, t, -1)).view(t, n)
    return (full.unsqueeze(0) - hidden).T  # (N, T)
