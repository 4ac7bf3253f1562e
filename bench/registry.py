"""Registry write and read speed: metric logging, version registration, lookups.

    python bench/registry.py                       # SQLite in a temporary KAON_HOME
    eval "$(.ci/postgres.sh)"; python bench/registry.py   # ... and PostgreSQL too

Logs `--points` metric points in steps of `--metrics-per-step` (one log_metrics call, one
transaction, per step), registers `--versions` versions of one name (a 4 KiB file each), then reads.
For scale, the same metric stream is also written with the plain sqlite3 module, one transaction per
step under the same durability settings (WAL, synchronous=FULL): the ratio is kaon's overhead.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"kaon_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bench_registry(
    url: str, home: Path, num_points: int, metrics_per_step: int, num_versions: int
) -> dict[str, float]:
    from kaon.registry import Registry

    results: dict[str, float] = {}
    num_steps = num_points // metrics_per_step
    keys = [f"metric_{i}" for i in range(metrics_per_step)]
    results["open (migrate a new database)"] = timed(lambda: Registry(url).close())
    registry = Registry(url)
    results["open (up to date)"] = timed(lambda: Registry(url).close())
    run = registry.create_run("bench", params={"num_points": num_points})

    def log_all() -> None:
        for step in range(num_steps):
            registry.log_metrics(run.id, {key: step * 0.001 + i for i, key in enumerate(keys)}, step=step)

    total = timed(log_all)
    results[f"log_metrics ({metrics_per_step} points, 1 transaction)"] = total / num_steps
    results["  per metric point"] = total / (num_steps * metrics_per_step)
    results[f"metric_history ({num_points} points)"] = timed(lambda: registry.metric_history(run.id))

    sources = home / "bench-sources"
    sources.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(num_versions):
        path = sources / f"model-{i}.bin"
        path.write_bytes(os.urandom(4096))
        files.append(path)
    total = timed(lambda: [registry.register_version("bench-model", {"model.bin": f}, framework="torch",
                                                     signature={"inputs": []}, metrics={"acc": 0.9})
                           for f in files])
    results["register_version (4 KiB file)"] = total / num_versions
    refs = [f"bench-model@{v}" for v in range(1, num_versions + 1)]
    results["get_version ('name@N')"] = timed(lambda: [registry.get_version(r) for r in refs]) / num_versions
    results["get_version ('name', latest)"] = timed(
        lambda: [registry.get_version("bench-model") for _ in refs]) / num_versions
    for label in ("materialize (first, copies)", "materialize (cached, re-hashes)"):
        results[label] = timed(lambda: [registry.materialize(r) for r in refs]) / num_versions
    results["list_versions (100 versions)"] = timed(lambda: registry.list_versions("bench-model"))
    registry.close()
    return results


def bench_raw_sqlite(path: Path, num_points: int, metrics_per_step: int) -> float:
    """Seconds per step for the same metric stream through plain sqlite3, same durability."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute(
        "CREATE TABLE m (id INTEGER PRIMARY KEY, run_id INT, key TEXT, step INT, value REAL, ts TEXT)"
    )
    connection.execute("CREATE INDEX ix ON m (run_id, key)")
    num_steps = num_points // metrics_per_step

    def log_all() -> None:
        for step in range(num_steps):
            now = "2024-01-01 00:00:00"
            rows = [(1, f"metric_{i}", step, step * 0.001 + i, now) for i in range(metrics_per_step)]
            connection.execute("BEGIN")
            connection.executemany("INSERT INTO m (run_id, key, step, value, ts) VALUES (?,?,?,?,?)", rows)
            connection.execute("COMMIT")

    total = timed(log_all)
    connection.close()
    return total / num_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--metrics-per-step", type=int, default=10)
    parser.add_argument("--versions", type=int, default=100)
    args = parser.parse_args()

    columns: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "sqlite-home"
        os.environ["KAON_HOME"] = str(home)
        columns["sqlite"] = bench_registry(f"sqlite:///{home / 'kaon.db'}", home, args.points,
                                           args.metrics_per_step, args.versions)
        raw = bench_raw_sqlite(Path(tmp) / "raw.db", args.points, args.metrics_per_step)
        server = os.environ.get("KAON_TEST_POSTGRES_URL")
        if server:
            home = Path(tmp) / "postgres-home"
            os.environ["KAON_HOME"] = str(home)
            with postgres_database(server) as url:
                columns["postgresql"] = bench_registry(url, home, args.points, args.metrics_per_step,
                                                       args.versions)

    names = list(columns)
    print(f"\nkaon registry: {args.points} metric points in steps of {args.metrics_per_step}, "
          f"{args.versions} versions  (time per operation)")
    print(f"{'operation':<46}" + "".join(f"{name:>14}" for name in names))
    for op in columns["sqlite"]:
        print(f"{op:<46}" + "".join(f"{_fmt(columns[name][op]):>14}" for name in names))
    step_op = f"log_metrics ({args.metrics_per_step} points, 1 transaction)"
    print(f"\nplain sqlite3, same stream and durability: {_fmt(raw)} per step; "
          f"kaon on SQLite takes {columns['sqlite'][step_op] / raw:.2f}x that")
    if "postgresql" not in columns:
        print("(PostgreSQL skipped: set KAON_TEST_POSTGRES_URL, e.g. eval \"$(.ci/postgres.sh)\")")


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


if __name__ == "__main__":
    main()
