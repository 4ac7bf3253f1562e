"""`kaon.testing.check_service` reports every contract problem of a class in one error, not one per run."""

from __future__ import annotations

import numpy as np
import pytest

import kaon
from kaon.testing import ServiceContractError, check_service


class ThreeProblems(kaon.Service):
    @kaon.endpoint
    def embed(self, text: str) -> np.ndarray:  # no JSON schema
        return np.zeros(3)

    @kaon.endpoint(max_batch_size=16)
    def score(self, xs: list[float]) -> float:  # batched, but not list -> list
        return sum(xs)

    @kaon.endpoint
    def echo(self, value) -> dict[str, float]:  # an untyped parameter
        return {"value": value}

    @kaon.endpoint
    def fine(self, values: list[float]) -> list[float]:
        return values


def test_three_problems_are_reported_in_one_error():
    with pytest.raises(ServiceContractError) as info:
        check_service(ThreeProblems)
    message = info.value.message
    assert message.startswith("ThreeProblems does not follow the Service contract:\n- ")
    problems = message.split("\n- ")[1:]
    assert len(problems) == 3, message
    assert any("ThreeProblems.embed: the return type ndarray has no JSON schema" in p for p in problems)
    assert any("ThreeProblems.score: max_batch_size=16 needs a batchable signature" in p
               and "Received: (xs: list[float]) -> float." in p for p in problems)
    assert any("ThreeProblems.echo: parameter 'value' has no type hint" in p for p in problems)


def test_the_init_and_each_endpoint_are_reported_with_the_first_problem_of_each():
    """Within one endpoint, the first problem is reported (kaon serve's own words); filling in hints to find more
    made up problems that the user's code does not have."""
    class Sloppy(kaon.Service):
        def __init__(self, path):
            self.path = path

        @kaon.endpoint
        def predict(self, a, b: int, c):
            return a

        @kaon.endpoint(max_batch_size=8)
        def batch(self, xs: list[int]) -> list[np.ndarray]:
            return xs

    with pytest.raises(ServiceContractError) as info:
        check_service(Sloppy)
    problems = info.value.message.split("\n- ")[1:]
    assert len(problems) == 3, info.value.message
    assert "no required arguments" in problems[0]
    assert "Sloppy.batch" in problems[1] and "list[numpy.ndarray] has no JSON schema" in problems[1]
    assert "Sloppy.predict" in problems[2] and "'a'" in problems[2] and "list[Any]" not in info.value.message


def test_a_good_class_still_returns_its_specs():
    class Good(kaon.Service):
        @kaon.endpoint(max_batch_size=4)
        def predict(self, xs: list[float]) -> list[float]:
            return xs

    assert [s.name for s in check_service(Good, examples={"predict": {"xs": [1.0]}})] == ["predict"]
