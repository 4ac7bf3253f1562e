"""`kaon.serve(target, **flags)`: the Python twin of `kaon serve TARGET --flags`."""

from __future__ import annotations

from typing import Any

from kaon.config import ServeConfig


def serve(target: Any, *, name: str | None = None, trust_pickle: bool = False, **flags: Any) -> None:
    """Serve a model file, registry reference, Model or Service class in the foreground.

    Flags are ServeConfig fields: host, port, max_batch_size, max_wait_ms, timeout_s, max_queue, ...
    """
    from kaon.serving.targets import serve_target

    config = ServeConfig.from_env(name=name, trust_pickle=trust_pickle or None, **flags)
    serve_target(target, config, name=name, trust_pickle=trust_pickle)
