"""AuthGuard and TensorLimitGuard on real Request objects, with an injected clock and a real token table."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import orjson
import pytest

from kaon.errors import ForbiddenError, PayloadTooLargeError, RateLimitedError, RegistryError, UnauthorizedError
from kaon.serving import guards as guards_module
from kaon.serving.guards import AuthGuard, TensorLimitGuard, build_guards, principal_of, release_request
from kaon.serving.http import Request, error_response
from tests.security.conftest import make_token


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def request(method: str, path: str, token: str | None = None, body: bytes = b"{}",
            content_type: str = "application/json", **headers: str) -> Request:
    all_headers = {"content-type": content_type, **headers}
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    return Request(method, path, all_headers, body, "req-1")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_without_tokens_everything_is_open_and_with_require_auth_nothing_but_probes() -> None:
    async def scenario() -> None:
        open_guard = AuthGuard(lambda: [])
        await open_guard(request("POST", "/predict"))
        closed = AuthGuard(lambda: [], require_auth=True)
        await closed(request("GET", "/healthz"))
        await closed(request("GET", "/v2/health/ready"))
        with pytest.raises(UnauthorizedError, match=r"needs an API token; none was sent.*kaon token create"):
            await closed(request("POST", "/predict"))
        with pytest.raises(UnauthorizedError, match=r"header of scheme 'Basic' was sent.*Bearer <token>"):
            await closed(request("POST", "/predict", authorization="Basic YWRhOmx1"))
        token = "kaon_0123456789ab_" + "s" * 43  # pasted without "Bearer ": said so, and never echoed
        with pytest.raises(UnauthorizedError, match=r"holds a kaon token without the 'Bearer '") as info:
            await closed(request("POST", "/predict", authorization=token))
        assert "kaon_0123" not in str(info.value)
        with pytest.raises(UnauthorizedError, match=r"is not 'Bearer <token>'") as info:
            await closed(request("POST", "/predict", authorization="hunter2"))  # a password is not a scheme
        assert "hunter2" not in str(info.value)

    run(scenario())


def test_a_verified_token_is_checked_without_awaiting_and_a_new_one_with() -> None:
    """The per-request path: once a token is verified (scrypt, in a thread), `check` decides at once."""
    token, record = make_token("ci", ("predict",), rate_per_s=1000.0)

    async def scenario() -> None:
        guard = AuthGuard(lambda: [record])
        await guard.start()
        first = request("POST", "/predict", token)
        pending = guard.check(first)
        assert pending is not None  # first sight of this token: verify it
        await pending
        assert principal_of(first).name == "ci"
        for _ in range(3):
            again = request("POST", "/predict", token)
            assert guard.check(again) is None
            assert principal_of(again).name == "ci"
            release_request(again)
        with pytest.raises(ForbiddenError):  # refusals come from check itself too
            guard.check(request("GET", "/metrics", token))
        assert guard.check(request("GET", "/healthz")) is None

    run(scenario())

def test_a_valid_token_passes_and_names_its_principal() -> None:
    token, record = make_token("ci", ("predict",))

    async def scenario() -> None:
        guard = AuthGuard(lambda: [record])
        req = request("POST", "/predict", token)
        await guard(req)
        assert principal_of(req).name == "ci"
        release_request(req)
        release_request(req)  # twice is harmless
        for bad in (None, "kaon_000000000000_" + "a" * 43, token[:-2] + "zz", "garbage"):
            with pytest.raises(UnauthorizedError):
                await guard(request("POST", "/predict", bad))
        await guard(request("GET", "/readyz"))  # probes need nothing

    run(scenario())


def test_scopes_403_and_admin_implies_all() -> None:
    predict_token, predict = make_token("p", ("predict",))
    admin_token, admin = make_token("a", ("admin",))

    async def scenario() -> None:
        guard = AuthGuard(lambda: [predict, admin])
        with pytest.raises(ForbiddenError, match=r"token 'p' has scopes predict; POST /explain needs the 'explain'"):
            await guard(request("POST", "/explain", predict_token))
        with pytest.raises(ForbiddenError, match="'metrics' scope"):
            await guard(request("GET", "/metrics", predict_token))
        await guard(request("GET", "/openapi.json", predict_token))  # any valid token reads the docs
        for method, path in (("POST", "/explain"), ("GET", "/metrics"), ("POST", "/admin/x"), ("POST", "/predict")):
            req = request(method, path, admin_token)
            await guard(req)
            release_request(req)

    run(scenario())


def test_rate_limit_429_with_retry_after_and_refill_on_the_injected_clock() -> None:
    token, record = make_token("ci", ("predict",), rate_per_s=2.0, burst=2)
    clock = Clock()

    async def scenario() -> None:
        guard = AuthGuard(lambda: [record], clock=clock)
        for _ in range(2):
            req = request("POST", "/predict", token)
            await guard(req)
            release_request(req)
        clock.now_s += 0.499  # 1 ms left to wait: the header says 1 s, and so must the message (it said 0.00 s)
        with pytest.raises(RateLimitedError, match=r"over its rate limit of 2 requests/s") as info:
            await guard(request("POST", "/predict", token))
        assert info.value.retry_after_s == 1.0
        assert (b"retry-after", b"1") in error_response(info.value, "req-1").headers
        assert "Retry after 1 s." in info.value.message and "0.00" not in info.value.message
        clock.now_s += 0.001  # one request's worth refilled
        req = request("POST", "/predict", token)
        await guard(req)
        release_request(req)
        slow_token, slow = make_token("slow", ("predict",), rate_per_s=0.25, burst=1)
        guard = AuthGuard(lambda: [slow], clock=clock)
        req = request("POST", "/predict", slow_token)
        await guard(req)
        release_request(req)
        clock.now_s += 0.5  # 3.5 s to wait: rounded up, in the message and the header alike
        with pytest.raises(RateLimitedError) as info:
            await guard(request("POST", "/predict", slow_token))
        assert (b"retry-after", b"4") in error_response(info.value, "req-1").headers
        assert "Retry after 4 s." in info.value.message

    run(scenario())


def test_concurrent_requests_per_token_are_bounded_and_released() -> None:
    token, record = make_token("ci", ("predict",), max_concurrent=2)
    other_token, other = make_token("other", ("predict",))

    async def scenario() -> None:
        guard = AuthGuard(lambda: [record, other])
        held = [request("POST", "/predict", token) for _ in range(2)]
        for req in held:
            await guard(req)
        with pytest.raises(RateLimitedError, match=r"already has 2 requests in flight"):
            await guard(request("POST", "/predict", token))
        await guard(request("POST", "/predict", other_token))  # another token is not affected
        release_request(held[0])
        await guard(request("POST", "/predict", token))

    run(scenario())


def test_a_revoked_token_is_refused_once_the_table_is_reread() -> None:
    token, record = make_token("ci", ("predict",))
    _, keeper = make_token("keeper", ("predict",))
    live = [record, keeper]

    async def scenario() -> None:
        guard = AuthGuard(lambda: list(live), cache_ttl_s=0.05)
        req = request("POST", "/predict", token)
        await guard(req)
        release_request(req)
        live.remove(record)
        await asyncio.sleep(0.2)  # a few refresh periods
        with pytest.raises(UnauthorizedError, match="revoked or has expired"):
            await guard(request("POST", "/predict", token))

    run(scenario())


def test_an_expired_token_is_refused_between_refreshes() -> None:
    token, record = make_token("ci", ("predict",), expires_in_s=60.0)
    wall = Clock()
    wall.now_s = record.created_at.timestamp()

    async def scenario() -> None:
        guard = AuthGuard(lambda: [record], cache_ttl_s=600, wall_clock=wall)
        req = request("POST", "/predict", token)
        await guard(req)
        release_request(req)
        wall.now_s += 61
        with pytest.raises(UnauthorizedError, match="expired"):
            await guard(request("POST", "/predict", token))

    run(scenario())


def test_scrypt_runs_once_per_token_and_never_for_unknown_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    token, record = make_token("ci", ("predict",))
    calls: list[str] = []
    real = guards_module.verify_secret

    def counting(presented: str, stored: str) -> bool:
        calls.append(presented)
        return real(presented, stored)

    monkeypatch.setattr(guards_module, "verify_secret", counting)

    async def scenario() -> None:
        guard = AuthGuard(lambda: [record])
        reqs = [request("POST", "/predict", token) for _ in range(20)]
        await asyncio.gather(*(guard(r) for r in reqs))  # concurrent first requests share one verification
        for r in reqs:
            release_request(r)
        assert len(calls) == 1
        for _ in range(5):
            with pytest.raises(UnauthorizedError):
                await guard(request("POST", "/predict", "kaon_ffffffffffff_" + "b" * 43))  # unknown id
        assert len(calls) == 1
        wrong = token[:-3] + ("xyz" if not token.endswith("xyz") else "abc")  # right id, wrong secret
        for _ in range(3):
            with pytest.raises(UnauthorizedError):
                await guard(request("POST", "/predict", wrong))
        assert len(calls) == 2  # a rejected token is remembered too

    run(scenario())


def test_a_flood_of_wrong_secrets_cannot_burn_cpu_on_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    token, record = make_token("ci", ("predict",))
    calls: list[str] = []
    monkeypatch.setattr(guards_module, "verify_secret", lambda p, s: calls.append(p) or False)

    async def scenario() -> None:
        guard = AuthGuard(lambda: [record], clock=Clock())
        prefix = "_".join(token.split("_", 2)[:2]) + "_"
        for i in range(50):
            with pytest.raises(UnauthorizedError):
                await guard(request("POST", "/predict", prefix + f"{i:043d}"))
        assert len(calls) <= 11  # the failure budget (10/s, the clock does not move), not 50

    run(scenario())


def test_an_unreadable_registry_fails_closed() -> None:
    def broken() -> list[Any]:
        raise OSError("disk on fire")

    async def scenario() -> None:
        guard = AuthGuard(broken)
        with pytest.raises(RegistryError, match="cannot read its API tokens"):
            await guard(request("POST", "/predict"))
        await guard(request("GET", "/healthz"))

    run(scenario())


def test_build_guards_reads_the_config_and_the_real_registry(kaon_home) -> None:
    from kaon.config import ServeConfig

    guards = build_guards(ServeConfig())
    assert isinstance(guards[0], AuthGuard) and isinstance(guards[1], TensorLimitGuard)
    run(guards[0](request("POST", "/predict")))  # an empty registry: open


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def test_tensor_limit_counts_json_numbers_image_pixels_and_v2_shapes() -> None:
    guard = TensorLimitGuard(max_elements=10_000)

    async def scenario() -> None:
        await guard(request("POST", "/predict", body=orjson.dumps({"inputs": [[0.5] * 5_000]})))
        with pytest.raises(PayloadTooLargeError, match=r"about 20,000 numbers; the limit is 10,000"):
            await guard(request("POST", "/predict", body=orjson.dumps({"inputs": [[1] * 20_000]})))
        await guard(request("POST", "/predict", body=_png(64, 64), content_type="image/png"))
        bomb = _png(3000, 3000)  # 9 M pixels in a few kB
        with pytest.raises(PayloadTooLargeError):
            await guard(request("POST", "/predict", body=bomb, content_type="image/png"))
        header = orjson.dumps({"inputs": [{"name": "x", "shape": [100, 1000], "datatype": "UINT8",
                                           "parameters": {"binary_data_size": 100_000}}]})
        with pytest.raises(PayloadTooLargeError):
            await guard(request("POST", "/v2/models/m/infer", body=header + bytes(100_000), content_type="",
                                **{"inference-header-content-length": str(len(header))}))
        # base64 images inside JSON have no commas: the endpoint's decoder bounds them (its image size)
        await guard(request("POST", "/predict", body=orjson.dumps({"inputs": [base64.b64encode(bomb).decode()]})))

    run(scenario())


def _png_header(width: int, height: int, color_type: int = 0, bit_depth: int = 8) -> bytes:
    """A PNG's signature and IHDR (what the guard reads) with a token IDAT: a gigapixel image in 60 bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height, color_type, count", [
    (30000, 30000, 0, "900,000,000"),  # over PIL's hard limit (2 x 89 M pixels): once counted as 2**62
    (30000, 30000, 2, "2,700,000,000"),
    (10000, 10000, 0, "100,000,000"),  # between PIL's warning and its hard limit
    (3000, 3000, 6, "36,000,000"),
])
def test_tensor_limit_counts_a_huge_image_exactly_and_without_pils_warning(width, height, color_type,
                                                                           count) -> None:
    import warnings

    from PIL import Image

    guard = TensorLimitGuard(max_elements=10_000)
    body = _png_header(width, height, color_type)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # a warning would fail the guard's check
        with pytest.raises(PayloadTooLargeError, match=rf"holds about {count} numbers; the limit is 10,000"):
            guard.check(request("POST", "/predict", body=body, content_type="image/png"))
    # PIL's own protection is untouched for everyone else
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(io.BytesIO(_png_header(10000, 10000))).close()
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(_png_header(30000, 30000)))
