"""`kaon.serve(target, **flags)`: the Python twin of `kaon serve TARGET --flags`."""

from __future__ import annotations

from typing import Any

from kaon.config import ServeConfig


def serve(target: Any, *, name: str | None = None, trust_pickle: bool = False, **flags: Any) -> None:
    """Serve a model file, registry reference, Model or Service class in the foreground.

    Flags are ServeConfig fields: host, port, max_batch_size, max_wait_ms, timeout_s, max_queue, ...
    """
    from kaon.serving import serve as run
    from kaon.serving.targets import resolve_target

    config = ServeConfig.from_env(name=name, trust_pickle=trust_pickle or None, **flags)
    if config.workers > 1:
        from kaon.serving.workers import serve_workers

        serve_workers(target, config)
        return
    run(resolve_target(target, name=name, trust_pickle=trust_pickle, device=config.device,
                       precision=config.precision, top_k=config.top_k), config)
