"""Redaction of e-mails, phone numbers, Luhn-valid card numbers and marked fields; the rotated, capped log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaon.errors import ConfigError
from kaon.monitoring import Exchange, Redactor, RequestLog, luhn_valid


@pytest.mark.parametrize(("text", "expected"), [
    ("write to ada.lovelace+ml@example.co.uk today", "write to [EMAIL] today"),
    ("call +1 (415) 555-2671", "call [PHONE]"),
    ("call +44 20 7946 0958 or 555-123-4567", "call [PHONE] or [PHONE]"),
    ("phone +14155552671", "phone [PHONE]"),
    ("card 4111 1111 1111 1111 exp 12/29", "card [CARD] exp 12/29"),
    ("card 5500-0000-0000-0004", "card [CARD]"),
    ("order 4111 1111 1111 1112", "order 4111 1111 1111 1112"),  # fails Luhn: not a card
    ("pixels 0.25, 0.5, 0.75", "pixels 0.25, 0.5, 0.75"),
    ("at 2024-01-02 03:04:05, version 1.2.3, id 12345678", "at 2024-01-02 03:04:05, version 1.2.3, id 12345678"),
    ("Bearer kaon_0123456789ab_" + "x" * 43, "Bearer [REDACTED]"),
])
def test_strings_are_redacted(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112") and not luhn_valid("79927398710")


def test_marked_and_credential_fields_anywhere_in_the_json() -> None:
    redactor = Redactor(fields=["Name", "dob"])
    value = {"inputs": [[0.5, 1.0]], "name": "Ada", "meta": {"DOB": "1815-12-10", "password": "hunter2",
             "note": "ada@example.com", "card": 4111111111111111, "count": 1234567890123},
             "rows": [{"api_key": "k-123", "value": 3}]}
    assert redactor.redact(value) == {
        "inputs": [[0.5, 1.0]], "name": "[REDACTED]",
        "meta": {"DOB": "[REDACTED]", "password": "[REDACTED]", "note": "[EMAIL]", "card": "[CARD]",
                 "count": 1234567890123},
        "rows": [{"api_key": "[REDACTED]", "value": 3}],
    }


def test_huge_strings_lists_and_nesting_are_cut() -> None:
    redactor = Redactor(max_string_chars=100, max_list_items=3, max_depth=4)
    card_at_the_cut = "x" * 90 + " 4111 1111 1111 1111"
    assert redactor.redact(card_at_the_cut).startswith("x" * 90 + " [CARD]")
    assert redactor.redact("y" * 10_000_000).endswith("...[10000000 chars]")
    assert redactor.redact(list(range(10))) == [0, 1, 2, "...[7 more items]"]
    assert redactor.redact([[[[[[1]]]]]]) == [[[["[TOO DEEP]"]]]]


class WalkOnly(Redactor):
    """The item-by-item walk, without the one-pass check for tensors of numbers."""

    def _plain_numbers(self, value: list, depth: int) -> bool:
        return False


@pytest.mark.parametrize("value", [
    {"inputs": [[[0.0, 0.25], [1.0, 0.5]]]},  # a tensor: returned as it came
    {"inputs": [[1, 2], [3, 4]], "flags": [[True, False]]},
    [[0.5, 4111111111111111]],  # a card number as a JSON number inside a tensor
    [[0.5, -4111111111111111]],
    [[1.0, "+14155552671"]],  # a phone number as a string that numpy would read as a float
    [["4111111111111111"]],
    [[1.0, None]], [[1.0, [2.0]]], [[]], [[1.0] * 300],  # ragged, empty, too long to keep whole
    [[10**30]],
    [[[[[[1.0]]]]]],  # deeper than max_depth below
])
def test_tensors_skip_the_walk_and_redact_exactly_as_it_does(value: object) -> None:
    fast, walk = Redactor(max_depth=4), WalkOnly(max_depth=4)
    assert fast.redact(value) == walk.redact(value)


def test_a_tensor_body_is_returned_without_a_copy() -> None:
    tensor = [[[0.1] * 8] * 8]
    assert Redactor().redact({"inputs": tensor})["inputs"] is tensor
    assert Redactor().redact({"inputs": [[0.1, 4111111111111111]]})["inputs"] == [[0.1, "[CARD]"]]


def exchange(index: int, body: bytes = b'{"inputs": [[1, 2]], "email": "a@b.example"}') -> Exchange:
    return Exchange(request_id=f"r{index}", method="POST", path="/predict", status=200, latency_ms=1.5,
                    request_body=body, response_body=b'[{"label": 3}]',
                    request_headers={"authorization": "Bearer kaon_secret", "content-type": "application/json",
                                     "cookie": "session=1", "user-agent": "test"},
                    client="127.0.0.1", token_name="ci", time_s=1_700_000_000.25)


def test_records_are_redacted_json_lines_without_credentials(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "log.jsonl")
    log.write([exchange(1), exchange(2, b"not json"), exchange(3, b"\x89PNG...")])
    log.close()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["request"] == {"inputs": [[1, 2]], "email": "[EMAIL]"} and first["response"] == [{"label": 3}]
    assert first["headers"] == {"content-type": "application/json", "user-agent": "test"}
    assert first["token"] == "ci" and first["time"] == "2023-11-14T22:13:20.250Z"
    assert json.loads(lines[1])["request"]["json"] is False
    text = (tmp_path / "log.jsonl").read_text()
    assert "kaon_secret" not in text and "session=1" not in text and "a@b.example" not in text
    assert (tmp_path / "log.jsonl").stat().st_mode & 0o777 == 0o600  # request bodies: the owner's only


def test_the_log_rotates_and_never_exceeds_its_cap(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "log.jsonl", max_bytes=8192, num_backups=2)
    for batch in range(40):
        log.write([exchange(batch * 10 + i) for i in range(10)])
    log.close()
    files = log.files()
    assert [f.name for f in files] == ["log.jsonl", "log.jsonl.1", "log.jsonl.2"]
    assert not (tmp_path / "log.jsonl.3").exists()
    assert all(f.stat().st_size <= 8192 for f in files)
    ids = [json.loads(line)["request_id"] for f in reversed(files) for line in f.read_text().splitlines()]
    assert ids[-1] == "r399" and ids == sorted(ids, key=lambda r: int(r[1:]))  # oldest first, nothing reordered


def test_a_record_larger_than_the_cap_keeps_its_envelope(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "log.jsonl", max_bytes=4096, num_backups=1, max_body_bytes=1 << 20)
    big = json.dumps({"inputs": ["z" * 900] * 200}).encode()
    log.write([exchange(1, big)])
    log.close()
    record = json.loads((tmp_path / "log.jsonl").read_text())
    assert record["request"] == {"truncated": True} and record["status"] == 200


def test_an_unwritable_log_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="--request-log"):
        RequestLog(tmp_path / "file" / "log.jsonl")


def test_a_marked_field_echoed_in_an_error_envelope_is_masked_too():
    from kaon.monitoring import Redactor

    envelope = {"error": {"code": "invalid_input", "fields": [
        {"name": "meta.patient_id", "message": "Extra inputs are not permitted", "received": "'P-48213'"},
        {"name": "inputs", "message": "expected shape [8, 8]", "received": "'[1, 2]'"}]}}
    fields = Redactor(fields=["patient_id"]).redact(envelope)["error"]["fields"]
    assert "P-48213" not in str(fields) and fields[1]["received"] == "'[1, 2]'"


def test_dotted_fields_echoes_and_numeric_cards_do_not_reach_the_log(tmp_path: Path) -> None:
    """A new-user review found marked values in the log: `--redact-fields meta.name` matched nothing (the error
    envelope names fields that way), a marked value the endpoint echoed under another key was logged in the
    response, so was anything sent as text/plain, and a card number sent as 4111111111111111.0."""
    import dataclasses

    redactor = Redactor(fields=["meta.name", "patient_id"])
    body = {"meta": {"name": "NAME-SECRET-3", "ward": "B"}, "name": "kept", "patient_id": "PAT-SECRET-1",
            "rows": [{"meta": {"name": "NAME-SECRET-4"}}], "card": 4111111111111111.0, "weight": 71.5}
    masked: set[str] = set()
    assert redactor.redact(body, masked=masked) == {
        "meta": {"name": "[REDACTED]", "ward": "B"}, "name": "kept", "patient_id": "[REDACTED]",
        "rows": [{"meta": {"name": "[REDACTED]"}}], "card": "[CARD]", "weight": 71.5}
    echoed = {"echo_patient": "PAT-SECRET-1", "note": "seen NAME-SECRET-3 today", "ok": True}
    assert redactor.hide(echoed, masked) == {"echo_patient": "[REDACTED]", "note": "seen [REDACTED] today",
                                             "ok": True}
    envelope = {"name": "rows.0.meta.name", "message": "too long", "received": "'NAME-SECRET-4'"}
    assert redactor.redact(envelope)["received"] == "[REDACTED]"

    log = RequestLog(tmp_path / "log.jsonl", redactor=redactor)
    for content_type in ("application/json", "text/plain", "application/vnd.api+json"):
        log.write([dataclasses.replace(
            exchange(1, json.dumps(body).encode()), response_body=json.dumps(echoed).encode(),
            request_headers={"content-type": content_type})])
    log.close()
    text = (tmp_path / "log.jsonl").read_text()
    assert "SECRET" not in text and "4111111111111111" not in text, text
    assert text.count('"ward":"B"') == 3


WRITER = """
import sys, time
from kaon.monitoring import Exchange, RequestLog
log = RequestLog(sys.argv[1], max_bytes=4096, num_backups=1000)
for batch in range(100):
    log.write([Exchange(request_id=f"{sys.argv[2]}-{batch * 2 + i}", method="POST", path="/predict",
                        status=200, latency_ms=1.0, request_body=b'{"inputs": [[1, 2]]}',
                        response_body=b'[{"label": 3}]', request_headers={"content-type": "application/json"},
                        client="127.0.0.1", token_name=None, time_s=1.0) for i in range(2)])
log.close()
"""


def test_workers_share_one_log_without_overfilling_a_file_or_losing_a_record(tmp_path: Path) -> None:
    """`kaon serve --workers N` runs N processes appending to one log. Each rotated on its own count: after one
    rotated, the others went on writing into the renamed file (past its cap) and rotated again later."""
    import subprocess
    import sys

    path = tmp_path / "log.jsonl"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{n}"], stderr=subprocess.PIPE,
                                text=True) for n in range(4)]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read() if writer.stderr else ""
    files = sorted(f for f in tmp_path.glob("log.jsonl*") if not f.name.endswith(".lock"))
    ids = [json.loads(line)["request_id"] for f in files for line in f.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 4 * 100 * 2  # every record, once
    assert len(files) > 4 and max(f.stat().st_size for f in files) <= 3 * 4096, [f.stat().st_size for f in files]
