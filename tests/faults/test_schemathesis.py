"""Schemathesis against the server's own /openapi.json: bounded examples per operation, no 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance


@pytest.fixture(scope="session")
def api_schema(fault_server):
    return schemathesis.openapi.from_url(fault_server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_operation_answers_5xx_or_breaks_its_schema(case) -> None:
    response = case.call(timeout=30)
    case.validate_response(response, checks=(not_a_server_error, content_type_conformance,
                                              response_schema_conformance))
