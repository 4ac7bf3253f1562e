"""`kaon serve TARGET`: a model file, a registry reference or path/to/service.py:ClassName."""

from __future__ import annotations

import typer

from kaon.cli.app import app, handles_errors
from kaon.config import ServeConfig


@app.command()
@handles_errors
def serve(
    target: str = typer.Argument(..., help="model.onnx | model.pt2 | model.keras | name@alias | service.py:Class"),
    name: str = typer.Option(None, help="Model name on the V2 routes (default: the file stem)."),
    host: str = typer.Option(None, help="Address to bind. \\[default: 127.0.0.1]"),
    port: int = typer.Option(None, help="Port to bind. \\[default: 8000]"),
    max_batch_size: int = typer.Option(None, help="Largest batch per forward pass. \\[default: 64]"),
    max_wait_ms: float = typer.Option(None, help="Longest a request waits for a batch to fill. \\[default: 2]"),
    timeout_s: float = typer.Option(None, help="Per-request limit; over it: 504. \\[default: 30]"),
    read_timeout_s: float = typer.Option(None, help="Longest a request, headers and body, may take to arrive from "
                                                    "its first byte; over it: 408 and the connection closes. "
                                                    "\\[default: 60]"),
    max_queue: int = typer.Option(None, help="Queued inputs per endpoint; over it: 503. \\[default: 1024]"),
    max_body_bytes: int = typer.Option(None, help="Largest request body; over it: 413. \\[default: 16 MiB]"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow pickle-based model files."),
    require_auth: bool = typer.Option(False, "--require-auth",
                                      help="Require a token even when none exists yet (see kaon token create)."),
    max_tensor_elements: int = typer.Option(None, help="Most numbers in one request's tensors; over it: 413. "
                                                       "\\[default: 50,000,000]"),
    log_level: str = typer.Option(None, help="debug | info | warning | error. \\[default: warning]"),
    tls_cert: str = typer.Option(None, help="PEM certificate: serve HTTPS (with --tls-key)."),
    tls_key: str = typer.Option(None, help="PEM private key for --tls-cert."),
    request_log: str = typer.Option(None, help="Write sampled, redacted request records (JSON lines) here."),
    request_log_max_per_s: int = typer.Option(None, help="Most requests logged per second. \\[default: 100]"),
    request_log_sample: float = typer.Option(None, help="Share of requests logged, 0 to 1. \\[default: 1]"),
    request_log_max_bytes: int = typer.Option(None, help="Rotate the request log at this size. \\[default: 64 MiB]"),
    redact_fields: str = typer.Option(None, help="Comma-separated JSON fields masked in the request log, by "
                                                 "name (patient_id) or path (meta.name), and wherever a response "
                                                 "echoes their values (e-mails, phone and card numbers always "
                                                 "are)."),
    monitor: bool = typer.Option(None, "--monitor/--no-monitor",
                                 help="Drift and outlier detection against the version's reference. \\[default: on]"),
    monitor_max_per_s: int = typer.Option(
        None, help="Most requests fed to drift detection per second. \\[default: 100]"),
    drift_window: int = typer.Option(None, help="Inputs per drift test window. \\[default: 200]"),
    drift_reference: str = typer.Option(None, help="A reference.npz (kaon.monitoring.fit_reference) to use instead "
                                                   "of the one registered with the model version."),
    alert_webhook: str = typer.Option(None, help="POST drift alerts (JSON) to this http(s) URL too."),
    device: str = typer.Option(None, help="Where a model file runs: auto | cpu | cuda | cuda:N. On a GPU, JPEG "
                                          "bodies are decoded there in batches. \\[default: auto]"),
    precision: str = typer.Option(None, help="fp32 | bf16 | fp16 for a .pt2 model (bf16/fp16 on a GPU). "
                                             "\\[default: fp32]"),
    top_k: int = typer.Option(None, help="A classifier answers with its k best labels and their probabilities "
                                         "instead of every class's score. \\[default: 0, all]"),
    workers: int = typer.Option(None, help="Server processes on this port, each with its own model copy: one "
                                           "process uses about one core. \\[default: 1]"),
    public_url: str = typer.Option(None, help="The URL clients reach this server at, when a proxy stands in front "
                                              "of it: the banner's URLs and examples use it."),
) -> None:
    """Serve a model or a Service over HTTP (JSON, images and the Open Inference Protocol V2)."""
    from kaon.serving.server import leave_stuck_calls
    from kaon.serving.targets import serve_target

    config = ServeConfig.from_env(
        name=name, host=host, port=port, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
        timeout_s=timeout_s, read_timeout_s=read_timeout_s, max_queue=max_queue, max_body_bytes=max_body_bytes,
        trust_pickle=trust_pickle or None, log_level=log_level, require_auth=require_auth or None,
        tls_cert=tls_cert, tls_key=tls_key, max_tensor_elements=max_tensor_elements, request_log=request_log,
        request_log_max_per_s=request_log_max_per_s,
        monitor_max_per_s=monitor_max_per_s, drift_window=drift_window, request_log_sample=request_log_sample,
        request_log_max_bytes=request_log_max_bytes, redact_fields=redact_fields, monitor=monitor,
        drift_reference=drift_reference, alert_webhook=alert_webhook, device=device, precision=precision,
        top_k=top_k, workers=workers, public_url=public_url,
    )
    serve_target(target, config, name=name, trust_pickle=trust_pickle)
    leave_stuck_calls()
