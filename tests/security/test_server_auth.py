"""A real `kaon serve` with tokens: every route without a token, with a revoked one, with a wrong scope;
security headers, no CORS, rate limits with Retry-After, and no token ever written to a log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import kaon
from kaon.registry import Registry
from kaon.security import generate_token
from tests.security.conftest import DIGIT, kaon_cli
from tests.servers import Server

BODY = {"inputs": [DIGIT]}
PROBES = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready")]


def make(home: Path, name: str, scopes: tuple[str, ...], **options) -> str:
    new = generate_token()
    with Registry(f"sqlite:///{home / 'kaon.db'}") as registry:
        registry.tokens.create(name, token_id=new.token_id, secret_hash=new.secret_hash, scopes=scopes, **options)
    return new.token


@pytest.fixture(scope="module")
def served(model_file: Path, tmp_path_factory) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("auth-home")
    tokens = {
        "admin": make(home, "ops", ("admin",)),
        "predict": make(home, "ci", ("predict",)),
        "metrics": make(home, "prometheus", ("metrics",)),
        "limited": make(home, "slow", ("predict",), rate_per_s=1.0, burst=2),
        "revoked": make(home, "gone", ("admin",)),
    }
    with Registry(f"sqlite:///{home / 'kaon.db'}") as registry:
        registry.tokens.revoke("gone")
    log = home / "requests.jsonl"
    server = Server(["serve", str(model_file), "--name", "digits", "--log-level", "debug", "--request-log", str(log)],
                    env={"KAON_HOME": str(home)}).wait_ready()
    yield {"server": server, "tokens": tokens, "home": home, "log": log}
    server.stop()


def routes(client: httpx.Client) -> list[tuple[str, str]]:
    """Every route the server has: its OpenAPI paths, the V2 routes and the operational ones."""
    spec = client.get("/openapi.json", headers={"authorization": f"Bearer {served_tokens['admin']}"}).json()
    found = [(method.upper(), path) for path, item in spec["paths"].items() for method in item]
    found += [("GET", "/"), ("GET", "/metrics"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/v2"),
              ("GET", "/v2/models/digits"), ("GET", "/v2/models/digits/ready"), ("POST", "/v2/models/digits/infer"),
              ("GET", "/v2/models/digits/versions/1"), ("GET", "/nope"), ("POST", "/nope"), ("DELETE", "/predict")]
    return sorted(set(found) - set(PROBES))


served_tokens: dict[str, str] = {}


def test_every_route_but_the_probes_needs_a_token(served) -> None:
    served_tokens.update(served["tokens"])
    with httpx.Client(base_url=served["server"].url, timeout=10) as client:
        all_routes = routes(client)
        assert ("POST", "/predict") in all_routes
        for method, path in all_routes:
            for auth in (None, "Bearer", f"Bearer {served['tokens']['revoked']}", "Basic dXNlcjpwYXNz",
                         f"Bearer {served['tokens']['admin']}x"):
                headers = {"authorization": auth} if auth else {}
                answer = client.request(method, path, json=BODY, headers=headers)
                assert answer.status_code == 401, (method, path, auth, answer.status_code, answer.text[:200])
                assert answer.headers["www-authenticate"].startswith("Bearer")
                error = answer.json()["error"]  # the V2 routes answer {"error": "..."}, as their protocol says
                message = error if path.startswith("/v2") else error["message"]
                assert message.startswith(("POST", "GET", "DELETE", "the API"))
        for method, path in PROBES:
            assert client.request(method, path).status_code == 200


def test_scopes_decide_what_a_token_may_call(served) -> None:
    tokens = served["tokens"]
    with httpx.Client(base_url=served["server"].url, timeout=10) as client:
        def status(method: str, path: str, who: str) -> int:
            headers = {"authorization": f"Bearer {tokens[who]}"}
            return client.request(method, path, json=BODY, headers=headers).status_code

        assert status("POST", "/predict", "predict") == 200
        assert status("GET", "/metrics", "predict") == 403
        assert status("GET", "/metrics", "metrics") == 200
        assert status("POST", "/predict", "metrics") == 403
        assert status("GET", "/openapi.json", "metrics") == 200  # any valid token reads the schema
        for who in ("admin",):
            assert status("POST", "/predict", who) == 200
            assert status("GET", "/metrics", who) == 200
            assert status("GET", "/v2/models/digits", who) == 200
        forbidden = client.post("/explain", json=BODY, headers={"authorization": f"Bearer {tokens['predict']}"})
        if forbidden.status_code != 404:  # the explain route exists once kaon.explanation serves it
            assert forbidden.status_code == 403
            assert "'explain' scope" in forbidden.json()["error"]["message"]
        infer = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
        predict = {"authorization": f"Bearer {tokens['predict']}"}
        answer = client.post("/v2/models/digits/infer", json=infer, headers=predict)
        assert answer.status_code == 200, answer.text


def test_rate_limited_token_gets_429_with_retry_after(served) -> None:
    headers = {"authorization": f"Bearer {served['tokens']['limited']}"}
    with httpx.Client(base_url=served["server"].url, timeout=10) as client:
        codes = [client.post("/predict", json=BODY, headers=headers) for _ in range(6)]
    assert [c.status_code for c in codes[:2]] == [200, 200]
    refused = [c for c in codes if c.status_code == 429]
    assert len(refused) >= 3
    assert int(refused[0].headers["retry-after"]) >= 1
    assert "rate limit of 1 requests/s" in refused[0].json()["error"]["message"]


def test_security_headers_on_every_answer_and_no_cors(served) -> None:
    admin = {"authorization": f"Bearer {served['tokens']['admin']}", "origin": "https://evil.example"}
    with httpx.Client(base_url=served["server"].url, timeout=10) as client:
        answers = [client.get("/healthz", headers=admin), client.post("/predict", json=BODY, headers=admin),
                   client.post("/predict", json={"x": 1}, headers=admin), client.get("/nope", headers=admin),
                   client.post("/predict", json=BODY), client.options("/predict", headers=admin)]
    assert [a.status_code for a in answers][:5] == [200, 200, 422, 404, 401]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert "access-control-allow-origin" not in answer.headers
        assert "strict-transport-security" not in answer.headers  # plain HTTP
        assert "server" not in answer.headers


def test_a_revoked_token_is_refused_within_seconds_over_the_cli(served) -> None:
    home = served["home"]
    created = kaon_cli(["token", "create", "--name", "temp", "--scopes", "predict"], home)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("kaon_") and token not in created.stderr
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=served["server"].url, timeout=10) as client:
        deadline = time.monotonic() + 15
        while client.post("/predict", json=BODY, headers=headers).status_code != 200:  # new tokens: within the TTL
            assert time.monotonic() < deadline, "a new token was not accepted within 15 s"
            time.sleep(0.2)
        assert kaon_cli(["token", "revoke", "temp"], home).returncode == 0
        revoked_at = time.monotonic()
        while client.post("/predict", json=BODY, headers=headers).status_code == 200:
            assert time.monotonic() - revoked_at < 8, "a revoked token still worked after 8 s"
            time.sleep(0.2)
        answer = client.post("/predict", json=BODY, headers=headers)
    assert answer.status_code == 401
    assert time.monotonic() - revoked_at < 8


def test_no_token_reaches_any_log(served) -> None:
    with httpx.Client(base_url=served["server"].url, timeout=10) as client:
        headers = {"authorization": f"Bearer {served['tokens']['predict']}"}
        assert client.post("/predict", json={**BODY, "api_key": served["tokens"]["admin"],
                                             "email": "ada@example.com"}, headers=headers).status_code == 422
        assert client.post("/predict", json=BODY, headers=headers).status_code == 200
    deadline = time.monotonic() + 15  # the observer thread writes the log; give a loaded machine time
    while time.monotonic() < deadline and len(_lines(served["log"])) < 2:
        time.sleep(0.1)
    records = _lines(served["log"])
    assert records, "the request log is empty"
    served["server"].stop()  # its output (debug level) is complete once it has exited
    output = served["server"].output()
    texts = {"request log": served["log"].read_text(), "server output": output}
    for where, text in texts.items():
        for token in served["tokens"].values():
            secret = token.split("_", 2)[2]
            assert secret not in text, f"a token's secret is in the {where}"
        assert "Bearer kaon_" not in text and '"authorization"' not in text.lower()
    assert "ada@example.com" not in texts["request log"] and "[EMAIL]" in texts["request log"]
    assert '"token":"ci"' in texts["request log"]  # who sent it, by name


def _lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_revoking_the_last_token_does_not_open_the_server(model_file: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Revoking a leaked token (the only one) made a server started without --require-auth answer everyone
    within seconds: the token table was empty, so auth was off. Once on, it stays on."""
    home = tmp_path / "home"
    home.mkdir()
    token = make(home, "only", ("predict",))
    server = Server(["serve", str(model_file), "--name", "digits"], env={"KAON_HOME": str(home)}).wait_ready()
    try:
        monkeypatch.setenv("KAON_TOKEN", token)  # what the banner says to export: kaon.Client reads it
        with kaon.Client(server.url) as sdk:
            assert 0 <= sdk.predict(BODY["inputs"])[0]["label"] < 10
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/predict", json=BODY).status_code == 401
            revoked = kaon_cli(["token", "revoke", token], home)  # the pasted token itself: revoked by its id
            assert revoked.returncode == 0, revoked.stderr
            assert token not in revoked.stdout + revoked.stderr
            assert "servers keep refusing requests without one" in " ".join(revoked.stderr.split())
            headers = {"authorization": f"Bearer {token}"}
            deadline = time.monotonic() + 8
            while client.post("/predict", json=BODY, headers=headers).status_code == 200:
                assert time.monotonic() < deadline, "the revoked token still worked after 8 s"
                time.sleep(0.2)
            time.sleep(1.5)  # past another refresh of the (now empty) token table
            assert client.post("/predict", json=BODY).status_code == 401
            assert client.get("/metrics").status_code == 401
        missing = kaon_cli(["token", "revoke", token], home)
        assert missing.returncode != 0 and token not in missing.stdout + missing.stderr
        # nor one started later (a restarted worker, a new replica): a token was created, so auth is on
        later = Server(["serve", str(model_file), "--name", "digits"], env={"KAON_HOME": str(home)}).wait_ready()
        try:
            assert httpx.post(later.url + "/predict", json=BODY, timeout=10).status_code == 401
        finally:
            later.stop()
    finally:
        server.stop()
    assert "no active API tokens remain" in server.output()
