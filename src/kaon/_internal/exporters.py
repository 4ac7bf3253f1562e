"""Quiet the model exporters (torch.export, torch.onnx, onnxruntime's tools) and say in one line why they failed."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def summarize(exc: BaseException) -> str:
    """The exporter's reason in one line, without colour codes, boilerplate or a stack trace; for torch.export,
    with the line of the user's code it stopped at."""
    text = ANSI.sub("", str(exc))
    where = ""
    if "The following call raised this error:" in text:  # torch.export: the user's line is what helps
        after = text.split("The following call raised this error:", 1)[1].strip().splitlines()
        where = f" (at {after[0].strip()})" if after else ""
        text = text.split("\n", 1)[0]
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1].split("(Refer to the full stack trace", 1)[0]
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip() != "⬆️"]
        text = " <- ".join(re.sub(r"^<class '[\w.]+\.(\w+)'>:", r"\1:", ln) for ln in lines)
    text = " ".join(text.split())
    text = text[:600] + ("..." if len(text) > 600 else "") if text else type(exc).__name__
    if not where and text.endswith(".") and not text.endswith("..."):
        text = text[:-1] or type(exc).__name__  # callers write their own full stop after the reason
    return text + where


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporters print progress, warn about optional packages and (torch.export, on failure) print the
    partial graph to stderr; a user needs none of that: the error they raise says what failed."""
    # "" is the root logger: onnxruntime's quantizer warns through it ("consider pre-processing").
    names = ["", "torch.onnx", "torch.export", "torch._export", "onnxscript", "onnxruntime",
             "torch.fx.experimental.symbolic_shapes", "torch._subclasses.fake_tensor"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        # torch's loggers print through handlers of their own (to the stderr of import time, which the redirect
        # below does not reach), and log a failing operator's traceback as an ERROR: the raised error says it
        lg.setLevel(logging.ERROR if not lg.name.startswith("torch") else logging.CRITICAL + 1)
    try:
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
              contextlib.redirect_stderr(io.StringIO())):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
