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
