"""SIGKILL in the middle of registry writes, 20 times: the database opens, every committed record is there,
no partial version is visible, and writing goes on."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from kaon.registry import Registry

WORKER = Path(__file__).with_name("_crash_worker.py")
ROUNDS = 20


def committed(path: Path) -> list[list[str]]:
    content = path.read_text()
    complete = content[: content.rfind("\n") + 1] if "\n" in content else ""
    return [line.split() for line in complete.splitlines() if line != "ready"]


def test_twenty_sigkills_mid_write_lose_nothing_committed(kaon_home: Path, tmp_path: Path) -> None:
    rng = random.Random(0)
    lines: list[list[str]] = []
    started = time.monotonic()
    for attempt in range(ROUNDS):
        out = tmp_path / f"worker-{attempt}.out"
        with open(out, "wb") as stdout:
            worker = subprocess.Popen([sys.executable, str(WORKER), f"k{attempt}"], stdout=stdout,
                                      env={**os.environ, "KAON_HOME": str(kaon_home)})
        try:
            deadline = time.monotonic() + 60
            while "ready" not in out.read_text():
                assert worker.poll() is None, f"worker {attempt} exited with {worker.returncode}"
                assert time.monotonic() < deadline
                time.sleep(0.005)
            time.sleep(rng.uniform(0.02, 0.3))  # somewhere in the middle of a write
            os.kill(worker.pid, signal.SIGKILL)
        finally:
            if worker.poll() is None:
                worker.kill()
            worker.wait(timeout=30)
        assert worker.returncode == -signal.SIGKILL
        lines += committed(out)
    elapsed_s = time.monotonic() - started

    url = f"sqlite:///{kaon_home / 'kaon.db'}"
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        assert connection.execute(text("PRAGMA foreign_key_check")).fetchall() == []
    engine.dispose()
    kinds = [kind for kind, *_ in lines]
    assert kinds.count("run") >= ROUNDS, "the workers wrote too little before the kills"
    assert kinds.count("version") >= 5 and kinds.count("token") >= 5, kinds.count("version")
    with Registry(url) as registry:
        tokens = {t.name: t for t in registry.tokens.list(include_revoked=True)}
        for kind, *fields in lines:
            if kind == "run":
                assert registry.get_run(int(fields[0])).name.startswith("crash-")
            elif kind == "metric":
                assert (int(fields[1]), 0.1) in registry.metric_history(int(fields[0]))["lr"]
            elif kind == "version":
                assert registry.get_version(f"crashy@{fields[0]}").files["model.bin"] == fields[1]
            elif kind == "token":
                assert fields[0] in tokens
            elif kind == "revoked":
                assert tokens[fields[0]].revoked_at is not None
            elif kind == "alias":
                assert int(fields[0]) <= registry.get_version("crashy@production").version
            elif kind == "finished":
                assert registry.get_run(int(fields[0])).status == "completed"
        # no partial version: every version that is visible has all its files, intact, and its event
        versions = registry.list_versions("crashy")
        registered = {e["subject"] for e in registry.events(limit=100_000) if e["kind"] == "version.registered"}
        for version in versions:
            assert set(version.files) == {"model.bin", "reference.npz"}
            for sha in version.files.values():
                registry.artifact_path(sha)  # raises IntegrityError on a torn file
            assert version.ref in registered
        numbers = [v.version for v in versions]
        assert numbers == sorted(set(numbers))
        assert registry.get_version("crashy").version == max(numbers)  # 'latest' moved with the last commit
        registry.create_run("after-the-crashes")  # and it takes writes again
    print(f"{ROUNDS} SIGKILLs in {elapsed_s:.1f} s; {len(lines)} committed writes checked")
