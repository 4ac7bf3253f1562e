"""Several processes at once, and processes killed mid-write: nothing committed is lost or duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kaon.registry import Registry

WORKER = Path(__file__).with_name("_registry_worker.py")


def start_worker(args: list[str], database_url: str, stdout_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KAON_DATABASE_URL": database_url}
    with open(stdout_path, "wb") as stdout:  # a file, not a pipe: a full pipe would block the child
        return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=stdout, env=env)


def wait_for_line(path: Path, line: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text().splitlines():
            return
        if process.poll() is not None:
            raise AssertionError(f"worker exited with {process.returncode} before printing {line!r}")
        time.sleep(0.01)
    raise AssertionError(f"worker did not print {line!r} within {timeout_s} s")


def committed_lines(path: Path) -> list[list[str]]:
    """The lines the child finished printing (a line cut short by the kill is dropped)."""
    content = path.read_text()
    complete = content[: content.rfind("\n") + 1] if "\n" in content else ""
    return [line.split() for line in complete.splitlines() if line != "ready"]


def test_two_processes_lose_nothing_and_get_distinct_version_numbers(
    backend_url: str, tmp_path: Path
) -> None:
    num_steps, num_versions = 250, 10  # 500 metric points and 10 versions per process
    start_file = tmp_path / "go"
    outputs = [tmp_path / f"worker-{tag}.out" for tag in "ab"]
    args = [str(start_file), str(num_steps), str(num_versions)]
    workers = [start_worker(["concurrent", out.stem, *args], backend_url, out) for out in outputs]
    try:
        for worker, out in zip(workers, outputs, strict=True):  # both opened (and migrated) a fresh database
            wait_for_line(out, "ready", worker)
        start_file.touch()
        for worker in workers:
            assert worker.wait(timeout=120) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    results = [json.loads(out.read_text().splitlines()[-1]) for out in outputs]

    with Registry(backend_url) as registry:
        for result in results:
            history = registry.metric_history(result["run_id"])
            assert history["loss"] == [(step, float(step)) for step in range(num_steps)]
            assert history["accuracy"] == [(step, -float(step)) for step in range(num_steps)]
            assert registry.get_run(result["run_id"]).status == "completed"
        taken = results[0]["versions"] + results[1]["versions"]
        assert sorted(taken) == list(range(1, 2 * num_versions + 1))  # distinct, no gaps
        versions = registry.list_versions("shared")
        assert [v.version for v in versions] == list(range(1, 2 * num_versions + 1))
        assert registry.get_version("shared").version == 2 * num_versions
        by_run = {r["run_id"]: set(r["versions"]) for r in results}
        assert all(v.version in by_run[v.run_id] for v in versions)
        assert sum(e["kind"] == "version.registered" for e in registry.events(limit=1000)) == 2 * num_versions


@pytest.mark.parametrize("kill_after_s", [0.3, 0.35, 0.4, 0.45])
def test_sigkill_mid_write_keeps_every_committed_record(
    kaon_home: Path, tmp_path: Path, kill_after_s: float
) -> None:
    url = f"sqlite:///{kaon_home / 'kaon.db'}"
    lines: list[list[str]] = []
    for attempt in range(2):  # a second child writes on after the first one's crash
        out = tmp_path / f"crash-{attempt}.out"
        worker = start_worker(["crash", f"k{attempt}"], url, out)
        try:
            wait_for_line(out, "ready", worker)
            time.sleep(kill_after_s)
            os.kill(worker.pid, signal.SIGKILL)
        finally:
            worker.kill()
            worker.wait(timeout=30)
        assert worker.returncode == -signal.SIGKILL
        lines += committed_lines(out)

    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        assert connection.execute(text("PRAGMA foreign_key_check")).fetchall() == []
    engine.dispose()
    assert sum(kind == "run" for kind, *_ in lines) >= 2, "the child wrote too little before the kill"
    with Registry(url) as registry:
        for kind, *fields in lines:
            if kind == "run":
                assert registry.get_run(int(fields[0])).name.startswith("crash-")
            elif kind == "metric":
                run_id, step = int(fields[0]), int(fields[1])
                assert (step, 0.1) in registry.metric_history(run_id)["lr"]
            elif kind == "version":
                record = registry.get_version(f"crashy@{fields[0]}")
                assert record.files["model.bin"] == fields[1]
                registry.artifact_path(fields[1])  # the file is there and intact
            elif kind == "finished":
                assert registry.get_run(int(fields[0])).status == "completed"
        registered = sorted(int(fields[0]) for kind, *fields in lines if kind == "version")
        assert registered == sorted(set(registered))
        registry.create_run("after-the-crash")  # and it takes writes again
