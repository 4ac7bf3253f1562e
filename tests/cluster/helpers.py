"""Shared by the cluster tests: async tests without a plugin, and the `kaon` CLI as a subprocess."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine
from typing import Any

# `kaon` with the cluster and build commands registered (the installed entry point does this once wired).
KAON = [sys.executable, "-c", "import sys, kaon.cli.cluster_cmd, kaon.cli.build_cmd; from kaon.cli.app import main; "
        "sys.argv[0] = 'kaon'; main()"]


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test function in a fresh event loop (fixtures still injected by name)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 60))

    return wrapper


def kaon(*args: str, timeout_s: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `kaon ARGS` with this test's KAON_HOME; fail with its output when it fails and `check`."""
    result = subprocess.run([*KAON, *args], capture_output=True, text=True, timeout=timeout_s,
                            env={**os.environ, "COLUMNS": "200"})
    if check and result.returncode != 0:
        raise AssertionError(f"kaon {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def run_ray_scenario(script: str, *args: str, timeout_s: float) -> dict[str, Any]:
    """Run tests/cluster/`script` in its own network and PID namespaces (only `lo`: Ray keeps 127.0.0.1, and
    every Ray process ends with it) and return the JSON of its `RESULT ` line. Needs root and `unshare`."""
    import json
    import shutil
    from pathlib import Path

    import pytest

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("KAON_TEST_RAY=1 needs root and unshare (util-linux) for Ray's own namespaces")
    scenario = Path(__file__).with_name(script)
    done = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", sys.executable, str(scenario),
                           *args], capture_output=True, text=True, timeout=timeout_s)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert done.returncode == 0 and line, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(line[len("RESULT "):])
    return result
