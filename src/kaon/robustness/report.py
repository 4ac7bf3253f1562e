"""AuditReport: what `kaon audit` measured, as one object, a markdown page, JSON and PNGs.

    >>> report = kaon.audit("digits@latest")          # doctest: +SKIP
    >>> report.summary()                               # doctest: +SKIP
    'digits@1: clean 0.969 | FGSM@0.1 0.289 | PGD@0.1 0.192 | noise@0.1 0.958 | ECE 0.021 (360 samples)'
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kaon.robustness.calibration import ReliabilityBins, plot_reliability

REPORT_FILES = ("report.md", "report.json", "confusion_matrix.png", "reliability.png", "robustness.png")


@dataclass
class AuditReport:
    """Accuracy clean, per class, under attack and under corruption; calibration. Keys of the
    `adversarial` and `corruptions` tables are severities as strings ("0.1"), values accuracies."""

    model: str
    framework: str
    data_source: str
    num_samples: int
    clean_accuracy: float
    per_class_accuracy: dict[str, float]
    confusion_matrix: list[list[int]]
    adversarial: dict[str, dict[str, float]]
    corruptions: dict[str, dict[str, float]]
    ece: float
    reliability: ReliabilityBins
    labels: list[str]
    notes: list[str] = field(default_factory=list)
    run_id: int | None = None
    duration_s: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def _headline(self, table: dict[str, float], near: float) -> tuple[str, float] | None:
        if not table:
            return None
        key = min(table, key=lambda k: abs(float(k) - near))
        return key, table[key]

    def summary(self) -> str:
        """One line: clean accuracy, the attacks and noise near 0.1, ECE."""
        parts = [f"clean {self.clean_accuracy:.3f}"]
        for name, table in (("FGSM", self.adversarial.get("fgsm", {})), ("PGD", self.adversarial.get("pgd", {})),
                            ("noise", self.corruptions.get("gaussian_noise", {}))):
            head = self._headline(table, 0.1)
            if head is not None:
                parts.append(f"{name}@{head[0]} {head[1]:.3f}")
        parts.append(f"ECE {self.ece:.3f}")
        where = f", run {self.run_id}" if self.run_id is not None else ""
        return f"{self.model}: {' | '.join(parts)} ({self.num_samples} samples{where})"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        lines = [f"# Audit of {self.model}", "", f"- framework: {self.framework}",
                 f"- data: {self.data_source} ({self.num_samples} samples)",
                 f"- clean accuracy: **{self.clean_accuracy:.4f}**",
                 f"- expected calibration error: **{self.ece:.4f}** (15 bins; see reliability.png)"]
        if self.run_id is not None:
            lines.append(f"- stored as run {self.run_id} (`kaon runs show {self.run_id}`)")
        lines += ["", f"`{self.summary()}`", ""]
        for note in self.notes:
            lines.append(f"> {note}")
        if self.notes:
            lines.append("")
        if self.adversarial:
            lines += ["## Adversarial accuracy (L-inf, true labels)", "",
                      "| epsilon | " + " | ".join(k.upper() for k in self.adversarial) + " |",
                      "| --- |" + " --- |" * len(self.adversarial)]
            for eps in next(iter(self.adversarial.values())):
                lines.append(f"| {eps} | " + " | ".join(f"{t[eps]:.4f}" for t in self.adversarial.values()) + " |")
            lines.append("")
        if self.corruptions:
            lines += ["## Corruptions", "", "| corruption | severity | accuracy |", "| --- | --- | --- |"]
            for name, table in self.corruptions.items():
                for severity, acc in table.items():
                    lines.append(f"| {name} | {severity} | {acc:.4f} |")
            lines.append("")
        lines += ["## Per-class accuracy", "", "| class | accuracy |", "| --- | --- |"]
        lines += [f"| {label} | {acc:.4f} |" for label, acc in self.per_class_accuracy.items()]
        lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "",
                  "| | " + " | ".join(self.labels) + " |", "| --- |" + " --- |" * len(self.labels)]
        for label, row in zip(self.labels, self.confusion_matrix, strict=True):
            lines.append(f"| **{label}** | " + " | ".join(str(v) for v in row) + " |")
        lines += ["", "Figures: confusion_matrix.png, reliability.png, robustness.png", ""]
        return "\n".join(lines)

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Write report.md, report.json and the three PNGs into `folder`; return them by name."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = {name: out / name for name in REPORT_FILES}
        plot_confusion(np.asarray(self.confusion_matrix), self.labels, paths["confusion_matrix.png"])
        plot_reliability(self.reliability, paths["reliability.png"], title=f"Reliability: {self.model}")
        plot_robustness(self.adversarial, self.corruptions, self.clean_accuracy, paths["robustness.png"])
        paths["report.md"].write_text(self.to_markdown())
        paths["report.json"].write_text(self.to_json())
        self.files = {name: str(path) for name, path in paths.items()}
        return paths


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path) -> Path:
    plt = _pyplot()
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = matrix.max() if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > peak / 2 else "black")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_robustness(adversarial: dict[str, dict[str, float]], corruptions: dict[str, dict[str, float]],
                    clean: float, path: Path) -> Path:
    """Accuracy against attack strength (left) and corruption severity (right)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, table in adversarial.items():
        eps = [0.0, *[float(k) for k in table]]
        left.plot(eps, [clean, *table.values()], marker="o", label=name.upper())
    left.set_xlabel("epsilon (L-inf)")
    left.set_ylabel("accuracy")
    left.set_ylim(0, 1)
    left.set_title("Adversarial" if adversarial else "Adversarial: not run (no gradients)")
    if adversarial:
        left.legend()
    for name, table in corruptions.items():
        right.plot(range(len(table) + 1), [clean, *table.values()], marker="s", label=name)
    right.set_xlabel("severity step (0 = clean; values in report.md)")
    right.set_xticks(range(1 + max((len(t) for t in corruptions.values()), default=0)))
    right.set_ylim(0, 1)
    right.set_title("Corruptions")
    if corruptions:
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
