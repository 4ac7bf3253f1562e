"""`kaon optimize REF`: the fastest variant of a model within an accuracy budget, registered with its report.

The lead registers this module in `_register_commands` (cli/app.py). torch, onnx and onnxruntime
are imported inside the command, so `kaon --help` does not pay for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from kaon.cli.app import app, handles_errors, make_console

if TYPE_CHECKING:
    from kaon.optimization import OptimizationReport

console = make_console()


@app.command()
@handles_errors
def optimize(
    ref: Annotated[str, typer.Argument(help="A registered model (digits@1, digits@latest) or a model file.")],
    max_accuracy_drop: Annotated[float, typer.Option(
        help="Accuracy points a variant may lose on held-out data (0.5 = half a point).")] = 0.5,
    target: Annotated[str, typer.Option(help="What to make best: throughput (batch 64), latency (batch 1) "
                                             "or size.")] = "throughput",
    methods: Annotated[str | None, typer.Option(
        help="Comma-separated: onnx,int8-dynamic,int8-static,prune-structured,prune-unstructured,fp16 "
             "(default: all that apply).")] = None,
    calibration_samples: Annotated[int, typer.Option(help="Samples that calibrate static int8.")] = 256,
    calibration_data: Annotated[Path | None, typer.Option(
        help="An .npz with arrays x and y (optional x_train, y_train); default: the samples stored with "
             "the model version.")] = None,
    num_threads: Annotated[int, typer.Option(help="Threads for every timing (stated in the report).")] = 1,
    output_dir: Annotated[Path | None, typer.Option(
        help="Where the variants and report go (default: KAON_HOME/optimize/...).")] = None,
) -> None:
    """Export, quantize and prune a model; register the best variant within the accuracy budget."""
    try:
        from kaon.optimization import optimize as run_optimize  # torch: seconds, worth a Ctrl-C too

        console.print(f"[bold]kaon optimize[/] {escape(ref)}: target {target}, budget {max_accuracy_drop:g} pts, "
                      f"{num_threads} thread(s)")
        with console.status("exporting, quantizing, pruning and measuring (about half a minute for a small "
                            "model)..."):
            report = run_optimize(ref, max_accuracy_drop=max_accuracy_drop,
                                  target=target,  # type: ignore[arg-type]
                                  methods=methods, calibration_samples=calibration_samples,
                                  calibration_data=calibration_data, num_threads=num_threads,
                                  output_dir=output_dir)
    except KeyboardInterrupt as exc:  # Ctrl-C: the run is recorded 'interrupted'; say what it left
        registered = getattr(exc, "registered", None)
        console.print(f"interrupted; {registered} was registered before it stopped" if registered
                      else "interrupted; nothing was registered", highlight=False)
        raise typer.Exit(130) from None
    print_report(report)


def print_report(report: OptimizationReport) -> None:
    """The table, the reasons, the before/after line and where things went."""
    from kaon.optimization.report import HEADERS

    table = Table(title=f"{report.source}: variants ({report.held_out})", title_justify="left")
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i in (0, len(HEADERS) - 1) else "right")
    for row in report.rows():
        style = "bold green" if row[0] == report.chosen else ("dim" if row[-1] in ("skipped", "failed") else None)
        table.add_row(*[escape(cell) for cell in row], style=style)
    console.print(table)
    if report.parity:
        console.print(f"export check: {escape(report.parity)}")
    for variant in report.variants:
        if variant.status == "failed":
            console.print(f"[yellow]{escape(variant.name)} failed[/]: {escape(' '.join(variant.notes))}")
        elif variant.status == "skipped":
            console.print(f"[dim]{escape(variant.name)} skipped: {escape(variant.notes[-1])}[/]")
    if report.chosen is not None:  # why this one
        console.print(f"[dim]{escape(report.reasons[-1])}[/]")
    else:  # why none: each measured variant's reason (the last reason says what the line below says)
        for reason in report.reasons[:-1]:
            console.print(f"[dim]{escape(reason)}[/]", soft_wrap=True)
    console.print(f"[bold]{escape(report.before_after())}[/]", soft_wrap=True)
    if report.registered:
        console.print(f"registered {report.registered} (parent {report.source}); serve it: "
                      f"kaon serve {report.registered}")
        if report.drift_reference:
            console.print(f"drift reference of {report.registered}: {escape(report.drift_reference)}",
                          highlight=False, soft_wrap=True)
    console.print(f"report: {report.files.get('report.md')}  chart: {report.files.get('report.png')}")
