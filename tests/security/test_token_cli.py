"""`kaon token create|list|revoke|audit` over the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from kaon.registry import Registry
from kaon.security import verify_secret
from tests.security.conftest import kaon_cli


def test_create_prints_the_token_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    created = kaon_cli(["token", "create", "--name", "ci", "--scopes", "predict,explain", "--rate", "50/s",
                        "--expires", "30d"], tmp_path)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert created.stdout.count("kaon_") == 1 and token.startswith("kaon_")
    assert "created token 'ci'" in created.stderr and "rate 50/s" in created.stderr
    assert "shown only now" in created.stderr
    listed = kaon_cli(["token", "list", "--json"], tmp_path)
    (entry,) = json.loads(listed.stdout)
    assert entry["name"] == "ci" and entry["scopes"] == ["explain", "predict"] and entry["rate_per_s"] == 50.0
    assert entry["status"] == "active" and entry["expires_at"] is not None
    assert token not in listed.stdout and token.split("_", 2)[2] not in listed.stdout
    with Registry(f"sqlite:///{tmp_path / 'kaon.db'}") as registry:
        (record,) = registry.tokens.active()
    assert verify_secret(token, record.secret_hash)

    revoked = kaon_cli(["token", "revoke", "ci"], tmp_path)
    assert revoked.returncode == 0 and "revoked token 'ci'" in revoked.stdout
    assert json.loads(kaon_cli(["token", "list", "--json"], tmp_path).stdout) == []
    audit = kaon_cli(["token", "audit"], tmp_path)
    assert "token.revoked" in audit.stdout and "token.created" in audit.stdout


def test_mistakes_are_one_red_line_and_exit_1(tmp_path: Path) -> None:
    for args, message in ((["token", "create", "--name", "x", "--scopes", "write"], "unknown: write"),
                          (["token", "create", "--name", "x", "--rate", "fast"], "e.g. 50/s"),
                          (["token", "create", "--name", "x", "--expires", "soon"], "e.g. 30d"),
                          (["token", "revoke", "nobody"], "no token named")):
        done = kaon_cli(args, tmp_path)
        assert done.returncode == 1, args
        assert message in done.stderr and "Traceback" not in done.stderr
        assert done.stdout == ""
