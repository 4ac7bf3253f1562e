from __future__ import annotations

import orjson
import pydantic
import pytest

from kaon.errors import InvalidInputError, NotFoundError, OverloadedError
from kaon.serving.http import error_response


def test_error_envelope_shape_is_pinned():
    response = error_response(InvalidInputError("bad", fields=[{"name": "x"}]), "rid-1")
    assert response.status == 422
    assert orjson.loads(response.body) == {
        "error": {"code": "invalid_input", "message": "bad", "fields": [{"name": "x"}], "request_id": "rid-1"}
    }


def test_v2_routes_answer_a_plain_error_string():
    response = error_response(NotFoundError("no model"), "rid", v2=True)
    assert response.status == 404 and orjson.loads(response.body) == {"error": "no model"}


def test_overload_sets_retry_after():
    response = error_response(OverloadedError("full", retry_after_s=2.4), "rid")
    assert response.status == 503 and (b"retry-after", b"2") in response.headers


def test_unexpected_exception_is_500_without_internals(caplog):
    response = error_response(RuntimeError("secret path /etc/passwd"), "rid-9")
    body = orjson.loads(response.body)
    assert response.status == 500
    assert "secret" not in response.body.decode() and "rid-9" in body["error"]["message"]
    assert any("rid-9" in r.getMessage() for r in caplog.records)


def test_pydantic_errors_become_422_with_fields():
    class Body(pydantic.BaseModel):
        x: int

    with pytest.raises(pydantic.ValidationError) as info:
        Body.model_validate({"x": "nope"})
    response = error_response(info.value, "rid")
    body = orjson.loads(response.body)["error"]
    assert response.status == 422 and body["fields"][0]["name"] == "x" and body["fields"][0]["received"] == "'nope'"
