"""What `optimize` found: every variant's numbers, the one chosen and why, as Markdown, JSON and a PNG chart."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kaon.optimization.plan import Target

Status = Literal["ok", "failed", "skipped"]
HEADERS = ("variant", "accuracy", "vs original (pts)", "size", "p50 b1 (ms)", "samples/s b64", "throughput", "")


@dataclass
class Variant:
    """One candidate model (or the original), measured. Numbers are None when it was not built."""

    name: str
    methods: tuple[str, ...]
    framework: str  # 'onnx' | 'torch' | 'keras'
    status: Status = "ok"
    accuracy: float | None = None  # fraction on the held-out samples
    accuracy_drop_pts: float | None = None  # points below the original (negative: above)
    size_bytes: int | None = None
    p50_ms_b1: float | None = None
    throughput_b64: float | None = None  # samples/s
    threads: int = 1
    device: str = "cpu"
    candidate: bool = True  # False: built for reference only (its method was not requested)
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.status == "ok" and None not in (self.accuracy, self.size_bytes, self.p50_ms_b1,
                                                    self.throughput_b64)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["methods"] = list(self.methods)
        data["files"] = {k: str(v) for k, v in self.files.items()}
        return data


@dataclass
class OptimizationReport:
    """The result of `kaon.optimization.optimize`: `chosen` is a variant name, or None (the original stays)."""

    source: str
    target: Target
    max_accuracy_drop: float
    methods: list[str]
    threads: int
    original: Variant
    variants: list[Variant]
    chosen: str | None
    reasons: list[str]
    held_out: str = ""
    parity: str = ""
    registered: str | None = None  # 'name@version' of the registered variant
    drift_reference: str = ""  # which drift reference statistics the registered version carries, or why none
    run_id: int | None = None
    files: dict[str, Path] = field(default_factory=dict)  # report.md, report.json, report.png

    @property
    def chosen_variant(self) -> Variant | None:
        return next((v for v in self.variants if v.name == self.chosen), None)

    def before_after(self) -> str:
        """One line: what the user had, what they get now."""
        o, c = self.original, self.chosen_variant
        if c is None or not c.measured or not o.measured:
            return (f"{self.source}: no variant met the budget of {self.max_accuracy_drop:g} accuracy pts and "
                    f"beat the original on {self.target}; the original stays the serving version")
        assert o.throughput_b64 and o.p50_ms_b1 and o.size_bytes and c.throughput_b64 and c.p50_ms_b1
        assert c.size_bytes is not None and o.accuracy is not None and c.accuracy is not None
        target = f"{self.registered} ({c.name})" if self.registered else c.name
        return (f"{self.source} -> {target}: throughput {o.throughput_b64:,.0f} -> "
                f"{c.throughput_b64:,.0f} samples/s ({c.throughput_b64 / o.throughput_b64:.1f}x), p50 "
                f"{o.p50_ms_b1:.3f} -> {c.p50_ms_b1:.3f} ms, size {_kb(o.size_bytes)} -> {_kb(c.size_bytes)} "
                f"({c.size_bytes / o.size_bytes:.2f}x), accuracy {o.accuracy:.2%} -> {c.accuracy:.2%} "
                f"({self.threads} thread{'s' if self.threads != 1 else ''})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "target": self.target, "max_accuracy_drop": self.max_accuracy_drop,
            "methods": self.methods, "threads": self.threads, "held_out": self.held_out, "parity": self.parity,
            "original": self.original.to_dict(), "variants": [v.to_dict() for v in self.variants],
            "chosen": self.chosen, "reasons": self.reasons, "registered": self.registered,
            "drift_reference": self.drift_reference, "run_id": self.run_id,
            "before_after": self.before_after(),
        }

    def rows(self) -> list[list[str]]:
        """The table, one row per model: the original first."""
        rows = []
        for v in [self.original, *self.variants]:
            o = self.original
            speed = (f"{v.throughput_b64 / o.throughput_b64:.1f}x" if v.throughput_b64 and o.throughput_b64
                     else "-")
            mark = "chosen" if v.name == self.chosen else ("" if v.candidate else "reference")
            status = v.status if v.status != "ok" else mark
            change = -v.accuracy_drop_pts if v.accuracy_drop_pts is not None else None
            rows.append([
                v.name, _pct(v.accuracy), _pts(change), _kb(v.size_bytes),
                f"{v.p50_ms_b1:.3f}" if v.p50_ms_b1 is not None else "-",
                f"{v.throughput_b64:,.0f}" if v.throughput_b64 is not None else "-", speed, status,
            ])
        return rows

    def to_markdown(self) -> str:
        lines = [
            f"# kaon optimize: {self.source}",
            "",
            f"Target **{self.target}**, accuracy budget **{self.max_accuracy_drop:g} pts**, "
            f"methods {', '.join(self.methods)}, {self.threads} thread(s) (CPU), {self.held_out}.",
        ]
        if self.parity:
            lines += ["", f"Export check: {self.parity}."]
        lines += ["", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        lines += ["", f"**{self.before_after()}**"]
        if self.registered and self.drift_reference:
            lines += ["", f"Drift reference of {self.registered}: {self.drift_reference}."]
        lines += ["", "## Why", ""]
        lines += [f"- {reason}" for reason in self.reasons]
        notes = [(v.name, n) for v in [self.original, *self.variants] for n in v.notes]
        if notes:
            lines += ["", "## Notes", ""] + [f"- {name}: {note}" for name, note in notes]
        return "\n".join(lines) + "\n"

    def write(self, folder: Path) -> dict[str, Path]:
        """Write report.md, report.json and report.png into `folder`; remember and return their paths."""
        folder.mkdir(parents=True, exist_ok=True)
        self.files = {"report.md": folder / "report.md", "report.json": folder / "report.json",
                      "report.png": folder / "report.png"}
        self.files["report.md"].write_text(self.to_markdown())
        self.files["report.json"].write_text(json.dumps(self.to_dict(), indent=2, default=str))
        plot(self, self.files["report.png"])
        return self.files


def plot(report: OptimizationReport, path: Path) -> Path:
    """Four bar panels (throughput, p50, size, accuracy), the chosen variant in colour."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    models = [v for v in [report.original, *report.variants] if v.measured]
    names = [v.name for v in models]
    colours = ["#888888" if v is report.original else ("#d62728" if v.name == report.chosen else "#1f77b4")
               for v in models]
    panels = [
        ("samples/s at batch 64 (higher is better)", [v.throughput_b64 or 0 for v in models]),
        ("p50 ms at batch 1 (lower is better)", [v.p50_ms_b1 or 0 for v in models]),
        ("file size KB (lower is better)", [(v.size_bytes or 0) / 1000 for v in models]),
        ("accuracy % (held-out; dashed: the budget)", [(v.accuracy or 0) * 100 for v in models]),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 1.2 + 0.42 * max(len(models), 1)), sharey=True)
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.barh(range(len(models)), values, color=colours)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        if title.startswith("accuracy") and values:
            floor = values[0] - report.max_accuracy_drop  # values[0] is the original
            ax.axvline(floor, color="#d62728", linestyle="--", linewidth=1)
            ax.set_xlim(max(0.0, min(min(values), floor) - 2), 100)
    axes[0].set_yticks(range(len(models)), names)
    axes[0].invert_yaxis()
    fig.suptitle(f"kaon optimize {report.source}: target {report.target}, budget {report.max_accuracy_drop:g} pts, "
                 f"{report.threads} thread(s); grey = original, red = chosen", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _kb(size: int | None) -> str:
    return f"{size / 1000:,.1f} KB" if size is not None else "-"


def _pct(value: float | None) -> str:
    return f"{value:.2%}" if value is not None else "-"


def _pts(value: float | None) -> str:
    return f"{value + 0.0:+.2f}" if value is not None else "-"  # + 0.0: no "-0.00"
