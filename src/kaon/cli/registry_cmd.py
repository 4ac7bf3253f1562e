"""`kaon runs ...` and `kaon models ...`: look at runs and registered models, move aliases, delete versions.

The lead wires these in with `app.add_typer(runs_app, name="runs")` and
`app.add_typer(models_app, name="models")`. The registry (and SQLAlchemy) is imported inside the
commands, so `kaon --help` does not pay for it.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from kaon.cli.app import make_console, reporting_errors
from kaon.errors import InvalidInputError

if TYPE_CHECKING:
    from kaon.registry import ModelVersionRecord, Registry

runs_app = typer.Typer(
    help="Training and optimization runs: params, metric curves, artifacts.", no_args_is_help=True
)
models_app = typer.Typer(
    help="Registered model versions: list, inspect, move aliases, delete.", no_args_is_help=True
)

console = make_console()



def _open_registry() -> Registry:
    from kaon.registry import Registry

    return Registry()


# ---- runs --------------------------------------------------------------------------------------


@runs_app.command("list")
def list_runs(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many recent runs to show.")] = 50,
) -> None:
    """The most recent runs, newest first."""
    with reporting_errors():
        runs = _open_registry().list_runs(limit=limit)
    if not runs:
        console.print("No runs yet. `kaon quickstart` makes one; in Python, kaon.Trainer(model).fit(x, y) records "
                      "each fit.")
        return
    table = Table(title="Runs")
    for column in ("id", "name", "kind", "status", "created", "duration", "summary"):
        table.add_column(column, justify="right" if column == "id" else "left")
    for run in runs:
        duration = (run.finished_at - run.created_at).total_seconds() if run.finished_at else None
        table.add_row(
            str(run.id), escape(run.name), run.kind, _status(run.status), _time(run.created_at),
            f"{duration:.1f} s" if duration is not None else "-", _compact(_headline(run.summary)),
        )
    console.print(table)


# Bookkeeping a run's list row leaves to `kaon runs show` (the duration has its own column)
_BOOKKEEPING = ("epochs_completed", "stopped_early", "duration_s", "callback_close_errors")


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """What a list row shows first: validation figures, then the other metrics, then the rest (an error last)."""
    figures = {k: v for k, v in summary.items() if k not in _BOOKKEEPING and k != "error"}
    ordered = sorted(figures, key=lambda k: (not k.startswith("val_"), k.startswith("best_")))
    headline = {k: figures[k] for k in ordered}
    if "error" in summary:
        headline["error"] = summary["error"]
    return headline or summary


@runs_app.command("show")
def show_run(
    run_id: Annotated[int, typer.Argument(help="The run's id (see `kaon runs list`).")],
    plot: Annotated[bool, typer.Option("--plot", help="Write a PNG of the metric curves.")] = False,
) -> None:
    """One run: params, summary, metric history, artifacts."""
    with reporting_errors():
        registry = _open_registry()
        run = registry.get_run(run_id)
        history = registry.metric_history(run_id)
        artifacts = registry.run_artifacts(run_id)
        plot_path = _plot_history(run_id, run.name, history) if plot else None

    about = _titled(f"Run {run.id}: {escape(run.name)}", show_header=False)
    about.add_column("field", style="bold")
    about.add_column("value")
    about.add_row("kind", run.kind)
    about.add_row("status", _status(run.status))
    about.add_row("created", _time(run.created_at))
    about.add_row("finished", _time(run.finished_at) if run.finished_at else "-")
    about.add_row("params", _compact(run.params, max_chars=None))  # one run: everything, wrapped
    about.add_row("summary", _compact({k: v for k, v in run.summary.items() if k != "error"}, max_chars=None))
    if run.summary.get("error"):
        about.add_row("error", f"[red]{escape(str(run.summary['error']))}[/]")
    console.print(about)

    if history:
        metrics = Table(title="Metrics")
        for column in ("metric", "points", "last step", "last", "min", "max"):
            metrics.add_column(column, justify="left" if column == "metric" else "right")
        for key, points in history.items():
            values = [value for _, value in points if not math.isnan(value)]
            metrics.add_row(
                escape(key), str(len(points)), str(points[-1][0]), _number(points[-1][1]),
                _number(min(values)) if values else "-", _number(max(values)) if values else "-",
            )
        console.print(metrics)
    if artifacts:
        files = Table(title="Artifacts")
        files.add_column("name")
        files.add_column("sha256")
        for name, sha256 in artifacts.items():
            files.add_row(name, sha256)
        console.print(files)
    if plot_path is not None:
        console.print(f"Metric curves written to {plot_path}", highlight=False)


def _plot_history(run_id: int, run_name: str, history: dict[str, list[tuple[int, float]]]) -> Path:
    if not history:
        raise InvalidInputError(
            f"run {run_id} has no metrics to plot. Log some with Registry.log_metrics(run_id, {{...}}, step)."
        )
    from matplotlib.figure import Figure  # lazy: matplotlib takes ~0.5 s to import

    from kaon.config import kaon_home

    num_cols = min(len(history), 3)
    num_rows = math.ceil(len(history) / num_cols)
    figure = Figure(figsize=(4.5 * num_cols, 3.2 * num_rows), layout="constrained")
    figure.suptitle(f"run {run_id}: {run_name}")
    axes = figure.subplots(num_rows, num_cols, squeeze=False).ravel()
    for ax, (key, points) in zip(axes, history.items(), strict=False):
        steps, values = [step for step, _ in points], [value for _, value in points]
        ax.plot(steps, values, marker="." if len(points) < 50 else "")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(history):]:
        ax.set_visible(False)
    path = kaon_home() / "plots" / f"run-{run_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


# ---- models ------------------------------------------------------------------------------------


@models_app.command("list")
def list_models() -> None:
    """Every registered model with its latest version."""
    with reporting_errors():
        models = _open_registry().list_models()
    if not models:
        console.print("No models yet. `kaon quickstart` registers one; in Python, "
                      "kaon.register(model, 'name', input_example=x[:2]).")
        return
    table = Table(title="Models")
    table.add_column("name")
    table.add_column("latest", justify="right")
    table.add_column("versions", justify="right")
    for name, latest, num_versions in models:
        table.add_row(name, str(latest), str(num_versions))
    console.print(table)


@models_app.command("show")
def show_model(
    ref: Annotated[str, typer.Argument(help="'name' (latest), 'name@3' or 'name@production'.")],
) -> None:
    """One model version: files, signature, metrics, lineage; with a bare name, all versions too."""
    from kaon.registry import parse_ref

    with reporting_errors():
        registry = _open_registry()
        record = registry.get_version(ref)
        versions = registry.list_versions(record.name) if parse_ref(ref)[1] is None else []
    console.print(_version_table(record))
    files = Table(title="Files")
    files.add_column("file")
    files.add_column("sha256")
    for filename, sha256 in record.files.items():
        files.add_row(filename, sha256)
    console.print(files)
    if record.signature:
        console.print("[bold]signature[/]")
        console.print_json(json.dumps(record.signature))
    if versions:
        table = _titled(f"Versions of {record.name}")
        for column in ("version", "aliases", "framework", "created", "parent", "metrics"):
            table.add_column(column, justify="right" if column == "version" else "left")
        for version in versions:
            table.add_row(
                str(version.version), ", ".join(version.aliases), version.framework,
                _time(version.created_at), version.parent or "-", _compact(version.metrics),
            )
        console.print(table)


@models_app.command("alias")
def set_alias(
    name: Annotated[str, typer.Argument(help="The model's name.")],
    alias: Annotated[str, typer.Argument(help="The alias, e.g. production.")],
    version: Annotated[str, typer.Argument(help="The version it should point at: 2, or digits@2.")],
) -> None:
    """Point NAME@ALIAS at VERSION (creates the alias or moves it)."""
    with reporting_errors():
        number = _version_number(name, version)
        _open_registry().set_alias(name, alias, number)
    console.print(f"{name}@{alias} -> {name}@{number}", highlight=False)


def _version_number(name: str, version: str) -> int:
    """VERSION as `kaon models alias` takes it: a number, or the version's reference (NAME@N)."""
    given_name, _, number = version.rpartition("@")
    if given_name and given_name != name:
        raise InvalidInputError(f"the version {version!r} is not one of the versions of {name!r}. Expected a "
                                f"version number of {name}, e.g. 2 or {name}@2.")
    if not (number.isascii() and number.isdigit()):
        raise InvalidInputError(f"expected a version number, e.g. 2 or {name}@2 (an alias points at a version, "
                                f"not at another alias). Received: {version!r}.")
    return int(number)


@models_app.command("delete")
def delete_version(
    ref: Annotated[str, typer.Argument(help="The version to delete, as name@version, e.g. digits@3.")],
    version: Annotated[int | None, typer.Argument(help="Or the name, then the version: digits 3.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Delete even if an alias such as 'production' points at it.")
    ] = False,
) -> None:
    """Delete one model version (its files stay in the artifact store)."""
    from kaon.registry import parse_ref

    with reporting_errors():
        if version is not None and "@" in ref:  # delete is destructive: one version, said one way
            raise InvalidInputError(f"give the version once: {ref!r} or the name and a number. Received both "
                                    f"{ref!r} and {version}.")
        name, selector = parse_ref(ref if version is None else f"{ref}@{version}")
        if selector is None or not selector.isdigit():
            raise InvalidInputError(
                f"delete needs an explicit version number, so that an alias never deletes the wrong one. "
                f"Received: {ref!r}. Expected e.g. '{name}@3' (see `kaon models show {name}`)."
            )
        _open_registry().delete_version(name, int(selector), force=force)
    console.print(f"Deleted {name}@{selector}.", highlight=False)


# ---- formatting --------------------------------------------------------------------------------


def _version_table(record: ModelVersionRecord) -> Table:
    table = _titled(f"Model {record.ref}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("framework", record.framework)
    table.add_row("aliases", ", ".join(record.aliases) or "-")
    table.add_row("created", _time(record.created_at))
    table.add_row("parent", record.parent or "-")
    table.add_row("run", str(record.run_id) if record.run_id is not None else "-")
    table.add_row("metrics", _compact(record.metrics))
    table.add_row("description", escape(record.description) or "-")
    return table


def _titled(title: str, **options: Any) -> Table:
    """A table at least as wide as its title, so that a long name in the title is not wrapped when there is room."""
    return Table(title=title, min_width=Text.from_markup(title).cell_len, **options)


def _status(status: str) -> str:
    colors = {"running": "yellow", "completed": "green", "failed": "red", "interrupted": "magenta", "crashed": "red"}
    color = colors.get(status, "white")
    return f"[{color}]{status}[/]"


def _time(value: datetime) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _number(value: float) -> str:
    return f"{value:.4g}"


def _compact(data: dict[str, Any], max_chars: int | None = 60) -> str:
    if not data:
        return "-"
    text = ", ".join(f"{k}={_number(v) if isinstance(v, float) else v}" for k, v in data.items())
    return escape(text if max_chars is None or len(text) <= max_chars else text[: max_chars - 1] + "…")
