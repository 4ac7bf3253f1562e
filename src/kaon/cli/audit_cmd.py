"""`kaon audit MODEL_REF [--data FILE.npz]`: accuracy clean, per class, under attack and corruption; calibration.

    kaon audit digits@latest                      # a digits model: the bundled test split by default
    kaon audit model.pt2 --data test.npz --out audit/

A registered version's report (report.md, report.json, confusion_matrix.png, reliability.png,
robustness.png) is stored as the artifacts of an 'audit' run (`kaon runs show ID`); --out also
writes it to a folder. A model file that is not registered is written to --out (default
./audit-<name>).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from kaon.cli.app import app, handles_errors, make_console
from kaon.errors import InvalidInputError

console = make_console()


def _epsilons(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidInputError(f"--epsilons must be numbers separated by commas, e.g. 0.03,0.1. "
                                f"Received: {text!r}") from exc
    if not values or any(v < 0 for v in values):
        raise InvalidInputError(f"--epsilons must be numbers >= 0. Received: {text!r}")
    return values


def _stored_samples(ref: str, max_samples: int | None) -> tuple[Any, Any] | None:
    """The held-out (x, y) attached to a registered version (kaon.optimization.attach_samples, or its
    parent's), else None (the audit then says what data it needs)."""
    from kaon.errors import NotFoundError
    from kaon.optimization import find_samples
    from kaon.registry import Registry

    registry = Registry()
    try:
        samples = find_samples(ref, registry=registry)
    except NotFoundError:
        return None  # a reference that does not resolve: the audit says so in its own words
    finally:
        registry.close()
    if samples is None:
        return None
    count = len(samples.y) if max_samples is None else min(max_samples, len(samples.y))
    first = "" if count == len(samples.y) else f"first {count} of the "
    console.print(f"auditing on the {first}{len(samples.y)} {samples.source}", highlight=False)
    return samples.x, samples.y


@app.command()
@handles_errors
def audit(
    model_ref: str = typer.Argument(..., help="name@alias | model.pt2 | model.onnx"),
    data: Path = typer.Option(None, "--data", "-d", help=".npz with inputs and labels (x/y). \\[default: the "
                                                          "samples attached to the version (attach_samples); "
                                                          "digits models: the bundled digits test split]"),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the report files here."),
    epsilons: str = typer.Option("0.01,0.03,0.05,0.1,0.2", help="L-inf budgets for FGSM and PGD."),
    pgd_steps: int = typer.Option(10, min=1, help="PGD iterations."),
    max_samples: int = typer.Option(None, min=1, help="Audit on the first N samples only."),
    seed: int = typer.Option(0, help="Seed for noise and PGD's random start."),
) -> None:
    """Audit a classifier: robustness (FGSM, PGD, noise, blur, contrast), per-class accuracy, calibration."""
    from kaon.robustness import audit as run_audit
    from kaon.sdk.hub import looks_like_path

    is_file = looks_like_path(model_ref)
    if out is None and is_file:
        out = Path(f"audit-{Path(model_ref).name.split('.')[0]}")
    given: Any = str(data) if data is not None else None
    if given is None and not is_file:  # the labelled samples attached to the version, as kaon optimize uses them
        given = _stored_samples(model_ref, max_samples)
    with console.status("auditing (clean, FGSM, PGD, corruptions, calibration)..."):
        report = run_audit(model_ref, data=given, epsilons=_epsilons(epsilons),
                           pgd_steps=pgd_steps, max_samples=max_samples, out=out, seed=seed)
    for note in report.notes:
        console.print(f"[yellow]note[/]: {escape(note)}", soft_wrap=True)
    console.print(f"clean accuracy [bold]{report.clean_accuracy:.4f}[/], expected calibration error "
                  f"[bold]{report.ece:.4f}[/] on {report.num_samples} samples")
    if report.adversarial:
        table = Table(title="Adversarial accuracy")
        table.add_column("epsilon", justify="right")
        for name in report.adversarial:
            table.add_column(name.upper(), justify="right")
        for eps in next(iter(report.adversarial.values())):
            table.add_row(eps, *[f"{t[eps]:.4f}" for t in report.adversarial.values()])
        console.print(table)
    table = Table(title="Accuracy under corruption")
    for column in ("corruption", "severity", "accuracy"):
        table.add_column(column, justify="left" if column == "corruption" else "right")
    for name, severities in report.corruptions.items():
        for severity, acc in severities.items():
            table.add_row(name, severity, f"{acc:.4f}")
    console.print(table)
    console.print(escape(report.summary()), soft_wrap=True)
    if report.run_id is not None:
        console.print(f"stored as run {report.run_id}: kaon runs show {report.run_id}")
    if out is not None:
        console.print(f"wrote {out}/ (report.md, report.json, confusion_matrix.png, reliability.png, robustness.png)")
