"""A child process for the concurrency and crash tests. It prints one line per committed write.

    python _registry_worker.py concurrent TAG START_FILE NUM_STEPS NUM_VERSIONS
    python _registry_worker.py crash TAG

The database is the default one (KAON_HOME / KAON_DATABASE_URL from the environment).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from kaon.config import kaon_home
from kaon.registry import Registry


def model_file(tag: str, index: int) -> Path:
    path = kaon_home() / "sources" / f"{tag}-{index}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"weights of {tag} #{index}".encode() * 100)
    return path


def concurrent(tag: str, start_file: str, num_steps: int, num_versions: int) -> None:
    """Log 2 metrics per step and register versions of one shared name, all at once with a sibling."""
    registry = Registry()
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(start_file) and time.monotonic() < deadline:
        time.sleep(0.002)
    run = registry.create_run(f"worker-{tag}")
    every = max(num_steps // num_versions, 1)
    versions = []
    for step in range(num_steps):
        registry.log_metrics(run.id, {"loss": float(step), "accuracy": -float(step)}, step=step)
        if step % every == 0 and len(versions) < num_versions:
            record = registry.register_version(
                "shared", {"model.bin": model_file(tag, step)}, framework="torch", run_id=run.id
            )
            versions.append(record.version)
    registry.finish_run(run.id)
    print(json.dumps({"run_id": run.id, "versions": versions}), flush=True)


def crash(tag: str) -> None:
    """Write forever; the parent SIGKILLs this process. Each line is printed after its commit."""
    registry = Registry()
    print("ready", flush=True)
    for index in range(1_000_000):
        run = registry.create_run(f"crash-{tag}-{index}", params={"index": index})
        print(f"run {run.id}", flush=True)
        for step in range(3):
            registry.log_metrics(run.id, {"loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
            print(f"metric {run.id} {step}", flush=True)
        record = registry.register_version(
            "crashy", {"model.bin": model_file(tag, index)}, framework="torch", run_id=run.id
        )
        print(f"version {record.version} {record.files['model.bin']}", flush=True)
        registry.finish_run(run.id)
        print(f"finished {run.id}", flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "concurrent":
        concurrent(args[0], args[1], int(args[2]), int(args[3]))
    else:
        crash(args[0])
