"""TLS for `kaon serve --tls-cert --tls-key`: the files are checked before the server starts."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from kaon.errors import ConfigError


def check_tls_files(cert: str | Path | None, key: str | Path | None) -> dict[str, Any]:
    """uvicorn's TLS options for `cert` and `key` (PEM), or {} when neither is given.

    Raises ConfigError when only one is given, a file is missing, or the pair does not load.
    """
    if not cert and not key:
        return {}
    if not cert or not key:
        raise ConfigError(
            "TLS needs both --tls-cert and --tls-key (PEM files). "
            f"Received: tls_cert={str(cert) if cert else None!r}, tls_key={str(key) if key else None!r}."
        )
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise ConfigError(f"{flag} must name a readable PEM file. Received: {str(path)!r} (not found).")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"the TLS certificate and key do not load as a pair: {exc}. Received: --tls-cert {str(cert)!r} "
            f"--tls-key {str(key)!r}. Expected a PEM certificate and its unencrypted PEM private key."
        ) from exc
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
