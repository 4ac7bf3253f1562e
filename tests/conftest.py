"""Every test gets its own KAON_HOME, so no test reads or writes the user's ~/.kaon."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def kaon_home(tmp_path, monkeypatch):
    home = tmp_path / "kaon_home"
    monkeypatch.setenv("KAON_HOME", str(home))
    monkeypatch.delenv("KAON_DATABASE_URL", raising=False)
    return home
