"""`kaon models ...` and `kaon runs ...` as a user runs them: piped to a file, tables keep every value whole;
in a terminal, they still fit its width."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from kaon.registry import Registry

LONG_NAME = "customer-churn-gradient-boosted-classifier-trained-on-the-2024-q3-warehouse-export"
LONG_FILE = "model-exported-with-opset-17-and-dynamic-batch-axis-for-the-serving-cluster.onnx"
LONG_RUN = "fine-tune of the churn classifier on the third quarter export, learning rate sweep, trial 12"


@pytest.fixture
def long_values(kaon_home: Path, make_file) -> Registry:
    registry = Registry()
    run = registry.create_run(LONG_RUN, params={"lr": 0.01})
    registry.log_metrics(run.id, {"loss": 0.25}, step=0)
    registry.finish_run(run.id, summary={"accuracy": 0.91})
    registry.register_version(LONG_NAME, {LONG_FILE: make_file(b"weights")}, framework="onnx",
                              metrics={"accuracy": 0.91}, run_id=run.id)
    return registry


def _environment(kaon_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    return {**env, "KAON_HOME": str(kaon_home), "NO_COLOR": "1"}


def _kaon_to_file(args: list[str], kaon_home: Path, tmp_path: Path) -> str:
    """Run `kaon ARGS > file` with no terminal anywhere (stdin from /dev/null), and return the file's text."""
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        completed = subprocess.run([sys.executable, "-m", "kaon.cli", *args], stdout=stdout, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, env=_environment(kaon_home), timeout=60, text=True)
    assert completed.returncode == 0, completed.stderr
    return out.read_text()


@pytest.mark.parametrize(("args", "values"), [
    pytest.param(["models", "list"], [LONG_NAME], id="models-list"),
    pytest.param(["models", "show", LONG_NAME], [f"Model {LONG_NAME}@1", LONG_FILE, f"Versions of {LONG_NAME}"],
                 id="models-show"),
    pytest.param(["runs", "list"], [LONG_RUN], id="runs-list"),
    pytest.param(["runs", "show", "1"], [f"Run 1: {LONG_RUN}"], id="runs-show"),
])
def test_piped_tables_keep_long_values_whole(long_values: Registry, kaon_home: Path, tmp_path: Path,
                                             args: list[str], values: list[str]) -> None:
    text = _kaon_to_file(args, kaon_home, tmp_path)

    assert "…" not in text
    for value in values:
        assert value in text, text
    sha256 = long_values.get_version(LONG_NAME).files[LONG_FILE]
    if args[:2] == ["models", "show"]:
        assert sha256 in text


def test_piped_output_honours_an_explicit_columns(long_values: Registry, kaon_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        subprocess.run([sys.executable, "-m", "kaon.cli", "models", "list"], stdout=stdout, stdin=subprocess.DEVNULL,
                       env={**_environment(kaon_home), "COLUMNS": "60"}, timeout=60, check=True)
    lines = out.read_text().splitlines()
    assert lines and max(len(line) for line in lines) <= 60


def test_a_terminal_still_gets_tables_that_fit_its_width(long_values: Registry, kaon_home: Path) -> None:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 70, 0, 0))  # 40 rows, 70 columns
    try:
        process = subprocess.Popen([sys.executable, "-m", "kaon.cli", "models", "list"], stdin=follower,
                                   stdout=follower, stderr=follower, env=_environment(kaon_home), close_fds=True)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=60) == 0
    finally:
        os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode()).replace("\r", "")
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and max(len(line) for line in lines) <= 70, text
    assert "…" in text  # the name is longer than the terminal: cut to fit, as before


def test_a_piped_rule_stays_80_columns_while_tables_have_no_limit(kaon_home: Path, tmp_path: Path) -> None:
    """quickstart's heading rule filled the unlimited width of a piped console: 300 KB of '─' in a pipe."""
    script = ("from rich.rule import Rule\n"
              "from kaon.cli.app import fill_width, make_console\n"
              "console = make_console()\n"
              "console.print(Rule('kaon quickstart'), width=fill_width(console))\n")
    out = tmp_path / "rule.txt"
    with out.open("w") as stdout:
        subprocess.run([sys.executable, "-c", script], stdout=stdout, stdin=subprocess.DEVNULL,
                       env=_environment(kaon_home), timeout=60, check=True)
    assert [len(line) for line in out.read_text(encoding="utf-8").splitlines()] == [80]
