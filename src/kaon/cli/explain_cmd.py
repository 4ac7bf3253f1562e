"""`kaon explain MODEL_REF --input FILE`: attributions, a heatmap per input, the top features, trust scores.

    kaon explain digits@latest --input digit.png --method integrated_gradients --out explanation/
    kaon explain model.onnx --input batch.npy --method occlusion
    kaon explain path/to/minilm --input sentences.txt --method attention_rollout

Writes into --out: attributions.npy, heatmap_<i>.png (the attribution over input i; text models
write tokens.html instead) and explanation.json (targets, predictions, top features and, with
--trust, the deletion/insertion faithfulness and the model-randomization check).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from kaon.cli.app import app, handles_errors, make_console
from kaon.errors import InvalidInputError

console = make_console()
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_NPZ_KEYS = ("x", "inputs", "images", "x_test")


@app.command()
@handles_errors
def explain(
    model_ref: str = typer.Argument(..., help="name@alias | model.pt2 | model.onnx | a transformer folder"),
    input_file: Path = typer.Option(..., "--input", "-i", help=".npy | .npz | .png/.jpg | .txt (text: one per line)"),
    method: str = typer.Option(None, "--method", "-m",
                               help="saliency | integrated_gradients | occlusion | kernel_shap | lime | "
                                    "shap_gradient | shap_permutation (pip install 'kaon\\[shap]') | "
                                    "attention | attention_rollout  \\[default: integrated_gradients, "
                                    "occlusion for an ONNX model]"),
    target: int = typer.Option(None, help="Output index to explain. \\[default: the predicted class]"),
    reference: str = typer.Option(None, help="Text encoders: explain the similarity to this text."),
    out: Path = typer.Option(Path("explanation"), "--out", "-o", help="Folder for the arrays, PNGs and JSON."),
    top: int = typer.Option(5, min=1, help="How many top features to print per input."),
    n_steps: int = typer.Option(50, min=1, help="Integrated gradients: steps along the path."),
    trust: bool = typer.Option(True, "--trust/--no-trust",
                               help="Score faithfulness (deletion/insertion) and run the randomization check."),
) -> None:
    """Explain a model's predictions: attributions, heatmaps over the inputs, and the top features."""
    import numpy as np

    from kaon.explanation import TextModel
    from kaon.explanation import explain as run_explain
    from kaon.explanation.explainer import resolve_model

    model = resolve_model(model_ref)
    is_text = isinstance(model, TextModel)
    inputs = _read_text(input_file) if is_text else _read_array(input_file, model)
    chosen: Any = reference if (is_text and reference) else target
    exp = run_explain(model, inputs, method=method, target=chosen, heatmap=not is_text,  # type: ignore[arg-type]
                      n_steps=n_steps)
    if trust and not is_text:  # before any file is touched: a failure here leaves the earlier results as they were
        from kaon.explanation import trust as score_trust

        exp.trust = score_trust(model, exp)
    out.mkdir(parents=True, exist_ok=True)
    # an earlier run's files go first: its heatmap_3.png must not sit beside this run's one heatmap
    earlier = [p for p in (out / "attributions.npy", out / "tokens.html", out / "explanation.json",
                           *sorted(out.glob("heatmap_*.png"))) if p.is_file()
               and (not p.name.startswith("heatmap_") or p.stem.removeprefix("heatmap_").isdigit())]
    for path in earlier:
        path.unlink()
    np.save(out / "attributions.npy", exp.attributions)
    written = [out / "attributions.npy"]
    if is_text:
        (out / "tokens.html").write_text(exp.to_html())
        written.append(out / "tokens.html")
    for i, png in enumerate(exp.heatmaps or []):
        (out / f"heatmap_{i}.png").write_bytes(png)
        written.append(out / f"heatmap_{i}.png")
    report = {"model": model_ref, **exp.to_dict(), "top_features": _top(exp, top, is_text)}
    report.pop("attributions")  # in attributions.npy
    (out / "explanation.json").write_text(json.dumps(report, indent=2, default=str))
    written.append(out / "explanation.json")
    _print(exp, top, is_text)
    console.print(f"wrote {', '.join(str(p) for p in written)}", soft_wrap=True)
    if earlier:
        console.print(f"(replaced the earlier explanation in {out}/: {len(earlier)} files; --out DIR keeps both)",
                      soft_wrap=True)


def _top(exp: Any, k: int, is_text: bool) -> list[Any]:
    if is_text:
        return [[{"token": t, "attribution": v} for t, v in row] for row in exp.top_tokens(k)]
    return [[{"index": list(i), "attribution": v} for i, v in row] for row in exp.top_features(k)]


def _print(exp: Any, k: int, is_text: bool) -> None:
    from kaon._internal.scores import are_probabilities

    table = Table(title=f"Top features ({exp.method})")
    table.add_column("input", justify="right")
    table.add_column("explains")
    table.add_column("top features (index or token: attribution)")
    rows = exp.top_tokens(k) if is_text else exp.top_features(k)
    for i, row in enumerate(rows):
        target = exp.targets[i]
        explains = escape(exp.label_of(target))
        if exp.predictions is not None and isinstance(target, int) and exp.predictions.ndim == 2:
            value = float(exp.predictions[i, target])
            if exp.predictions.shape[1] == 1 and not exp.labels:  # a binary model's one score: "0" read as class 0
                explains = f"its one output ({value:.3f})"
            else:
                is_p = are_probabilities(exp.predictions[i])  # logits are not p
                explains += f" (p={value:.3f})" if is_p else f" (output {value:.3f})"
        cells = ", ".join(f"{escape(str(f if is_text else tuple(f)))}: {v:+.4f}" for f, v in row)
        table.add_row(str(i), explains, cells)
    console.print(table)
    faith = exp.trust.get("faithfulness") if exp.trust else None
    if faith:
        console.print(f"faithfulness {faith['faithfulness']:+.3f} (deletion AUC {faith['deletion_auc']:.3f}, "
                      f"insertion AUC {faith['insertion_auc']:.3f}; random order: {faith['random_deletion_auc']:.3f}"
                      f" / {faith['random_insertion_auc']:.3f})")
    check = exp.trust.get("randomization") if exp.trust else None
    if check and "passed" in check:
        verdict = "[green]passed[/]" if check["passed"] else "[red]FAILED[/]"
        console.print(f"randomization check {verdict}: rank correlation {check['rank_correlation']:+.3f} with "
                      f"randomized weights (must be < {check['max_correlation']})")
    elif check:
        console.print(f"randomization check skipped: {escape(check['skipped'])}")


def _read_text(path: Path) -> list[str]:
    if not path.exists():
        raise InvalidInputError(f"input file not found. Received: {str(path)!r}")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise InvalidInputError(f"'{path}' has no text; a text model explains one text per line.")
    return lines


def _read_array(path: Path, model: Any) -> Any:
    """An input batch from .npy, .npz or an image file, shaped for the model's one input."""
    from kaon._internal.arrays import load_arrays

    if not path.exists():
        raise InvalidInputError(f"input file not found. Received: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _as_batch(load_arrays(path, "the input file"), model)
    if suffix == ".npz":
        archive = load_arrays(path, "the input file")
        key = next((k for k in _NPZ_KEYS if k in archive), next(iter(archive), None))
        if key is None:
            raise InvalidInputError(f"'{path}' holds no arrays.")
        return _as_batch(archive[key], model)
    if suffix in _IMAGE_SUFFIXES:
        return _read_image(path, model)
    raise InvalidInputError(f"--input must be a .npy, .npz, .png or .jpg file (.txt for text models). "
                            f"Received: {str(path)!r}")


def _as_batch(x: Any, model: Any) -> Any:
    """`x` with the axes a server adds too: one sample gets the batch axis, (H, W) images the channel axis of a
    one-channel (N, 1, H, W) model. Anything else is left for the model's own shape check to word."""
    spec = model.signature.inputs[0] if hasattr(model, "signature") else None
    sample = tuple(spec.shape[1:]) if spec is not None else None
    if sample is None or not hasattr(x, "shape"):
        return x

    def fits(shape: tuple[int, ...], want: tuple[int, ...]) -> bool:
        return len(shape) == len(want) and all(w in (-1, g) for w, g in zip(want, shape, strict=True))

    if fits(x.shape, sample):
        console.print(f"one sample of shape {x.shape}: explained as a batch of 1")
        return x[None]
    if len(sample) == 3 and sample[0] == 1:  # a one-channel image model
        if fits(x.shape, sample[1:]):
            console.print(f"one image of shape {x.shape}: explained as a batch of 1 with one channel")
            return x[None, None]
        if x.ndim == 3 and fits(x.shape[1:], sample[1:]):
            return x[:, None]
    return x


def _read_image(path: Path, model: Any) -> Any:
    """A PNG/JPEG as (1, C, H, W) (or (1, H, W, C)) in [0, 1], resized to the model's input if needed."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    spec = model.signature.inputs[0] if hasattr(model, "signature") else None
    shape = tuple(spec.shape[1:]) if spec is not None else ()
    if len(shape) != 3 or not (shape[0] in (1, 3) or shape[2] in (1, 3)):
        raise InvalidInputError(f"'{path}' is an image, but the model's input is {spec.describe() if spec else '?'}; "
                                f"send a .npy array instead.")
    channels_last = shape[0] not in (1, 3)
    channels, height, width = (shape[2], shape[0], shape[1]) if channels_last else shape
    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if channels == 1 else "RGB")
    except UnidentifiedImageError as exc:
        raise InvalidInputError(f"'{path}' is not a PNG or JPEG image.") from exc
    if height > 0 and width > 0 and image.size != (width, height):
        console.print(f"resized {path.name} from {image.width}x{image.height} to the model's {width}x{height}")
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0  # (H, W) or (H, W, 3)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return (pixels if channels_last else pixels.transpose(2, 0, 1))[None]
