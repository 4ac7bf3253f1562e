from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kaon.registry.tokens import TokenRecord
from kaon.security import generate_token


def make_token(name: str, scopes: tuple[str, ...] = ("predict",), *, rate_per_s: float | None = None,
               burst: int | None = None, max_concurrent: int | None = None,
               expires_in_s: float | None = None) -> tuple[str, TokenRecord]:
    """A real token and the record the registry would hold for it."""
    new = generate_token()
    now = datetime.now(timezone.utc)
    record = TokenRecord(
        token_id=new.token_id, name=name, scopes=scopes, rate_per_s=rate_per_s, burst=burst,
        max_concurrent=max_concurrent, created_by="test", created_at=now,
        expires_at=now + timedelta(seconds=expires_in_s) if expires_in_s is not None else None, revoked_at=None,
        secret_hash=new.secret_hash,
    )
    return new.token, record


# ---- real servers ---------------------------------------------------------------------------------

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

DIGIT = np.zeros((1, 8, 8), dtype=np.float32).tolist()


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """A small digits classifier exported with torch.export (8x8 in, 10 probabilities out)."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                                 torch.nn.Linear(16, 10), torch.nn.Softmax(dim=1)).eval()
    path = tmp_path_factory.mktemp("security-model") / "digits.pt2"
    program = torch.export.export(module, (torch.rand(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    torch.export.save(program, str(path))
    return path


def kaon_cli(args: list[str], home: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "KAON_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "kaon.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout_s)
