"""Training curves as a PNG: one panel per quantity, training and validation overlaid.

    >>> import tempfile, pathlib
    >>> out = plot_history({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}, pathlib.Path(tempfile.mkdtemp()) / "c.png")
    >>> out.exists()
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from kaon.training.history import History


def plot_history(history: History | Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Write the curves of `history` (a History or its .history dict) to `path` as PNG; return the path."""
    # The object API with the Agg canvas: no pyplot, so no global backend and no GUI window.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    data = history.history if isinstance(history, History) else dict(history)
    panels = list(dict.fromkeys(key.removeprefix("val_") for key in data))
    width_in, height_in = 4.2 * max(len(panels), 1), 3.4
    figure = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(figure)
    # Fixed margins (in inches): about twice as fast to draw as layout="constrained".
    figure.subplots_adjust(left=0.6 / width_in, right=1 - 0.15 / width_in, bottom=0.5 / height_in,
                           top=1 - 0.35 / height_in, wspace=0.3)
    for index, name in enumerate(panels or ["loss"]):
        axes = figure.add_subplot(1, max(len(panels), 1), index + 1)
        for key, label, style in ((name, "train", "-"), (f"val_{name}", "validation", "--")):
            values = data.get(key)
            if values:
                axes.plot(range(1, len(values) + 1), values, style, marker="o", markersize=3, label=label)
        axes.set_title(name)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if name in data and f"val_{name}" in data:
            axes.legend()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png", dpi=100)
    return target
