"""Runs: params, metric history, artifacts and status survive the round trip through the database."""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timezone
from pathlib import Path

import numpy as np
import pytest

from kaon.errors import InvalidInputError, NotFoundError
from kaon.registry import Registry, RunRecord


def test_run_round_trips_params_status_and_summary(registry: Registry) -> None:
    params = {"lr": 0.01, "layers": [64, 32], "optimizer": {"name": "adam", "betas": [0.9, 0.999]}}
    run = registry.create_run("digits-mlp", params=params, kind="train")

    assert isinstance(run, RunRecord)
    assert (run.name, run.kind, run.status) == ("digits-mlp", "train", "running")
    assert (run.params, run.summary) == (params, {})
    assert run.finished_at is None
    assert run.created_at.tzinfo is not None and run.created_at.utcoffset() == timezone.utc.utcoffset(None)

    finished = registry.finish_run(run.id, "completed", summary={"accuracy": 0.97})
    assert finished.status == "completed"
    assert finished.finished_at is not None and finished.finished_at >= finished.created_at
    assert registry.get_run(run.id) == finished


def test_run_params_accept_numpy_values_and_paths(registry: Registry) -> None:
    params = {"lr": np.float32(0.5), "shape": np.array([1, 2]), "out": Path("/x")}
    run = registry.create_run("np", params=params)
    assert registry.get_run(run.id).params == {"lr": 0.5, "shape": [1, 2], "out": "/x"}


def test_run_params_that_are_not_json_are_refused_with_the_reason(registry: Registry) -> None:
    with pytest.raises(InvalidInputError, match="params must hold only JSON values"):
        registry.create_run("bad", params={"fn": object()})
    with pytest.raises(InvalidInputError, match="params must hold only JSON values"):
        registry.create_run("bad", params={"lr": float("nan")})


def test_metric_history_keeps_every_point_in_step_order(registry: Registry) -> None:
    run = registry.create_run("curves")
    for step in range(20):
        registry.log_metrics(run.id, {"loss": 1.0 / (step + 1), "accuracy": step / 20}, step=step)
    registry.log_metrics(run.id, {"loss": np.float64(0.01)}, step=20)

    history = registry.metric_history(run.id)

    assert sorted(history) == ["accuracy", "loss"]
    assert history["accuracy"] == [(step, step / 20) for step in range(20)]
    assert history["loss"][-1] == (20, 0.01)
    assert [step for step, _ in history["loss"]] == list(range(21))


def test_nan_metric_reads_back_as_nan(registry: Registry) -> None:
    run = registry.create_run("diverged")
    registry.log_metrics(run.id, {"loss": float("nan"), "grad": float("inf")}, step=3)
    history = registry.metric_history(run.id)
    assert math.isnan(history["loss"][0][1])
    assert history["grad"] == [(3, math.inf)]


def test_log_metrics_refuses_bad_steps_and_values(registry: Registry) -> None:
    run = registry.create_run("r")
    with pytest.raises(InvalidInputError, match=r"step must be an integer >= 0. Received: step=-1"):
        registry.log_metrics(run.id, {"loss": 1.0}, step=-1)
    with pytest.raises(InvalidInputError, match=r"metric 'loss' must be a number: .* Received: 'high'"):
        registry.log_metrics(run.id, {"loss": "high"}, step=1)  # type: ignore[dict-item]
    assert registry.metric_history(run.id) == {}


def test_logging_to_a_missing_run_is_not_found(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="no run with id 999"):
        registry.log_metrics(999, {"loss": 1.0}, step=0)
    for call in (registry.get_run, registry.metric_history, registry.run_artifacts):
        with pytest.raises(NotFoundError, match="no run with id 999"):
            call(999)


def test_a_run_finishes_once(registry: Registry) -> None:
    run = registry.create_run("r")
    registry.finish_run(run.id, "failed", summary={"error": "NaN loss"})
    with pytest.raises(InvalidInputError, match="already finished as 'failed'"):
        registry.finish_run(run.id)
    with pytest.raises(InvalidInputError, match="'completed', 'failed' or 'interrupted'"):
        registry.finish_run(registry.create_run("s").id, "done")  # type: ignore[arg-type]


def test_list_runs_is_newest_first_and_limited(registry: Registry) -> None:
    ids = [registry.create_run(f"run-{i}", kind="optimize").id for i in range(5)]
    assert [run.id for run in registry.list_runs(limit=3)] == ids[::-1][:3]
    assert all(run.kind == "optimize" for run in registry.list_runs())


def test_run_artifacts_are_stored_by_hash_and_replaced_by_name(registry: Registry, make_file) -> None:
    run = registry.create_run("r")
    first = registry.add_run_artifact(run.id, "checkpoint.pt", make_file(b"epoch 1"))
    registry.add_run_artifact(run.id, "plots/loss.png", make_file(b"png"))
    second = registry.add_run_artifact(run.id, "checkpoint.pt", make_file(b"epoch 2"))

    assert first != second
    png = hashlib.sha256(b"png").hexdigest()
    assert registry.run_artifacts(run.id) == {"checkpoint.pt": second, "plots/loss.png": png}
    assert registry.artifact_path(second).read_bytes() == b"epoch 2"


def test_invalid_run_names_and_kinds_say_what_was_received(registry: Registry) -> None:
    with pytest.raises(InvalidInputError, match="run name must be a non-empty printable string"):
        registry.create_run("")
    with pytest.raises(InvalidInputError, match=r"run kind must be .* Received: 'train me'"):
        registry.create_run("r", kind="train me")


def test_one_registry_is_safe_to_share_between_threads(registry: Registry) -> None:
    run = registry.create_run("threads")

    def log(thread: int) -> None:
        for step in range(25):
            registry.log_metrics(run.id, {f"thread_{thread}": float(step)}, step=step)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(log, range(4)))

    history = registry.metric_history(run.id)
    assert {key: len(points) for key, points in history.items()} == {f"thread_{i}": 25 for i in range(4)}


def test_ids_out_of_range_are_invalid_input_not_database_errors(registry: Registry) -> None:
    with pytest.raises(InvalidInputError, match="a run id is an integer between 1 and 2147483647"):
        registry.get_run(2**40)
    with pytest.raises(InvalidInputError, match="a run id is an integer"):
        registry.get_run("1")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="a version is an integer between 1 and"):
        registry.get_version("digits@99999999999")
    with pytest.raises(InvalidInputError, match="limit must be an integer >= 1"):
        registry.list_runs(limit=0)


def test_a_run_whose_process_ended_reads_as_crashed_once_and_for_all(registry: Registry) -> None:
    """Only the host a process ran on can tell it ended; a reused pid (another start time) has ended too."""
    import subprocess
    import sys

    from sqlalchemy import update

    from kaon._internal.processes import process_start, this_process
    from kaon.registry._schema import RunRow

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    here = os.getpid()
    machine = this_process().rsplit(":", 2)[0]  # host/pid-namespace
    host = machine.split("/")[0]
    owners = {
        "ended": f"{machine}:{ended.stdout.strip()}:1",
        "pid reused": f"{machine}:{here}:{int(process_start(here) or 0) + 1}",
        "alive": f"{machine}:{here}:{process_start(here)}",
        "other host": f"{host}-elsewhere/{machine.split('/')[1]}:{ended.stdout.strip()}:1",
        # a container sharing the host's name and KAON_HOME: its pid 1 is not this host's pid 1
        "other pid namespace": f"{host}/1:1:1",
        "no owner": None,  # made by kaon before owners were recorded
    }
    ids = {}
    for name, owner in owners.items():
        ids[name] = registry.create_run(name).id
        with registry._writer.begin() as connection:
            connection.execute(update(RunRow).where(RunRow.id == ids[name]).values(owner=owner))
    assert registry.create_run("mine").owner.split(":")[:2] == [machine, str(here)]
    statuses = {run.name: run.status for run in registry.list_runs()}
    assert statuses == {"ended": "crashed", "pid reused": "crashed" if process_start(here) else "running",
                        "alive": "running", "other host": "running", "other pid namespace": "running",
                        "no owner": "running", "mine": "running"}
    with pytest.raises(InvalidInputError, match="already finished as 'crashed'"):
        registry.finish_run(ids["ended"])
    registry.finish_run(ids["alive"])
    assert registry.get_run(ids["alive"]).status == "completed"
